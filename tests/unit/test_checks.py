"""The per-node checks before a submit, with and without the server's node schemas."""

from __future__ import annotations

from typing import Any

import pytest

from runcomfy_nb.checks import input_problem, link_problems, saved_problems, schema_problems
from runcomfy_nb.errors import ValidationError
from runcomfy_nb.workflow import Workflow, check_overrides, check_workflow

SAVE = {"input": {"required": {"images": ["IMAGE", {}],
                               "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
                  "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}}
SAMPLER = {"input": {"required": {
    "model": ["MODEL", {}], "seed": ["INT", {"min": 0, "max": 2**64 - 1}],
    "steps": ["INT", {"min": 1, "max": 10000}], "cfg": ["FLOAT", {"min": 0.0, "max": 100.0}],
    "sampler_name": ["COMBO", {"options": ["euler", "dpmpp_2m"]}]},
    "optional": {"add_noise": ["BOOLEAN", {}]}}}
INFO = {"SaveImage": SAVE, "KSampler": SAMPLER, "Loader": {"input": {"required": {}}}}
WORKFLOW = {
    "4": {"class_type": "Loader", "inputs": {}, "_meta": {"title": "Model"}},
    "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 1, "steps": 20, "cfg": 8,
                                              "sampler_name": "euler"}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"},
          "_meta": {"title": "Save"}},
}


@pytest.mark.parametrize(("value", "spec", "expected"), [
    (7.5, ["INT", {}], "it takes an integer, not float 7.5."),
    (7.0, ["INT", {}], None),  # ComfyUI takes an integral float for an INT
    (True, ["INT", {}], "it takes an integer, not bool True."),
    ("3", ["FLOAT", {}], "it takes a number, not str '3'."),
    (1, ["BOOLEAN", {}], "it takes true or false, not int 1."),
    (0, ["INT", {"min": 1, "max": 9}], "0 is out of range (1 to 9)."),
    ("dpmpp_2", ["COMBO", {"options": ["euler", "dpmpp_2m"]}],
     "'dpmpp_2' is not one of its values ('euler', 'dpmpp_2m'). Did you mean 'dpmpp_2m'?"),
    ("https://x.org/a.png", [["a.png"], {"image_upload": True}], None),
    (["4", 0], ["MODEL", {}], None),
    ("m.safetensors", ["MODEL", {}], "it takes a MODEL connection from another node, not a value."),
])
def test_input_problem(value: Any, spec: Any, expected: str | None) -> None:
    assert input_problem("x", value, spec) == expected


def test_a_link_replaced_by_a_value_names_the_saved_link() -> None:
    assert input_problem("model", "m", ["MODEL", {}], ["4", 0]) == (
        "it takes a MODEL connection from another node (node 4 in the saved workflow), not a value.")


def test_schema_problems_unknown_hidden_extras_and_missing() -> None:
    inputs = {"images": ["3", 0], "filename_prefx": "x", "prompt": {}, "control_after_generate": "fixed"}
    assert schema_problems("Node 9 (Save)", inputs, SAVE, whole=True) == [
        "Node 9 (Save) has no input 'filename_prefx'. Did you mean 'filename_prefix'?",
        "Node 9 (Save), input 'filename_prefix' is required but missing."]
    # an override may set a saved input the schema does not declare (a frontend's extra), not a new one
    assert schema_problems("N", {"extra": 1}, SAVE, saved={"extra": 0}) == []
    assert schema_problems("N", {"filename_prefx": 1}, SAVE, saved={"filename_prefix": "a"}) == [
        "N has no input 'filename_prefx'. Did you mean 'filename_prefix'?"]
    assert schema_problems("N", {"add_noise": True}, SAMPLER) == []  # an optional input


def test_without_schemas_the_saved_values_decide() -> None:
    saved = {"seed": 1, "text": "a", "flag": False, "model": ["4", 0]}
    assert saved_problems("N", {"seed": 7.5, "text": "b", "flag": True, "model": ["5", 0]}, saved) == []
    assert saved_problems("N", {"seed": "7", "text": 3, "flag": 1, "sede": 1}, saved) == [
        "N, input 'seed': it takes a number, not str '7'.", "N, input 'text': it takes text, not int 3.",
        "N, input 'flag': it takes true or false, not int 1.", "N has no input 'sede'. Did you mean 'seed'?"]
    assert link_problems("N", {"model": ["44", 0], "seed": 1}, {"4": {}}) == [
        "N, input 'model': it links to node '44', which is not in the workflow. Did you mean '4'?"]


def test_check_workflow_and_overrides_list_every_problem() -> None:
    wf = Workflow(WORKFLOW)
    check_workflow(wf, INFO)
    check_workflow(wf, None)
    bad = Workflow({**WORKFLOW, "3": {"class_type": "KSampler", "inputs": {
        **WORKFLOW["3"]["inputs"], "seed": 7.5, "sampler_name": "eulr"}}})
    with pytest.raises(ValidationError) as caught:
        check_workflow(bad, INFO)
    assert str(caught.value).splitlines() == [
        "2 problems with the workflow; nothing was sent:",
        "  - Node 3 (KSampler), input 'seed': it takes an integer, not float 7.5.",
        "  - Node 3 (KSampler), input 'sampler_name': 'eulr' is not one of its values ('euler', "
        "'dpmpp_2m'). Did you mean 'euler'?"]
    assert check_overrides(wf, {"Save": {"filename_prefix": "y"}, "KSampler": {"cfg": 7.5}}, INFO) == {
        "9": {"inputs": {"filename_prefix": "y"}}, "3": {"inputs": {"cfg": 7.5}}}
    with pytest.raises(ValidationError, match=r"^Node 3 \(KSampler\), input 'model': it takes a MODEL "
                                              r"connection from another node \(node 4 in the saved"):
        check_overrides(wf, {"3": {"model": "m.safetensors"}}, INFO)
    with pytest.raises(ValidationError, match=r"no input 'sede'\. Did you mean 'seed'\? Nothing was sent"):
        check_overrides(wf, {"3": {"sede": 1}}, None)


def test_an_ambiguous_name_lists_the_candidates() -> None:
    wf = Workflow({**WORKFLOW, "5": {"class_type": "SaveImage", "inputs": {}}})
    with pytest.raises(ValidationError, match=r"'SaveImage' names 2 nodes: 9 \(Save, SaveImage\), "
                                              r"5 \(SaveImage, SaveImage\); use a node id or a title"):
        wf.find("SaveImage")
