"""The body of a serverless submit (`build_body`, checked before anything is sent) and the whole
workflow a submit of overrides runs (`applied`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import Secret
from ..errors import ValidationError
from ..workflow import Workflow, check_api_format, normalize_overrides


def build_body(
    overrides: Mapping[Any, Any] | None = None,
    *,
    workflow: Workflow | Mapping[str, Any] | None = None,
    inputs: Mapping[str, Any] | None = None,
    extra_data: Mapping[str, Any] | None = None,
    comfy_api_key: str | Secret | None = None,
) -> dict[str, Any]:
    """The submit body, checked before anything is sent (see api/serverless.md)."""
    if inputs is not None:
        if overrides is not None or workflow is not None:
            raise ValidationError(
                "LoRA inputs are the whole body: pass inputs=... alone, without overrides or "
                "a workflow."
            )
        if not isinstance(inputs, Mapping):
            raise ValidationError("inputs must be an object of the deployment's input fields.")
        return dict(inputs)
    body: dict[str, Any] = {}
    if workflow is not None:
        if overrides:
            raise ValidationError(
                "Send either overrides or a whole workflow, not both (the API ignores overrides "
                "with workflow_api_json): apply them with Workflow(...).override(...) first."
            )
        data = workflow.to_api() if isinstance(workflow, Workflow) else workflow
        body["workflow_api_json"] = check_api_format(data, "workflow_api_json")
    else:
        body["overrides"] = normalize_overrides(overrides or {})
    extra = dict(extra_data or {})
    if comfy_api_key is not None:
        key = comfy_api_key.get() if isinstance(comfy_api_key, Secret) else comfy_api_key
        extra["api_key_comfy_org"] = key
    if extra:
        body["extra_data"] = extra
    return body


def applied(nodes: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The API workflow `nodes` with resolved `overrides` (`{node_id: {"inputs": {...}}}`) applied:
    what the deployment runs. Only the changed nodes are new; the others are `nodes`' own (read-only)."""
    changed = {node_id: {**nodes[node_id], "inputs": {**nodes[node_id].get("inputs", {}),
                                                      **patch.get("inputs", {})}}
               for node_id, patch in overrides.items() if node_id in nodes}
    return {**nodes, **changed}
