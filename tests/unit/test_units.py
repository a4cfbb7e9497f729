"""Unit tests of the pieces with no network: config, errors, workflow, media, polling, status."""

from __future__ import annotations

import pickle

import pytest

import runcomfy_nb as rc
from runcomfy_nb.clients.deployments import build_body
from runcomfy_nb.config import Config, Secret
from runcomfy_nb.errors import AuthError, BadRequest, PaymentRequired, RateLimited, ValidationError
from runcomfy_nb.jobs import Status, failure_message, parse_status
from runcomfy_nb.media import classify, media_from_outputs, safe_filename
from runcomfy_nb.polling import DurationModel, PollPlan
from runcomfy_nb.timefmt import parse_timestamp
from runcomfy_nb.transport import api_error
from runcomfy_nb.workflow import Workflow, parse_cell, parse_override_lines

SENTINEL = "rc_sentinel_token_0123456789abcdef"
UI_WORKFLOW = {"nodes": [{"id": 1, "type": "KSampler"}], "links": [], "version": 0.4}
API_WORKFLOW = {
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["4", 1]},
          "_meta": {"title": "Positive Prompt"}},
    "31": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}},
}


def test_secret_never_shows_its_value() -> None:
    secret = Secret(SENTINEL)
    assert SENTINEL not in repr(secret) and SENTINEL not in str(secret)
    assert SENTINEL not in repr(Config(token=SENTINEL))
    assert SENTINEL not in str(Config(token=SENTINEL).masked())
    assert secret.get() == SENTINEL
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_token_from_env_and_missing_token_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNCOMFY_TOKEN", raising=False)
    monkeypatch.setenv("RUNCOMFY_API_KEY", SENTINEL)
    monkeypatch.setenv("RUNCOMFY_BASE_URL", "http://127.0.0.1:9/")
    config = Config.from_env()
    assert config.require_token().get() == SENTINEL
    assert config.base_url == "http://127.0.0.1:9"
    monkeypatch.delenv("RUNCOMFY_API_KEY")
    with pytest.raises(rc.MissingCredentials, match="RUNCOMFY_TOKEN"):
        Config.from_env().require_token()
    with pytest.raises(rc.MissingCredentials, match="RUNCOMFY_TOKEN"):
        rc.AsyncRunComfy().deployments  # noqa: B018  (raised before any request)


def test_lazy_import_keeps_heavy_modules_out() -> None:
    import subprocess
    import sys

    code = ("import sys, runcomfy_nb; heavy = {'httpx', 'PIL', 'aiohttp', 'ipywidgets', 'anywidget'}"
            " & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_all_resolves() -> None:
    for name in rc.__all__:
        assert getattr(rc, name) is not None, name


@pytest.mark.parametrize(
    ("status", "body", "cls", "words"),
    [
        (401, {"error_code": 401001, "error_message": "Unauthorized"}, AuthError, "RUNCOMFY_TOKEN"),
        (402, {"error_code": 402001, "error_message": "Insufficient"}, PaymentRequired, "Top up"),
        (429, {"error_code": 429001}, RateLimited, "rate limiting"),
        (422, {"error_code": 422001, "error_message": "Invalid body",
               "detail": [{"loc": ["body", "overrides", "31"], "msg": "unknown node"}]},
         BadRequest, "overrides.31: unknown node"),
        (200, {"error_code": 10001, "error_message": "InsufficientFunds"}, PaymentRequired, "Top up"),
        (200, {"error_code": 401001, "error_message": "bad token"}, AuthError, "bad token"),
    ],
)
def test_error_mapping(status: int, body: dict, cls: type, words: str) -> None:
    error = api_error(status, body, {"retry-after": "2"}, "RunComfy")
    assert isinstance(error, cls)
    assert words in str(error)
    assert "\n" not in str(error)


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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("31 seed 42", "not an override"),
        ("31.seed = forty two", "not JSON"),
        ('6.text = "a {{nope}} city"', "{{nope}} is not defined"),
        ("KSampler.seed = 1", "address nodes by id"),
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


def test_media_shapes() -> None:
    outputs = {
        "9": {"images": [{"url": "https://s/o/ComfyUI_00001_.png", "filename": "ComfyUI_00001_.png",
                          "subfolder": "", "type": "output"}]},
        "12": {"gifs": [{"url": "https://s/o/anim.webp", "filename": "anim.webp"}]},
        "38:42": {"text": [["a caption"]]},
    }
    media, text = media_from_outputs(outputs, None)
    assert [(m.kind, m.filename, m.node) for m in media] == [
        ("image", "ComfyUI_00001_.png", "9"), ("video", "anim.webp", "12")]
    assert text == ["a caption"]
    media, _ = media_from_outputs({"images": ["https://s/a.png", "https://s/b.jpg"],
                                   "video": "https://s/c.mp4"}, None)
    assert [m.kind for m in media] == ["image", "image", "video"]
    assert classify("x.webp") == "image" and classify("x.mp4") == "video"
    assert safe_filename("../../etc/passwd") == "passwd"


def test_status_spellings() -> None:
    assert parse_status("IN_QUEUE") is Status.QUEUED
    assert parse_status("canceled") is parse_status("cancelled") is Status.CANCELLED
    assert parse_status("completed") is None
    assert parse_status("completed", completed=Status.SUCCEEDED) is Status.SUCCEEDED
    assert parse_status("mystery") is Status.RUNNING
    assert failure_message([{"errorCode": 500, "error": "boom"}]) == "500: boom"
    assert failure_message({"type": "execution_error", "message": "OOM"}) == "execution_error: OOM"


def test_timestamps() -> None:
    a = parse_timestamp("2025-07-22T13:05:16.143086")
    assert a == parse_timestamp("2025-07-22T13:05:16.143086Z")
    assert a == parse_timestamp("2025-07-22T15:05:16.143086+02:00")
    assert parse_timestamp("2025-07-22T13:05:16.1") == pytest.approx(a - 0.043086)
    assert parse_timestamp("garbage") is None


def test_poll_plan_learns_run_time() -> None:
    model = DurationModel()
    cold = PollPlan(model)
    pauses = [cold.next_pause(0, False) for _ in range(4)]
    assert pauses[0] == 0.5 and pauses == sorted(pauses)  # fast at first, then backing off
    for seconds in (2.4, 3.0, 3.6):
        model.record(seconds)
    warm = PollPlan(model)
    first = warm.next_pause(0.0, False)
    assert first == pytest.approx(2.4 * (1 - 0.35 / 3**0.5) + 0.5)  # few samples: a wider margin
    assert warm.next_pause(first - 0.01, False) == 0.5  # woke a hair early: no second call at once
    assert warm.next_pause(first, False) == 0.5  # then every gap until the slowest would be done
    assert warm.next_pause(5.0, False) == 0.5  # past it: backing off from the start
    queued = PollPlan(model)
    assert queued.next_pause(0.5, True) == 0.5 and queued.next_pause(1, True) == 0.75
