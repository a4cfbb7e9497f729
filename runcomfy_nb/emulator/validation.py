"""Validation of serverless submit bodies; a failure becomes a 422001 whose `detail` points at the field.

ComfyUI deployments: `overrides` ({node_id: {"inputs": {...}}}, checked against the saved workflow:
node ids, input names, JSON value types — int and float interchangeable, bool apart, a linked input
may take a value) or `workflow_api_json` (a whole API-format workflow; a UI-format export with
`nodes`/`links` is refused), never both; `extra_data`, if sent, is an object.
LoRA deployments and Model API models: the flat body against a small JSON-schema-like schema
(`required`, `properties` with `type` string/integer/number/boolean/array (`items`, `minItems`,
`maxItems`), `enum`, `minimum`/`maximum`, `format: "image_uri"` or `"uri"` = a public https URL, as
is any field named `*_url` / `*_urls`); unknown fields are refused.
"""

from __future__ import annotations

import copy
from typing import Any

JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list}


class Invalid(Exception):
    """A body the API refuses: `loc` is the path to the field, as in a 422 `detail` entry."""

    def __init__(self, message: str, loc: list[str], kind: str = "value_error") -> None:
        super().__init__(message)
        self.loc = loc
        self.kind = kind

    def detail(self) -> list[dict[str, Any]]:
        return [{"loc": self.loc, "msg": str(self), "type": self.kind}]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _same_type(saved: Any, value: Any) -> bool:
    if isinstance(saved, list):  # a link: replacing it with a value is allowed
        return True
    kinds = {_json_type(saved), _json_type(value)}
    return len(kinds) == 1 or kinds == {"integer", "number"}


def comfyui_workflow(saved: dict[str, Any], body: Any) -> dict[str, Any]:
    """The API-format workflow a ComfyUI-deployment request runs, or raise Invalid."""
    if not isinstance(body, dict):
        raise Invalid("Request body must be a JSON object", ["body"], "type_error.dict")
    if "extra_data" in body and not isinstance(body["extra_data"], dict):
        raise Invalid("extra_data must be an object, e.g. {\"api_key_comfy_org\": \"...\"}",
                      ["body", "extra_data"], "type_error.dict")
    has_workflow, has_overrides = "workflow_api_json" in body, "overrides" in body
    if has_workflow and has_overrides:
        raise Invalid("Send either overrides or workflow_api_json: omit overrides when sending "
                      "workflow_api_json", ["body", "overrides"])
    if has_workflow:
        return _inline_workflow(body["workflow_api_json"])
    if not has_overrides:
        raise Invalid("Field required: overrides (or workflow_api_json)", ["body", "overrides"],
                      "value_error.missing")
    overrides = body["overrides"]
    if not isinstance(overrides, dict):
        raise Invalid("overrides must be an object keyed by node id", ["body", "overrides"],
                      "type_error.dict")
    workflow = copy.deepcopy(saved)
    for node_id, patch in overrides.items():
        _override(workflow, node_id, patch)
    return workflow


def _override(workflow: dict[str, Any], node_id: str, patch: Any) -> None:
    """Apply one node's override to `workflow`, or raise Invalid."""
    loc = ["body", "overrides", node_id]
    if node_id not in workflow:
        known = ", ".join(sorted(workflow))
        raise Invalid(f"Node {node_id} is not in the deployment's workflow (nodes: {known})", loc)
    if not isinstance(patch, dict) or not isinstance(patch.get("inputs"), dict):
        raise Invalid("Each override must be {\"inputs\": {...}}", [*loc, "inputs"], "type_error.dict")
    node = workflow[node_id]
    inputs = node.setdefault("inputs", {})
    for name, value in patch["inputs"].items():
        where = [*loc, "inputs", name]
        if name not in inputs:
            raise Invalid(f"Node {node_id} ({node.get('class_type')}) has no input '{name}'; "
                          f"inputs: {', '.join(inputs)}", where)
        if not _same_type(inputs[name], value):
            raise Invalid(f"Input '{name}' of node {node_id} expects {_json_type(inputs[name])}, "
                          f"got {_json_type(value)}", where, "type_error")
        inputs[name] = value


def _inline_workflow(workflow: Any) -> dict[str, Any]:
    loc = ["body", "workflow_api_json"]
    if isinstance(workflow, dict) and (isinstance(workflow.get("nodes"), list)
                                       or isinstance(workflow.get("links"), list)):
        raise Invalid("workflow_api_json is in UI format (nodes/links); export it with "
                      "'Export (API)' / 'Save (API Format)'", loc)
    if not isinstance(workflow, dict) or not workflow:
        raise Invalid("workflow_api_json must be a non-empty API-format workflow object", loc,
                      "type_error.dict")
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise Invalid(f"Node {node_id} has no class_type: not an API-format workflow",
                          [*loc, str(node_id)])
        if not isinstance(node.get("inputs", {}), dict):
            raise Invalid(f"Node {node_id}: inputs must be an object", [*loc, str(node_id), "inputs"])
    return copy.deepcopy(workflow)


def schema_inputs(schema: dict[str, Any], body: Any) -> dict[str, Any]:
    """A flat request's inputs (a LoRA deployment, a Model API model), checked against its small
    schema, defaults filled in; or raise Invalid. Media inputs (`format` "image_uri"/"uri", or a
    name ending in `_url` / `_urls`) must be public https URLs."""
    if not isinstance(body, dict):
        raise Invalid("Request body must be a JSON object", ["body"], "type_error.dict")
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in body:
            raise Invalid(f"Field required: {name}", ["body", name], "value_error.missing")
    for name, value in body.items():
        spec = properties.get(name)
        loc = ["body", name]
        if spec is None:
            raise Invalid(f"Unknown field '{name}'; fields: {', '.join(properties)}", loc,
                          "value_error.extra")
        if spec.get("type") == "array":
            if not isinstance(value, list):
                raise Invalid(f"'{name}' must be of type array, got {_json_type(value)}", loc, "type_error")
            low, high = spec.get("minItems"), spec.get("maxItems")
            if (low is not None and len(value) < low) or (high is not None and len(value) > high):
                raise Invalid(f"'{name}' must have between {low} and {high} items", loc,
                              "value_error.list")
            items = spec.get("items", {})
            for n, item in enumerate(value):
                _check_value(f"{name}[{n}]", name, items, item, [*loc, str(n)])
        else:
            _check_value(name, name, spec, value, loc)
    defaults = {k: v["default"] for k, v in properties.items() if isinstance(v, dict) and "default" in v}
    return {**defaults, **body}


def _check_value(label: str, name: str, spec: dict[str, Any], value: Any, loc: list[str]) -> None:
    kind = spec.get("type", "string")
    if not isinstance(value, JSON_TYPES[kind]) or (isinstance(value, bool) and kind != "boolean"):
        raise Invalid(f"'{label}' must be of type {kind}, got {_json_type(value)}", loc, "type_error")
    if "enum" in spec and value not in spec["enum"]:
        raise Invalid(f"'{label}' must be one of {spec['enum']}", loc, "value_error.enum")
    low, high = spec.get("minimum"), spec.get("maximum")
    if (low is not None and value < low) or (high is not None and value > high):
        raise Invalid(f"'{label}' must be between {low} and {high}", loc, "value_error.range")
    is_media = spec.get("format") in ("image_uri", "uri") or name.endswith(("_url", "_urls"))
    if is_media and not (isinstance(value, str) and value.startswith("https://")):
        raise Invalid(f"'{label}' must be a public https URL", loc, "value_error.url")
