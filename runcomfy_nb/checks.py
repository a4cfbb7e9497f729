"""What is wrong with a node's inputs: against the server's node schemas (`/object_info`) when
they can be had, else against what the workflow itself shows (its links, its saved values).

Each problem is one line naming the node's title, id and input; `workflow.check_overrides` and
`workflow.check_workflow` collect them and raise one ValidationError.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

# Saved by some frontends next to a widget, never declared by a node: not an error.
FRONTEND_EXTRAS = frozenset({"control_after_generate", "control_before_generate", "upload"})
WIDGETS = {"INT": "an integer", "FLOAT": "a number", "STRING": "text", "BOOLEAN": "true or false"}
_MEDIA_PREFIXES = ("https://", "http://", "data:")
_MEDIA_INPUTS = {"image", "video", "audio", "file"}


def did_you_mean(name: Any, choices: Iterable[Any]) -> str:
    """` Did you mean 'x'?` for the closest of `choices` to a misspelt `name`, or ""."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def is_link(value: Any) -> bool:
    """`["4", 0]`: an input fed by output 0 of node 4 (ComfyUI takes any 2-list as a link)."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _combo_problem(name: str, value: Any, options: list[Any], extra: Mapping[str, Any]) -> str | None:
    is_media = name in _MEDIA_INPUTS or any(str(k).endswith("_upload") for k in extra)
    if is_media and isinstance(value, str) and value.startswith(_MEDIA_PREFIXES):
        return None  # the serverless API fetches a URL or data URI into a loader's input
    if value in options:
        return None
    shown = ", ".join(repr(o) for o in options[:8]) + (", …" if len(options) > 8 else "")
    return f"{value!r} is not one of its values ({shown}).{did_you_mean(value, options)}"


def _widget_problem(kind: str, value: Any, extra: Mapping[str, Any]) -> str | None:
    fits = {
        "INT": isinstance(value, int) or (isinstance(value, float) and value.is_integer()),
        "FLOAT": isinstance(value, (int, float)),
        "STRING": isinstance(value, str),
        "BOOLEAN": isinstance(value, bool),
    }[kind] and (kind == "BOOLEAN" or not isinstance(value, bool))
    if not fits:
        return f"it takes {WIDGETS[kind]}, not {type(value).__name__} {value!r}."
    low, high = extra.get("min"), extra.get("max")
    below, above = low is not None and value < low, high is not None and value > high
    if kind in ("INT", "FLOAT") and (below or above):
        return f"{value!r} is out of range ({low} to {high})."
    return None


def input_problem(name: str, value: Any, spec: Any, saved: Any = None) -> str | None:
    """What is wrong with `value` for an input declared as `spec` ([type, options]), or None.
    Follows ComfyUI's own checks: type, value in list, min/max. `saved` is the value the saved
    workflow has there (a link is named when a literal replaces it)."""
    if is_link(value):
        return None  # the server checks the types a link carries
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    extra = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 else {}
    extra = extra if isinstance(extra, Mapping) else {}
    if isinstance(value, Mapping) and "__value__" in value:
        value = value["__value__"]
    options = kind if isinstance(kind, list) else extra.get("options") if kind == "COMBO" else None
    if isinstance(options, list):
        return _combo_problem(name, value, options, extra)
    if kind not in WIDGETS:
        was = f" (node {saved[0]} in the saved workflow)" if is_link(saved) else ""
        return f"it takes a {kind} connection from another node{was}, not a value."
    return _widget_problem(str(kind), value, extra)


def _groups(schema: Mapping[str, Any]) -> tuple[dict[str, Any], set[str], set[str]]:
    """(declared inputs → spec, required names, hidden names) of a node schema."""
    groups = schema.get("input", {})
    groups = groups if isinstance(groups, Mapping) else {}

    def group(key: str) -> Mapping[str, Any]:
        found = groups.get(key)
        return found if isinstance(found, Mapping) else {}

    required, optional = group("required"), group("optional")
    return {**optional, **required}, set(required), set(group("hidden"))


def schema_problems(where: str, inputs: Mapping[str, Any], schema: Mapping[str, Any], *,
                    saved: Mapping[str, Any] | None = None, whole: bool = False) -> list[str]:
    """Problems of `inputs` (all of a node's when `whole`, so missing required ones count) against
    its class's schema. An input neither declared nor hidden nor saved is unknown."""
    declared, required, hidden = _groups(schema)
    saved = saved or {}
    problems: list[str] = []
    for name, value in inputs.items():
        if name in declared:
            problem = input_problem(name, value, declared[name], saved.get(name))
            if problem:
                problems.append(f"{where}, input {name!r}: {problem}")
        elif name not in hidden and name not in FRONTEND_EXTRAS and (whole or name not in saved):
            problems.append(f"{where} has no input {name!r}.{did_you_mean(name, declared)}")
    if whole:
        problems += [f"{where}, input {name!r} is required but missing." for name in declared
                     if name in required and name not in inputs]
    return problems


def _saved_kind(saved: Any) -> str | None:
    if isinstance(saved, bool):
        return "BOOLEAN"
    if isinstance(saved, (int, float)):
        return "FLOAT"  # an integer saved there may be a FLOAT's value: only "a number" is sure
    return "STRING" if isinstance(saved, str) else None


def saved_problems(where: str, inputs: Mapping[str, Any], saved: Mapping[str, Any]) -> list[str]:
    """Without node schemas: an input the saved node lacks is unknown; a value must be of the
    kind of the saved one (text for text, a number for a number, true/false for a switch)."""
    problems: list[str] = []
    for name, value in inputs.items():
        if name in FRONTEND_EXTRAS or is_link(value):
            continue
        if name not in saved:
            problems.append(f"{where} has no input {name!r}.{did_you_mean(name, saved)}")
            continue
        kind = _saved_kind(saved[name])
        problem = _widget_problem(kind, value, {}) if kind else None
        if problem:
            problems.append(f"{where}, input {name!r}: {problem}")
    return problems


def link_problems(where: str, inputs: Mapping[str, Any], nodes: Mapping[str, Any]) -> list[str]:
    """Links to nodes the workflow does not have."""
    return [f"{where}, input {name!r}: it links to node {str(value[0])!r}, which is not in the "
            f"workflow.{did_you_mean(value[0], nodes)}"
            for name, value in inputs.items() if is_link(value) and str(value[0]) not in nodes]
