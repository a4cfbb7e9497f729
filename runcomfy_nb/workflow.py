"""API-format ComfyUI workflows and overrides: load, address nodes, apply and parse overrides."""

from __future__ import annotations

import ast
import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checks import did_you_mean, link_problems, saved_problems, schema_problems
from .errors import ValidationError
from .provenance import workflow_from_output
from .ui_format import is_ui_format, to_api

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
    def load(cls, path: str | Path, *, object_info: Mapping[str, Any] | None = None) -> Workflow:
        """An API-format workflow file; a UI-format one (ComfyUI's Save) is converted when the
        server's node schemas (`object_info`) are given (see `from_ui`)."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ValidationError(f"No workflow file at {path}.") from None
        except json.JSONDecodeError as exc:
            raise ValidationError(f"{path} is not valid JSON: {exc}.") from None
        return cls.from_ui(data, object_info) if object_info is not None else cls(data)

    @classmethod
    def from_ui(cls, data: Mapping[str, Any], object_info: Mapping[str, Any]) -> Workflow:
        """A UI-format export converted with the server's node schemas, as ComfyUI's Export (API)
        does; an API-format workflow is taken as it is."""
        return cls(to_api(data, object_info) if is_ui_format(data) else data)

    @classmethod
    def from_output(cls, path: str | Path) -> Workflow:
        """The workflow that made a saved output (its embedded metadata or sidecar JSON, as
        runcomfy_nb saves them; also an image ComfyUI saved): submit it again to rerun it."""
        found, info = workflow_from_output(path, cls)
        if isinstance(found, Workflow):
            return found
        raise ValidationError(
            f"{path} records only the inputs of its job on {info.get('target')!r}, not a whole workflow: "
            "rerun them with `runcomfy_nb.provenance.workflow_from_output(path, Workflow)`, which gives "
            "those inputs and the target.")

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
                listed = ", ".join(f"{i} ({self.title(i)}, {self.data[i].get('class_type')})" for i in found)
                raise ValidationError(f"{ref!r} names {len(found)} nodes: {listed}; use a node id or a "
                                      "title of one.")
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


# --- checks before a submit (the per-node rules are in checks.py) ------------------------------


def _where(workflow: Workflow, node_id: str) -> str:
    return f"Node {node_id} ({workflow.title(node_id)})"


def _node_problems(workflow: Workflow, node_id: str, inputs: Mapping[str, Any],
                   object_info: Mapping[str, Any] | None, *, whole: bool) -> list[str]:
    node = workflow.data[node_id]
    where, saved = _where(workflow, node_id), node.get("inputs", {})
    problems = link_problems(where, inputs, workflow.data)
    if object_info is None:
        return problems + ([] if whole else saved_problems(where, inputs, saved))
    schema = object_info.get(node.get("class_type"))
    if not isinstance(schema, Mapping):
        return [*problems, f"{where}: its class {node.get('class_type')!r} is not installed on the server."]
    return problems + schema_problems(where, inputs, schema, saved=None if whole else saved, whole=whole)


def _raise(problems: list[str], what: str) -> None:
    if len(problems) == 1:
        raise ValidationError(f"{problems[0]} Nothing was sent.")
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ValidationError(f"{len(problems)} problems with {what}; nothing was sent:\n{listing}")


def _resolve(workflow: Workflow, overrides: Mapping[Any, Any],
             problems: list[str]) -> dict[str, dict[str, Any]]:
    resolved: dict[str, dict[str, Any]] = {}
    for ref, patch in normalize_overrides(overrides).items():
        try:
            node_id = workflow.find(ref)
        except ValidationError as exc:
            problems.append(str(exc))
            continue
        resolved.setdefault(node_id, {"inputs": {}})["inputs"].update(patch["inputs"])
    return resolved


def resolve_overrides(workflow: Workflow, overrides: Mapping[Any, Any]) -> dict[str, dict[str, Any]]:
    """The overrides keyed by node id: titles and unique class names resolved (one
    ValidationError lists every name that names no node, or several)."""
    problems: list[str] = []
    resolved = _resolve(workflow, overrides, problems)
    _raise(problems, "the overrides")
    return resolved


def check_overrides(workflow: Workflow, overrides: Mapping[Any, Any],
                    object_info: Mapping[str, Any] | None, *,
                    what: str = "the overrides") -> dict[str, dict[str, Any]]:
    """The overrides keyed by node id (titles and unique class names resolved), every input checked
    against the workflow and the server's node schemas (`object_info`; None: against the saved
    values only): unknown node or input (with a did-you-mean), wrong type, value not in its list,
    out of range, a link replaced by a value. Raises one ValidationError that lists every problem."""
    problems: list[str] = []
    resolved = _resolve(workflow, overrides, problems)
    for node_id, patch in resolved.items():
        problems += _node_problems(workflow, node_id, patch["inputs"], object_info, whole=False)
    _raise(problems, what)
    return resolved


def check_workflow(workflow: Workflow, object_info: Mapping[str, Any] | None, *,
                   what: str = "the workflow") -> None:
    """Check every node of `workflow`: its links lead to nodes it has and (with the server's node
    schemas) its class is installed, its values fit, no input is unknown and no required one
    missing. Raises one ValidationError listing all."""
    problems: list[str] = []
    for node_id, node in workflow.data.items():
        problems += _node_problems(workflow, node_id, node.get("inputs", {}), object_info, whole=True)
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
    `"Positive Prompt".text = "a {{style}} city"`); `#` starts a comment line. Titles and class
    names are resolved against `workflow` when given, else kept for the submit to resolve."""
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
        if workflow is not None and not NODE_ID.fullmatch(node):
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
