"""Workflows and request bodies: override lines, a JSON cell, suggestions for a misspelt node or
input, and the rules of a serverless request body."""

from __future__ import annotations

import pytest

from runcomfy_nb.clients.serverless_body import build_body
from runcomfy_nb.config import Secret
from runcomfy_nb.errors import ValidationError
from runcomfy_nb.workflow import Workflow, parse_cell, parse_override_lines

SENTINEL = "rc_sentinel_token_0123456789abcdef"
UI_WORKFLOW = {"nodes": [{"id": 1, "type": "KSampler"}], "links": [], "version": 0.4}
API_WORKFLOW = {
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["4", 1]},
          "_meta": {"title": "Positive Prompt"}},
    "31": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}},
}


def test_override_lines() -> None:
    ns = {"style": "neon", "seed": 7}
    parsed = parse_override_lines(
        '# comment\n31.seed = {{seed}}\n6.text = "a {{style}} city"\n31.cfg = 1.5\n31.x = true\n', ns
    )
    assert parsed == {"31": {"inputs": {"seed": 7, "cfg": 1.5, "x": True}},
                      "6": {"inputs": {"text": "a neon city"}}}
    wf = Workflow(API_WORKFLOW)
    assert parse_override_lines('"Positive Prompt".text = "b"\nKSampler.seed = 3', {}, wf) == {
        "6": {"inputs": {"text": "b"}}, "31": {"inputs": {"seed": 3}}}
    # without the workflow at hand names are kept, for the submit to resolve
    assert parse_override_lines('"Positive Prompt".text = "b"', {}) == {
        "Positive Prompt": {"inputs": {"text": "b"}}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("31 seed 42", "not an override"),
        ("31.seed = forty two", "not JSON"),
        ('6.text = "a {{nope}} city"', "{{nope}} is not defined"),
    ],
)
def test_override_line_errors(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("{", r"\{").replace("}", r"\}")):
        parse_override_lines(text, {})


def test_parse_cell_json_and_bad_json() -> None:
    assert parse_cell('{"overrides": {"31": {"inputs": {"seed": "{{s}}"}}}}', {"s": 5}) == (
        "json", {"overrides": {"31": {"inputs": {"seed": 5}}}})
    with pytest.raises(ValidationError, match="does not parse"):
        parse_cell('{"overrides": ', {})


def test_body_rules() -> None:
    # a node id given as a number is fixed to the string key the API needs
    assert build_body({31: {"inputs": {"seed": 1}}, 6: {"text": "x"}}) == {
        "overrides": {"31": {"inputs": {"seed": 1}}, "6": {"inputs": {"text": "x"}}}}
    with pytest.raises(ValidationError, match="not both"):
        build_body({"31": {"inputs": {"seed": 1}}}, workflow=API_WORKFLOW)
    with pytest.raises(ValidationError, match=r"Export \(API\)"):
        build_body(workflow=UI_WORKFLOW)
    body = build_body({}, comfy_api_key=Secret(SENTINEL))
    assert body["extra_data"] == {"api_key_comfy_org": SENTINEL}
    assert build_body(inputs={"prompt": "x"}) == {"prompt": "x"}


def test_workflow_override_suggests() -> None:
    wf = Workflow(API_WORKFLOW)
    assert wf.override(KSampler={"seed": 9}).data["31"]["inputs"]["seed"] == 9
    with pytest.raises(ValidationError, match="Did you mean 'seed'"):
        wf.override({"31": {"sede": 9}})
    with pytest.raises(ValidationError, match="Did you mean 'KSampler'"):
        wf.override(KSamplr={"seed": 9})
    with pytest.raises(ValidationError, match="UI-format"):
        Workflow(UI_WORKFLOW)
