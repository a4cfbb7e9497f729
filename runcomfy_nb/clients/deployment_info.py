"""What the Deployment API says about a deployment: `Deployment` and its `DeploymentPayload`."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ValidationError
from ..timefmt import parse_timestamp
from ..workflow import Workflow


@dataclass(frozen=True)
class DeploymentPayload:
    """What `includes=payload` adds: the saved workflow (None for a LoRA deployment), its default
    overrides (how to discover the node ids worth overriding) and where its node schemas are."""

    workflow: Workflow | None
    overrides: dict[str, Any]
    object_info_url: str | None = field(default=None, repr=False)

    @classmethod
    def from_reply(cls, reply: Any) -> DeploymentPayload | None:
        if not isinstance(reply, Mapping):
            return None
        saved = reply.get("workflow_api_json")
        if isinstance(saved, str):  # some replies carry the workflow as JSON text
            with contextlib.suppress(ValueError):
                saved = json.loads(saved)
        workflow = None
        if isinstance(saved, Mapping) and saved:
            with contextlib.suppress(ValidationError):
                workflow = Workflow(saved)
        overrides = reply.get("overrides")
        url = reply.get("object_info_url")
        return cls(workflow, dict(overrides) if isinstance(overrides, Mapping) else {},
                   url if isinstance(url, str) and url else None)


@dataclass(frozen=True)
class Deployment:
    """One deployment as the Deployment API describes it. `keep_warm` is
    `keep_warm_duration_in_seconds`; `created_at` / `updated_at` are epoch seconds; `payload` and
    `readme` are there when asked for (`payload=True`, `readme=True`)."""

    id: str
    name: str
    workflow_id: str | None = None
    workflow_version: str | None = None
    hardware: tuple[str, ...] = ()
    min_instances: int | None = None
    max_instances: int | None = None
    queue_size: int | None = None
    keep_warm: int | None = None
    status: str | None = None
    is_enabled: bool | None = None
    created_at: float | None = None
    updated_at: float | None = None
    payload: DeploymentPayload | None = field(default=None, repr=False)
    readme: str | None = field(default=None, repr=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_reply(cls, reply: Any) -> Deployment:
        reply = dict(reply) if isinstance(reply, Mapping) else {}

        def number(key: str) -> int | None:
            value = reply.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        hardware = reply.get("hardware")
        readme = reply.get("readme")
        return cls(
            id=str(reply.get("id", "")), name=str(reply.get("name", "")),
            workflow_id=reply.get("workflow_id"), workflow_version=reply.get("workflow_version"),
            hardware=tuple(str(h) for h in hardware) if isinstance(hardware, list) else
            ((str(hardware),) if hardware else ()),
            min_instances=number("min_instances"), max_instances=number("max_instances"),
            queue_size=number("queue_size"), keep_warm=number("keep_warm_duration_in_seconds"),
            status=reply.get("status"),
            is_enabled=reply["is_enabled"] if isinstance(reply.get("is_enabled"), bool) else None,
            created_at=parse_timestamp(reply.get("created_at")),
            updated_at=parse_timestamp(reply.get("updated_at")),
            payload=DeploymentPayload.from_reply(reply.get("payload")),
            readme=readme if isinstance(readme, str) else None, raw=reply,
        )
