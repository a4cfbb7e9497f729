"""UI-format ComfyUI workflows (the frontend's "Save") converted to the API format, as "Export (API)" does.

The conversion follows the frontend's graphToPrompt: each node's widget values are named after the
widget inputs of its class in `object_info` (required then optional), skipping the values of widgets
that are not sent (the control widget after a seed, a combo's filter list, an image loader's upload
button); links become `[node_id, slot]`, followed through Reroute nodes and bypassed nodes (an output
of a bypassed node is its first input of the same type, the same slot tried first); a PrimitiveNode's
value goes to every widget it feeds; muted and frontend-only nodes (notes, reroutes, primitives) are
left out, and so is an input linked from a node that is left out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .errors import ValidationError

MUTED, BYPASSED = 2, 4
REROUTE, PRIMITIVE = "Reroute", "PrimitiveNode"
FRONTEND_ONLY = {REROUTE, PRIMITIVE, "Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOADS = ("image_upload", "video_upload", "animated_image_upload")
EMPTY = {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}
EXPORT_API = "In ComfyUI use Workflow → Export (API) and use that workflow_api.json instead."
_DROP = "drop"  # the link ends at a muted node: the input is left out too

LINK_FIELDS = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
Link = tuple[Any, int, Any, int, Any]  # origin id, origin slot, target id, target slot, type


def is_ui_format(data: Any) -> bool:
    """Whether `data` looks like a UI-format workflow (a `nodes` list, as the frontend saves it)."""
    return isinstance(data, Mapping) and isinstance(data.get("nodes"), list)


def to_api(data: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, Any]:
    """The API format of the UI-format workflow `data`, named after the server's `object_info`."""
    graph = _Graph(data)
    missing = [f"{_where(node)}: its class is not on the server, so its widget values cannot be named."
               for node in graph.runnable() if node["type"] not in object_info]
    if missing:
        raise ValidationError("\n".join([*missing, f"Install the nodes, or: {EXPORT_API}"]))
    if not any(True for _ in graph.runnable()):
        raise ValidationError("This UI-format workflow has no node to run: in ComfyUI use Workflow → "
                              "Export (API) to save the API format of a workflow that does something.")
    fed = graph.primitive_values()
    api: dict[str, Any] = {}
    for node in graph.runnable():
        schema = object_info[node["type"]]
        node_id = str(node["id"])
        inputs = _widget_inputs(node, schema)
        inputs.update(fed.get(node_id, {}))
        for slot in node.get("inputs") or []:
            name = str(slot.get("name"))
            source = graph.source(slot.get("link"), slot.get("type"))
            if source == _DROP:
                inputs.pop(name, None)
            elif source is not None:
                inputs[name] = source
        title = node.get("title") or schema.get("display_name") or node["type"]
        api[node_id] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    return api


class _Graph:
    """The nodes and links of a UI-format workflow, checked for a shape this module can convert."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        if not is_ui_format(data):
            raise ValidationError("This is not a UI-format ComfyUI workflow: it has no 'nodes' list.")
        nodes = data["nodes"]
        if not all(isinstance(n, Mapping) and "id" in n and isinstance(n.get("type"), str) for n in nodes):
            raise ValidationError("Each of the workflow's 'nodes' must be an object with 'id' and 'type'.")
        self.nodes: dict[str, Mapping[str, Any]] = {str(n["id"]): n for n in nodes}
        self.links = _links(data.get("links") or [])
        _refuse_subgraphs(data, nodes)

    def runnable(self) -> Iterator[Mapping[str, Any]]:
        """The nodes the server runs: not muted, not bypassed, not frontend-only."""
        for node in self.nodes.values():
            if node.get("mode", 0) not in (MUTED, BYPASSED) and node["type"] not in FRONTEND_ONLY:
                yield node

    def primitive_values(self) -> dict[str, dict[str, Any]]:
        """`{node_id: {widget: value}}`: each PrimitiveNode's value given to the widgets it feeds."""
        fed: dict[str, dict[str, Any]] = {}
        for origin, _, target, target_slot, _ in self.links.values():
            primitive, node = self.nodes.get(str(origin)), self.nodes.get(str(target))
            if primitive is None or primitive["type"] != PRIMITIVE or node is None:
                continue
            values = primitive.get("widgets_values") or []
            slots = node.get("inputs") or []
            if values and target_slot < len(slots):
                fed.setdefault(str(target), {})[_input_name(slots[target_slot])] = _wrapped(values[0])
        return fed

    def source(self, link_id: Any, wanted: Any, depth: int = 0) -> list[Any] | str | None:
        """`[node_id, slot]` of the real node behind link `link_id`; `_DROP` if the link ends at a
        muted node, None if it leads nowhere (an unlinked reroute or bypassed input, a bypassed node
        without an input of the type: a widget keeps its value)."""
        link = self.links.get(link_id) if link_id is not None else None
        node = self.nodes.get(str(link[0])) if link else None
        if link is None or node is None or depth > len(self.nodes):
            return None
        if node.get("mode", 0) == MUTED:
            return _DROP
        if node["type"] in FRONTEND_ONLY:  # a reroute passes its one input on; the others have none
            slots = (node.get("inputs") or []) if node["type"] == REROUTE else []
            upstream = slots[link[1]].get("link") if link[1] < len(slots) else None
            return self.source(upstream, wanted, depth + 1) if upstream is not None else None
        if node.get("mode", 0) == BYPASSED:
            slot = _bypass_slot(node, link[1], wanted)
            return self.source(slot.get("link"), slot.get("type"), depth + 1) if slot else None
        return [str(link[0]), int(link[1])]


def _links(raw: Any) -> dict[Any, Link]:
    """Links by id, from `[id, origin, slot, target, slot, type]` lists or the newer objects."""
    links: dict[Any, Link] = {}
    for link in raw if isinstance(raw, list) else []:
        fields: Any = [link.get(k) for k in LINK_FIELDS] if isinstance(link, Mapping) else link
        try:
            link_id, origin, origin_slot, target, target_slot, kind = fields[:6]
            links[link_id] = (origin, int(origin_slot), target, int(target_slot), kind)
        except (TypeError, ValueError):
            raise ValidationError(f"A link of the workflow has an unknown shape: {link!r:.80}.") from None
    return links


def _refuse_subgraphs(data: Mapping[str, Any], nodes: list[Mapping[str, Any]]) -> None:
    definitions = data.get("definitions")
    subgraphs = definitions.get("subgraphs") if isinstance(definitions, Mapping) else None
    inner = {s.get("id") for s in subgraphs or [] if isinstance(s, Mapping)}
    for node in nodes:
        kind = node["type"]
        if kind in inner or kind.startswith(("workflow>", "workflow/")):
            what = "a subgraph" if kind in inner else "a group node"
            raise ValidationError(f"{_where(node)} is {what}, which cannot be converted here. {EXPORT_API}")


def _bypass_slot(node: Mapping[str, Any], output_slot: int, wanted: Any) -> Mapping[str, Any] | None:
    """The input a bypassed node passes to its output `output_slot`: the same slot if its type fits
    both the output and `wanted` (the linked input's type), else the first input of type `wanted`,
    else the first that fits both; for `wanted` any type ("*"), the same slot or the first."""
    slots = node.get("inputs") or []
    if not slots:
        return None
    if wanted in ("*", ""):
        return slots[output_slot] if output_slot < len(slots) else slots[0]
    outputs = node.get("outputs") or []
    made = outputs[output_slot].get("type") if output_slot < len(outputs) else None
    fits = [_fits(s.get("type"), made) and _fits(s.get("type"), wanted) for s in slots]
    if output_slot < len(slots) and fits[output_slot]:
        return slots[output_slot]
    exact = next((s for s in slots if s.get("type") == wanted), None)
    return exact or next((s for s, ok in zip(slots, fits, strict=True) if ok), None)


def _fits(a: Any, b: Any) -> bool:
    """Whether a link may join slot types `a` and `b` (litegraph's rule: empty or "*" fits all,
    "A,B" lists fit when they share a type, case-insensitive)."""
    if not a or not b or a == b or "*" in (a, b):
        return True
    return bool(set(str(a).lower().split(",")) & set(str(b).lower().split(",")))


def _input_name(slot: Mapping[str, Any]) -> str:
    widget = slot.get("widget")
    return str(widget["name"] if isinstance(widget, Mapping) and "name" in widget else slot.get("name"))


def _widget_inputs(node: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """`{input: value}` for the widgets of `node`, from its `widgets_values` (a list or an object)."""
    values = node.get("widgets_values")
    widgets = list(_widgets(schema))
    if isinstance(values, Mapping):
        return {name: _wrapped(values.get(name, default)) for name, default in widgets if name is not None}
    values = values if isinstance(values, list) else []
    return {name: _wrapped(values[i] if i < len(values) else default)
            for i, (name, default) in enumerate(widgets) if name is not None}


def _wrapped(value: Any) -> Any:
    """A list value wrapped as `{"__value__": [...]}`, as the frontend sends it (a bare list is a link)."""
    return {"__value__": value} if isinstance(value, list) else value


def _widgets(schema: Mapping[str, Any]) -> Iterator[tuple[str | None, Any]]:
    """(input name, default) of each widget the frontend gives the class, in order; the name is None
    for the widgets whose values are not sent: the control after a seed (and a combo's filter list)
    right after its widget, an image loader's upload button after the last required input (the
    frontend adds it as one more required input)."""
    declared = schema.get("input") or {}
    order = schema.get("input_order") or {}
    for section in ("required", "optional"):
        specs = declared.get(section) or {}
        upload = False
        for name in order.get(section) or list(specs):
            spec = specs.get(name)
            kind, options = _kind(spec)
            if kind is None or options.get("forceInput"):
                continue
            yield name, _default(kind, spec, options)
            upload = upload or any(options.get(key) for key in UPLOADS)
            if options.get("control_after_generate"):
                yield None, None
                if kind == "COMBO":
                    yield None, None
        if upload and section == "required":
            yield None, None


def _kind(spec: Any) -> tuple[str | None, Mapping[str, Any]]:
    """The widget type of an input spec (None for a socket) and its options."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None, {}
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    if isinstance(spec[0], list):
        return "COMBO", options
    return (spec[0] if spec[0] in WIDGET_TYPES else None), options


def _default(kind: str, spec: Any, options: Mapping[str, Any]) -> Any:
    if "default" in options:
        return options["default"]
    if kind == "COMBO":
        choices = spec[0] if isinstance(spec[0], list) else options.get("options") or []
        return choices[0] if choices else None
    return EMPTY.get(kind)


def _where(node: Mapping[str, Any]) -> str:
    title = node.get("title")
    return f"Node {node['id']}" + (f" {title!r}" if title else "") + f" ({node['type']})"
