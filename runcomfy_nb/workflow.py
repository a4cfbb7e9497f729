"""API-format ComfyUI workflows and overrides: load, address nodes, apply and parse overrides."""

from __future__ import annotations

import ast
import copy
import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ValidationError

UI_FORMAT_HELP = (
    "This is a UI-format workflow (it has 'nodes' and 'links' arrays); the API needs the API "
    "format. In ComfyUI use Workflow → Export (API) (older versions: enable Dev mode in the "
    "settings, then 'Save (API Format)') and use that workflow_api.json."
)
NODE_ID = re.compile(r"\d+(?::\d+)*")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")
LINE = re.compile(
    r"""^\s*(?P<node>"[^"]+"|'[^']+'|[^.=\s][^.=]*?)\s*\.\s*(?P<input>[A-Za-z_][\w\-]*)\s*=\s*(?P<value>.*?)\s*$"""
)


def did_you_mean(name: Any, choices: Any) -> str:
    """` Did you mean 'x'?` for the closest of `choices` to a misspelt `name`, or ""."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_api_format(data: Any, what: str = "workflow") -> dict[str, Any]:
    """Return `data` if it is an API-format workflow, else raise a ValidationError saying why."""
    if not isinstance(data, Mapping):
        raise ValidationError(f"The {what} must be a JSON object of nodes, not {type(data).__name__}.")
    if isinstance(data.get("nodes"), list) and "links" in data:
        raise ValidationError(UI_FORMAT_HELP)
    if not data:
        raise ValidationError(f"The {what} is empty.")
    for node_id, node in data.items():
        if not isinstance(node, Mapping) or "class_type" not in node:
            raise ValidationError(
                f"Node {node_id!r} of the {what} has no class_type: is this an API-format workflow?"
            )
    return {str(k): v for k, v in data.items()}


def normalize_overrides(overrides: Mapping[Any, Any]) -> dict[str, dict[str, Any]]:
    """`{node_id: {"inputs": {...}}}` with string node ids; `{31: {"seed": 1}}` is fixed up."""
    if not isinstance(overrides, Mapping):
        raise ValidationError("overrides must be a mapping of node id to {'inputs': {...}}.")
    fixed: dict[str, dict[str, Any]] = {}
    for node_id, patch in overrides.items():
        key = str(node_id).strip()
        if not isinstance(patch, Mapping):
            raise ValidationError(
                f"Override for node {key!r} must be an object like {{'inputs': {{'seed': 42}}}}, "
                f"not {type(patch).__name__}."
            )
        inputs = patch["inputs"] if set(patch) == {"inputs"} else patch
        if not isinstance(inputs, Mapping):
            raise ValidationError(f"'inputs' of node {key!r} must be an object of input values.")
        fixed.setdefault(key, {"inputs": {}})["inputs"].update(inputs)
    return fixed


class Workflow:
    """An API-format workflow: `Workflow.load(path)`, nodes by id, title or class, overrides."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = check_api_format(copy.deepcopy(dict(data)))

    @classmethod
    def load(cls, path: str | Path) -> Workflow:
        try:
            return cls(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ValidationError(f"No workflow file at {path}.") from None
        except json.JSONDecodeError as exc:
            raise ValidationError(f"{path} is not valid JSON: {exc}.") from None

    def __repr__(self) -> str:
        return f"<Workflow {len(self.data)} nodes>"

    def to_api(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)

    def title(self, node_id: str) -> str:
        node = self.data.get(node_id, {})
        return node.get("_meta", {}).get("title") or node.get("class_type", node_id)

    def find(self, ref: str | int) -> str:
        """The node id for an id, a `_meta.title` or a class_type used by exactly one node."""
        ref = str(ref).strip()
        if ref in self.data:
            return ref
        by_title = [i for i, n in self.data.items() if n.get("_meta", {}).get("title") == ref]
        by_class = [i for i, n in self.data.items() if n.get("class_type") == ref]
        for found in (by_title, by_class):
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise ValidationError(
                    f"{ref!r} names {len(found)} nodes ({', '.join(found)}): use a node id."
                )
        names = [*self.data, *(self.title(i) for i in self.data)]
        raise ValidationError(f"No node {ref!r} in the workflow.{did_you_mean(ref, names)}")

    def override(self, overrides: Mapping[Any, Any] | None = None, **by_name: Any) -> Workflow:
        """A copy with inputs replaced: `override({"31": {"seed": 1}})`, `override(KSampler={"seed": 1})`."""
        patch = dict(overrides or {})
        patch.update(by_name)
        data = self.to_api()
        for ref, inputs in normalize_overrides(patch).items():
            node_id = self.find(ref)
            known = data[node_id].setdefault("inputs", {})
            for name, value in inputs["inputs"].items():
                if name not in known:
                    raise ValidationError(f"Node {node_id} ({self.title(node_id)}) has no input "
                                          f"{name!r}.{did_you_mean(name, known)}")
                known[name] = value
        return Workflow(data)


# --- checks against a server's node schemas (`/object_info`) ----------------------------------

_MEDIA_PREFIXES = ("https://", "http://", "data:")
_MEDIA_INPUTS = {"image", "video", "audio", "file"}


def _input_problem(name: str, value: Any, spec: Any, workflow: Workflow) -> str | None:
    """What is wrong with `value` for an input declared as `spec` ([type, options]), or None.
    Follows ComfyUI's own checks: type, value in list, min/max."""
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    extra = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 else {}
    extra = extra if isinstance(extra, Mapping) else {}
    if (isinstance(value, list) and len(value) == 2 and str(value[0]) in workflow.data
            and isinstance(value[1], int)):
        return None  # a link to another node: the server checks the types it carries
    if isinstance(value, Mapping) and "__value__" in value:
        value = value["__value__"]
    options = kind if isinstance(kind, list) else extra.get("options") if kind == "COMBO" else None
    if options is not None:
        is_media = name in _MEDIA_INPUTS or any(str(k).endswith("_upload") for k in extra)
        if is_media and isinstance(value, str) and value.startswith(_MEDIA_PREFIXES):
            return None  # the serverless API fetches a URL or data URI into a loader's input
        if value in options:
            return None
        shown = ", ".join(repr(o) for o in options[:8]) + (", …" if len(options) > 8 else "")
        return f"{value!r} is not one of its values ({shown}).{did_you_mean(value, options)}"
    expected = {"INT": "an integer", "FLOAT": "a number", "STRING": "text", "BOOLEAN": "true or false"}
    if kind not in expected:
        return f"it takes a {kind} connection from another node, not a value."
    fits = {
        "INT": isinstance(value, int) or (isinstance(value, float) and value.is_integer()),
        "FLOAT": isinstance(value, (int, float)),
        "STRING": isinstance(value, str),
        "BOOLEAN": isinstance(value, bool),
    }[kind] and (kind == "BOOLEAN" or not isinstance(value, bool))
    if not fits:
        return f"it takes {expected[kind]}, not {type(value).__name__} {value!r}."
    low, high = extra.get("min"), extra.get("max")
    below, above = low is not None and value < low, high is not None and value > high
    if kind in ("INT", "FLOAT") and (below or above):
        return f"{value!r} is out of range ({low} to {high})."
    return None


def _schema_inputs(schema: Mapping[str, Any]) -> dict[str, Any]:
    groups = schema.get("input", {}) if isinstance(schema, Mapping) else {}
    return {**groups.get("optional", {}), **groups.get("required", {})}


def _check_node(workflow: Workflow, node_id: str, inputs: Mapping[str, Any],
                object_info: Mapping[str, Any], problems: list[str]) -> None:
    node = workflow.data[node_id]
    where = f"Node {node_id} ({workflow.title(node_id)})"
    class_type = node.get("class_type")
    schema = object_info.get(class_type)
    if not isinstance(schema, Mapping):
        problems.append(f"{where}: its class {class_type!r} is not installed on the server.")
        return
    declared = _schema_inputs(schema)
    saved = node.get("inputs", {})
    for name, value in inputs.items():
        if name not in declared:
            if name not in saved:
                problems.append(f"{where} has no input {name!r}.{did_you_mean(name, [*declared, *saved])}")
            continue  # a saved input the schema does not declare (a frontend extra): left as is
        problem = _input_problem(name, value, declared[name], workflow)
        if problem:
            problems.append(f"{where}, input {name!r}: {problem}")


def _raise(problems: list[str], what: str) -> None:
    if len(problems) == 1:
        raise ValidationError(f"{problems[0]} Nothing was sent.")
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ValidationError(f"{len(problems)} problems with {what}; nothing was sent:\n{listing}")


def check_overrides(workflow: Workflow, overrides: Mapping[Any, Any], object_info: Mapping[str, Any],
                    *, what: str = "the overrides") -> dict[str, dict[str, Any]]:
    """The overrides keyed by node id (titles and unique class names resolved), every input checked
    against the workflow and the server's node schemas (`object_info`): unknown node or input (with
    a did-you-mean), wrong type, value not in its list, out of range. Raises one ValidationError
    that lists every problem."""
    problems: list[str] = []
    resolved: dict[str, dict[str, Any]] = {}
    for ref, patch in normalize_overrides(overrides).items():
        try:
            node_id = workflow.find(ref)
        except ValidationError as exc:
            problems.append(str(exc))
            continue
        resolved.setdefault(node_id, {"inputs": {}})["inputs"].update(patch["inputs"])
    for node_id, patch in resolved.items():
        _check_node(workflow, node_id, patch["inputs"], object_info, problems)
    _raise(problems, what)
    return resolved


def check_workflow(workflow: Workflow, object_info: Mapping[str, Any], *,
                   what: str = "the workflow") -> None:
    """Check every node of `workflow` against the server's node schemas: its class is installed,
    its values fit (as `check_overrides` checks them). Raises one ValidationError listing all."""
    problems: list[str] = []
    for node_id, node in workflow.data.items():
        _check_node(workflow, node_id, node.get("inputs", {}), object_info, problems)
    _raise(problems, what)


# --- cell bodies ----------------------------------------------------------------------------------


def substitute(value: Any, namespace: Mapping[str, Any]) -> Any:
    """Replace `{{name}}` from `namespace` in every string of a JSON value; a string that is only
    a placeholder takes the variable's own value (so `{{seed}}` stays a number)."""
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value.strip())
        if whole:
            return _lookup(whole.group(1), namespace)
        return PLACEHOLDER.sub(lambda m: str(_lookup(m.group(1), namespace)), value)
    if isinstance(value, list):
        return [substitute(v, namespace) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, namespace) for k, v in value.items()}
    return value


def _lookup(name: str, namespace: Mapping[str, Any]) -> Any:
    if name not in namespace:
        raise ValidationError(f"{{{{{name}}}}} is not defined: set {name} = ... in a cell first.")
    return namespace[name]


def _parse_value(text: str, lineno: int) -> Any:
    if PLACEHOLDER.fullmatch(text):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValidationError(
            f"Line {lineno}: value {text!r} is not JSON; quote text like \"a red fox\"."
        ) from None


def parse_override_lines(
    text: str, namespace: Mapping[str, Any] | None = None, workflow: Workflow | None = None
) -> dict[str, dict[str, Any]]:
    """Parse one override per line, `NODE.input = value` (`31.seed = 42`,
    `"Positive Prompt".text = "a {{style}} city"`); `#` starts a comment line."""
    overrides: dict[str, dict[str, Any]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        if not match:
            raise ValidationError(
                f"Line {lineno}: {line!r} is not an override; write NODE.input = value, "
                'e.g. 31.seed = 42 or 6.text = "a city".'
            )
        node = match["node"].strip().strip("\"'")
        if not NODE_ID.fullmatch(node):
            if workflow is None:
                raise ValidationError(
                    f"Line {lineno}: {node!r} is not a node id; without the workflow at hand, "
                    "address nodes by id (e.g. 31.seed = 42)."
                )
            node = workflow.find(node)
        value = substitute(_parse_value(match["value"], lineno), namespace or {})
        overrides.setdefault(node, {"inputs": {}})["inputs"][match["input"]] = value
    return overrides


def parse_cell(
    text: str, namespace: Mapping[str, Any] | None = None, workflow: Workflow | None = None
) -> tuple[str, Any]:
    """Read a cell body: ('json', object) when it is JSON, else ('overrides', {...}) from lines."""
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"The cell looks like JSON but does not parse: {exc.msg} at line {exc.lineno}, "
                f"column {exc.colno}."
            ) from None
        return "json", substitute(data, namespace or {})
    return "overrides", parse_override_lines(text, namespace, workflow)
