"""ComfyUI's prompt validation (execution.validate_prompt of 0.3.64): the same errors, in the same order."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from .nodes import CUSTOM_VALIDATION

# a node's result: (valid, its errors, its id)
Result = tuple[bool, list[dict[str, Any]], str]
CONVERSIONS: dict[str, Callable[[Any], Any]] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def error_info(kind: str, message: str, details: str, **extra_info: Any) -> dict[str, Any]:
    """One error as ComfyUI reports it: type, message, details, extra_info."""
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info}


def full_type_name(exc: BaseException) -> str:
    klass = type(exc)
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def _types_match(received: Any, expected: Any) -> bool:
    """validate_node_input: exact, `*`, or comma-separated unions."""
    if not isinstance(received, str) or not isinstance(expected, str):
        return received == expected
    if received == expected or "*" in (received, expected):
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


def validate(schemas: dict[str, Any], prompt: dict[str, Any], partial: list[str] | None,
             exists: Callable[[str], bool]) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
    """(valid, error, the outputs to run, node_errors) of a prompt; `exists(name)` says whether an
    input image is there (LoadImage's own check)."""
    outputs, refusal = _outputs(schemas, prompt, partial)
    if refusal is not None:
        return False, refusal, [], {}
    check = _Validation(schemas, prompt, exists)
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    for o in outputs:
        valid, reasons = check.output(o)
        if valid is True:
            good.append(o)
            continue
        # only the output's own reasons reach `details`; upstream ones are in node_errors
        failed.append((o, reasons))
        for node_id, result in check.validated.items():
            if result[0] is not True and len(result[1]) > 0:
                if node_id not in node_errors:
                    node_errors[node_id] = {"errors": result[1], "dependent_outputs": [],
                                            "class_type": prompt[node_id]["class_type"]}
                node_errors[node_id]["dependent_outputs"].append(o)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, errors in failed for e in errors)
        return False, error_info("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                 details), [], node_errors
    return True, None, good, node_errors


def _outputs(schemas: dict[str, Any], prompt: dict[str, Any],
             partial: list[str] | None) -> tuple[list[str], dict[str, Any] | None]:
    """The output nodes to validate, or the error that refuses the prompt before any node is checked."""
    outputs: list[str] = []
    for x in prompt:
        if "class_type" not in prompt[x]:  # a TypeError here is the server's 500
            return [], error_info("invalid_prompt", "Cannot execute because a node is missing the "
                                  "class_type property.", f"Node ID '#{x}'")
        class_type = prompt[x]["class_type"]
        schema = schemas.get(class_type)
        if schema is None:
            return [], error_info("invalid_prompt", f"Cannot execute because node {class_type} does "
                                  "not exist.", f"Node ID '#{x}'")
        if schema["output_node"] and (partial is None or x in partial) and x not in outputs:
            outputs.append(x)
    if not outputs:
        return [], error_info("prompt_no_outputs", "Prompt has no outputs", "")
    return outputs, None


class _Validation:
    """validate_inputs over one prompt, each node's result kept in `validated`."""

    def __init__(self, schemas: dict[str, Any], prompt: dict[str, Any],
                 exists: Callable[[str], bool]) -> None:
        self.schemas, self.prompt, self.exists = schemas, prompt, exists
        self.validated: dict[str, Result] = {}

    def output(self, o: str) -> tuple[bool, list[dict[str, Any]]]:
        try:
            valid, reasons, _ = self.node(o)
        except Exception as ex:
            valid = False
            reasons = [error_info("exception_during_validation", "Exception when validating node", str(ex),
                                  exception_type=full_type_name(ex),
                                  traceback=traceback.format_tb(ex.__traceback__))]
            self.validated[o] = (False, reasons, o)
        return valid, reasons

    def node(self, unique_id: str) -> Result:
        if unique_id in self.validated:
            return self.validated[unique_id]
        inputs = self.prompt[unique_id]["inputs"]
        class_type = self.prompt[unique_id]["class_type"]
        class_inputs = self.schemas[class_type]["input"]
        custom = CUSTOM_VALIDATION.get(class_type, set())
        errors: list[dict[str, Any]] = []
        valid = True
        for category in ("required", "optional"):
            for x, spec in class_inputs.get(category, {}).items():
                if x not in inputs:
                    if category == "required":
                        errors.append(error_info("required_input_missing", "Required input is missing",
                                                 f"{x}", input_name=x))
                    continue
                problem, upstream_valid = self._input(inputs, x, spec, custom)
                valid = valid and upstream_valid
                if problem is not None:
                    errors.append(problem)
        for x in sorted(custom):  # LoadImage.VALIDATE_INPUTS
            if x in inputs and not isinstance(inputs[x], list) and not self.exists(str(inputs[x])):
                errors.append(error_info("custom_validation_failed", "Custom validation failed for node",
                                         f"{x} - Invalid image file: {inputs[x]}", input_name=x))
        result = (False, errors, unique_id) if errors or valid is not True else (True, [], unique_id)
        self.validated[unique_id] = result
        return result

    def _input(self, inputs: dict[str, Any], x: str, spec: list[Any],
               custom: set[str]) -> tuple[dict[str, Any] | None, bool]:
        """The error of one given input (or None), and whether what it links to is valid."""
        input_type, extra = spec[0], (spec[1] if len(spec) > 1 else {})
        val = inputs[x]
        info = [input_type, extra]
        if isinstance(val, list):
            return self._link(x, val, input_type, info)
        try:
            if isinstance(val, dict) and "__value__" in val:
                val = inputs[x] = val["__value__"]
            if isinstance(input_type, str) and input_type in CONVERSIONS:
                val = inputs[x] = CONVERSIONS[input_type](val)
        except Exception as ex:
            return error_info("invalid_input_type", f"Failed to convert an input value to a {input_type} "
                              "value", f"{x}, {val}, {ex}", input_name=x, input_config=info,
                              received_value=val, exception_message=str(ex)), True
        if x in custom:
            return None, True
        return _value_error(x, val, input_type, extra, info), True

    def _link(self, x: str, val: list[Any], input_type: Any,
              info: list[Any]) -> tuple[dict[str, Any] | None, bool]:
        """A linked input: its shape and type, then the node it links to (validated in turn)."""
        if len(val) != 2:
            return error_info("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, "
                              "slot_index]", f"{x}", input_name=x, input_config=info,
                              received_value=val), True
        o_id = val[0]
        received_type = self.schemas[self.prompt[o_id]["class_type"]]["output"][val[1]]
        if not _types_match(received_type, input_type):
            return error_info("return_type_mismatch", "Return type mismatch between linked nodes",
                              f"{x}, received_type({received_type}) mismatch input_type({input_type})",
                              input_name=x, input_config=info, received_type=received_type,
                              linked_node=val), True
        try:
            return None, self.node(o_id)[0] is not False
        except Exception as ex:
            self.validated[o_id] = (False, [error_info(
                "exception_during_inner_validation", "Exception when validating inner node",
                str(ex), input_name=x, input_config=info, exception_message=str(ex),
                exception_type=full_type_name(ex),
                traceback=traceback.format_tb(ex.__traceback__), linked_node=val)], o_id)
            return None, False


def _value_error(x: str, val: Any, input_type: Any, extra: dict[str, Any],
                 info: list[Any]) -> dict[str, Any] | None:
    """The min, max or list check a value fails, if any."""
    if "min" in extra and val < extra["min"]:
        return error_info("value_smaller_than_min", f"Value {val} smaller than min of {extra['min']}", f"{x}",
                          input_name=x, input_config=info, received_value=val)
    if "max" in extra and val > extra["max"]:
        return error_info("value_bigger_than_max", f"Value {val} bigger than max of {extra['max']}", f"{x}",
                          input_name=x, input_config=info, received_value=val)
    if isinstance(input_type, list) or input_type == "COMBO":
        options = extra.get("options", []) if input_type == "COMBO" else input_type
        if val not in options:
            config: Any = info
            listing = str(options)
            if len(options) > 20:  # ComfyUI does not echo long lists (model file names)
                listing, config = f"(list of length {len(options)})", None
            return error_info("value_not_in_list", "Value not in list", f"{x}: '{val}' not in {listing}",
                              input_name=x, input_config=config, received_value=val)
    return None
