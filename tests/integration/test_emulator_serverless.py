"""The serverless API emulator on real sockets, spoken to with plain httpx (no runcomfy_nb client)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from runcomfy_nb.emulator import Emulator, synth

from ..helpers import wait_for

TOKEN = "emu-test-token-7c1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FLUX, VIDEO, LORA, PARTNER = "dep-flux-kontext", "dep-animate", "dep-lora-portrait", "dep-partner"
SLOW, LIVE = "dep-test-slow", "dep-test-live"  # added by the fixture
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")  # UTC, no offset, microseconds
TERMINAL = {"completed", "cancelled", "succeeded", "failed", "canceled"}
LORA_BODY = {"prompt": "warm cinematic light", "seed": 42, "width": 256, "height": 256,
             "ctrl_img_1": "https://example.org/in.webp", "sampler": "flowmatch"}


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(speed=50, token=TOKEN) as emulator:
        # 1000 virtual s = 20 real s: jobs stay put until the test moves them on (by cancelling)
        emulator.add_deployment({"id": SLOW, "type": "comfyui", "preset": "image", "run_seconds": 1000})
        emulator.add_deployment({"id": LIVE, "type": "comfyui", "preset": "image", "run_seconds": 2,
                                 "status_style": "live", "caption": False})
        yield emulator


@pytest.fixture
def http(emu: Emulator) -> Iterator[httpx.Client]:
    emu.clear_faults()
    with httpx.Client(base_url=f"{emu.url}/prod/v1", headers=AUTH, timeout=10) as client:
        yield client
    emu.clear_faults()


def submit(http: httpx.Client, dep: str, body: Any = None) -> dict[str, Any]:
    reply = http.post(f"/deployments/{dep}/inference", json={"overrides": {}} if body is None else body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def poll(http: httpx.Client, run: dict[str, Any], until: Callable[[dict[str, Any]], bool],
         deadline: float = 10.0) -> list[dict[str, Any]]:
    """Status replies until `until(reply)` holds (the last one satisfies it); fails at the deadline."""
    seen: list[dict[str, Any]] = []

    def matched() -> bool:
        reply = http.get(run["status_url"])
        assert reply.status_code == 200, reply.text
        seen.append(reply.json())
        return until(seen[-1])

    wait_for(matched, deadline, "a matching status")
    return seen


def finish(http: httpx.Client, run: dict[str, Any]) -> dict[str, Any]:
    poll(http, run, lambda s: s["status"] in TERMINAL)
    return http.get(run["result_url"]).json()


def image_urls(result: dict[str, Any]) -> list[str]:
    return [item["url"] for node in result["outputs"].values() for item in node.get("images", [])]


# --- auth and lookups ------------------------------------------------------------------------


def test_bearer_token_is_checked_everywhere(emu: Emulator, http: httpx.Client) -> None:
    run = submit(http, FLUX)
    calls = [("POST", f"{emu.url}/prod/v1/deployments/{FLUX}/inference"),
             ("GET", run["status_url"]), ("GET", run["result_url"]), ("POST", run["cancel_url"]),
             ("POST", f"{emu.url}/prod/v2/deployments/{FLUX}/inference")]
    for method, url in calls:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            reply = httpx.request(method, url, headers=headers, json={"overrides": {}})
            assert reply.status_code == 401, (method, url, headers)
            assert reply.json()["error_code"] == 401001 and reply.json()["error_message"]
    denied = [r for r in emu.log if r.status == 401]
    assert denied and {r.has_authorization for r in denied} == {False, True}
    # the control endpoints need no token
    assert httpx.get(f"{emu.url}/_emulator/log").status_code == 200


def test_unknown_deployment_and_request_are_404(emu: Emulator, http: httpx.Client) -> None:
    reply = http.post("/deployments/dep-nope/inference", json={"overrides": {}})
    assert reply.status_code == 404
    assert reply.json() == {"error_code": 404001, "error_message": "Deployment not found"}
    assert http.get("/deployments/dep-nope/requests/x/status").json()["error_message"] == \
        "Deployment not found"
    run = submit(http, FLUX)
    for path in (f"/deployments/{FLUX}/requests/no-such-id/status",
                 f"/deployments/{FLUX}/requests/no-such-id/result",
                 f"/deployments/{VIDEO}/requests/{run['request_id']}/status",  # another deployment's
                 f"/deployments/{VIDEO}/requests/{run['request_id']}/result"):
        reply = http.get(path)
        assert reply.status_code == 404, path
        assert reply.json() == {"error_code": 404001, "error_message": "Request not found"}
    assert http.post(f"/deployments/{VIDEO}/requests/{run['request_id']}/cancel").status_code == 404


# --- the lifecycle ---------------------------------------------------------------------------


def test_submit_status_result_and_files(emu: Emulator, http: httpx.Client) -> None:
    run = submit(http, FLUX, {"overrides": {"31": {"inputs": {"seed": 7}},
                                            "6": {"inputs": {"text": "a red fox"}}}})
    base = f"{emu.url}/prod/v1/deployments/{FLUX}/requests/{run['request_id']}"
    assert run == {"request_id": run["request_id"], "status_url": f"{base}/status",
                   "result_url": f"{base}/result", "cancel_url": f"{base}/cancel"}
    seen = poll(http, run, lambda s: s["status"] == "completed")
    order = ["in_queue", "in_progress", "completed"]
    states = [s["status"] for s in seen]
    assert states == sorted(states, key=order.index)  # never backwards
    assert set(seen[-1]) >= {"request_id", "status", "status_url", "result_url", "instance_id"}
    assert "queue_position" not in seen[-1]
    result = http.get(run["result_url"]).json()
    assert result["status"] == "succeeded" and result["request_id"] == run["request_id"]
    assert TIMESTAMP.match(result["created_at"]) and TIMESTAMP.match(result["finished_at"])
    assert result["finished_at"] >= result["created_at"]
    assert re.fullmatch(r"i-[0-9a-f]{6}", result["instance_id"])
    images = result["outputs"]["9"]["images"]
    assert [i["filename"] for i in images] == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]
    assert all(i["subfolder"] == "" and i["type"] == "output" for i in images)
    assert result["outputs"]["38:42"] == {"text": [["a caption of: a red fox"]]}
    (remote,) = [r for r in emu.requests_for(FLUX) if r.id == run["request_id"]]
    assert remote.status == "succeeded" and remote.finished_wall and remote.finished_wall >= remote.created
    for image in images:
        assert image["url"].startswith(f"{emu.url}/storage/output/{run['request_id']}/")
        reply = httpx.get(image["url"])
        assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
        assert int(reply.headers["content-length"]) == len(reply.content)
        assert Image.open(io.BytesIO(reply.content)).size == (512, 512)


def test_v2_prefix_and_host_are_echoed(emu: Emulator) -> None:
    via_localhost = emu.url.replace("127.0.0.1", "localhost")
    with httpx.Client(base_url=f"{via_localhost}/prod/v2", headers=AUTH) as http:
        run = submit(http, FLUX)
        assert run["status_url"].startswith(f"{via_localhost}/prod/v2/deployments/{FLUX}/requests/")
        assert run["cancel_url"].endswith("/cancel")
        result = finish(http, run)
        assert all(url.startswith(f"{via_localhost}/storage/output/") for url in image_urls(result))


def test_queue_positions_instances_and_cancel(emu: Emulator, http: httpx.Client) -> None:
    first, second, third = (submit(http, SLOW) for _ in range(3))
    running = poll(http, first, lambda s: s["status"] == "in_progress")[-1]
    assert re.fullmatch(r"i-[0-9a-f]{6}", running["instance_id"]) and "queue_position" not in running
    queued = [http.get(run["status_url"]).json() for run in (second, third)]
    assert [(s["status"], s["queue_position"]) for s in queued] == [("in_queue", 0), ("in_queue", 1)]
    assert not any("instance_id" in s for s in queued)
    # a queued job cancels; the one behind moves up
    reply = http.post(second["cancel_url"])
    assert reply.status_code == 202
    assert reply.json() == {"request_id": second["request_id"], "status": "completed",
                            "outcome": "cancelled"}
    assert http.get(second["status_url"]).json()["status"] == "cancelled"
    assert http.get(third["status_url"]).json()["queue_position"] == 0
    # a running ComfyUI job cancels too; its instance takes the next job
    assert http.post(first["cancel_url"]).json()["outcome"] == "cancelled"
    started = poll(http, third, lambda s: s["status"] == "in_progress")[-1]
    assert started["instance_id"] == running["instance_id"]
    assert http.post(third["cancel_url"]).json()["outcome"] == "cancelled"
    for run in (first, second, third):
        result = http.get(run["result_url"]).json()
        assert result["status"] == "cancelled" and TIMESTAMP.match(result["finished_at"])
        assert "outputs" not in result
    # a finished job does not
    done = submit(http, FLUX)
    finish(http, done)
    assert http.post(done["cancel_url"]).json()["outcome"] == "not_cancellable"
    assert http.get(done["result_url"]).json()["status"] == "succeeded"


def test_queued_and_running_results_carry_no_outputs(emu: Emulator, http: httpx.Client) -> None:
    emu.set_fault(FLUX, "slow_queue", seconds=1000)
    queued = submit(http, FLUX)
    reply = http.get(queued["result_url"]).json()
    assert set(reply) == {"request_id", "status", "created_at"} and reply["status"] == "in_queue"
    running = submit(http, SLOW)
    poll(http, running, lambda s: s["status"] == "in_progress")
    reply = http.get(running["result_url"]).json()
    assert set(reply) == {"request_id", "status", "created_at"} and reply["status"] == "in_progress"
    for run in (queued, running):
        http.post(run["cancel_url"])


def test_several_instances_run_side_by_side(emu: Emulator, http: httpx.Client) -> None:
    emu.add_deployment({"id": "dep-test-pair", "preset": "image", "run_seconds": 1000, "instances": 2})
    runs = [submit(http, "dep-test-pair") for _ in range(3)]
    for run in runs[:2]:
        poll(http, run, lambda s: s["status"] == "in_progress")
    assert http.get(runs[2]["status_url"]).json()["queue_position"] == 0
    ids = {http.get(run["status_url"]).json()["instance_id"] for run in runs[:2]}
    assert len(ids) == 2
    for run in runs:
        http.post(run["cancel_url"])


# --- synthetic media -------------------------------------------------------------------------


def _first_image(http: httpx.Client, overrides: dict[str, Any]) -> bytes:
    return httpx.get(image_urls(finish(http, submit(http, FLUX, {"overrides": overrides})))[0]).content


def test_images_depend_only_on_seed_prompt_and_size(emu: Emulator, http: httpx.Client) -> None:
    fox = {"31": {"inputs": {"seed": 11}}, "6": {"inputs": {"text": "a red fox"}}}
    one, again = _first_image(http, fox), _first_image(http, fox)
    assert one == again
    assert _first_image(http, {**fox, "31": {"inputs": {"seed": 12}}}) != one
    assert _first_image(http, {**fox, "6": {"inputs": {"text": "a blue fox"}}}) != one
    inline = emu.saved_workflow(FLUX)
    inline["31"]["inputs"]["seed"], inline["6"]["inputs"]["text"] = 11, "a red fox"
    run = submit(http, FLUX, {"workflow_api_json": inline})
    assert httpx.get(image_urls(finish(http, run))[0]).content == one  # the inline workflow ran
    assert synth.image(1, "x", 64, 64, 0) != synth.image(1, "x", 64, 64, 1)


def test_size_and_batch_follow_the_latent_node(emu: Emulator, http: httpx.Client) -> None:
    result = finish(http, submit(http, FLUX, {"overrides": {
        "5": {"inputs": {"width": 320, "height": 192, "batch_size": 9}}}}))
    urls = image_urls(result)
    assert len(urls) == 4  # capped
    assert Image.open(io.BytesIO(httpx.get(urls[3]).content)).size == (320, 192)


def test_video_deployment_returns_an_h264_mp4_as_vhs_writes(emu: Emulator, http: httpx.Client) -> None:
    result = finish(http, submit(http, VIDEO))
    (node,) = result["outputs"].values()
    (item,) = node["gifs"]
    assert item["filename"].endswith(".mp4") and item["type"] == "output"
    assert item["format"] == "video/h264-mp4"
    reply = httpx.get(item["url"])
    assert reply.headers["content-type"] == "video/mp4" and reply.content[4:8] == b"ftyp"


def test_output_files_refuse_credentials(emu: Emulator, http: httpx.Client) -> None:
    url = image_urls(finish(http, submit(http, FLUX)))[0]
    before = len(emu.leaks)
    assert httpx.get(url, headers=AUTH).status_code == 403
    assert httpx.get(url, headers={"X-API-Key": "k"}).status_code == 403
    path = httpx.URL(url).path
    assert emu.leaks[before:] == [path, path]
    assert [r.has_authorization for r in emu.log if r.path == path][:1] == [True]
    assert httpx.get(url).status_code == 200
    assert httpx.get(url.replace("ComfyUI_00001_", "nope")).status_code == 404


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "loc", "says"), [
    ([1, 2], ["body"], "JSON object"),
    ({}, ["body", "overrides"], "overrides"),
    ({"extra_data": {"api_key_comfy_org": "k"}}, ["body", "overrides"], "overrides"),
    ({"overrides": {}, "workflow_api_json": {"1": {"class_type": "X", "inputs": {}}}},
     ["body", "overrides"], "omit overrides"),
    ({"overrides": [1]}, ["body", "overrides"], "object"),
    ({"overrides": {"99": {"inputs": {"seed": 1}}}}, ["body", "overrides", "99"], "99"),
    ({"overrides": {"31": {"seed": 1}}}, ["body", "overrides", "31", "inputs"], "inputs"),
    ({"overrides": {"31": {"inputs": {"sede": 1}}}}, ["body", "overrides", "31", "inputs", "sede"],
     "sede"),
    ({"overrides": {"31": {"inputs": {"seed": "1"}}}}, ["body", "overrides", "31", "inputs", "seed"],
     "integer"),
    ({"overrides": {"31": {"inputs": {"seed": True}}}}, ["body", "overrides", "31", "inputs", "seed"],
     "boolean"),
    ({"overrides": {"6": {"inputs": {"text": 5}}}}, ["body", "overrides", "6", "inputs", "text"],
     "string"),
    ({"workflow_api_json": {"nodes": [], "links": []}}, ["body", "workflow_api_json"], "UI format"),
    ({"workflow_api_json": {"3": {"inputs": {}}}}, ["body", "workflow_api_json", "3"], "class_type"),
])
def test_comfyui_bodies_are_validated(http: httpx.Client, emu: Emulator, body: Any, loc: list[str],
                                      says: str) -> None:
    before = len(emu.requests_for(FLUX))
    reply = http.post(f"/deployments/{FLUX}/inference", json=body)
    assert reply.status_code == 422, reply.text
    payload = reply.json()
    assert payload["error_code"] == 422001 and says in payload["error_message"]
    assert payload["detail"][0]["loc"] == loc
    assert {"msg", "type"} <= set(payload["detail"][0])
    assert len(emu.requests_for(FLUX)) == before


def test_invalid_json_and_lenient_numbers(http: httpx.Client) -> None:
    reply = http.post(f"/deployments/{FLUX}/inference", content=b"{nope",
                      headers={"Content-Type": "application/json"})
    assert reply.status_code == 422 and reply.json()["error_code"] == 422001
    # int and float are both numbers; a linked input may take a value; extra_data rides along
    ok = {"overrides": {"31": {"inputs": {"cfg": 3, "denoise": 1, "steps": 20.0}}},
          "extra_data": {"api_key_comfy_org": "k"}}
    assert http.post(f"/deployments/{FLUX}/inference", json=ok).status_code == 200


def test_partner_nodes_need_the_comfy_key(http: httpx.Client) -> None:
    failed = finish(http, submit(http, PARTNER))
    assert failed["status"] == "failed" and failed["error"]["type"] == "execution_error"
    assert "api_key_comfy_org" in failed["error"]["message"]
    assert TIMESTAMP.match(failed["finished_at"]) and "outputs" not in failed
    keyed = finish(http, submit(http, PARTNER, {"overrides": {}, "extra_data": {"api_key_comfy_org": "k"}}))
    assert keyed["status"] == "succeeded" and image_urls(keyed)


@pytest.mark.parametrize(("change", "field", "says"), [
    ({"prompt": None}, "prompt", "required"),
    ({"steps": 3}, "steps", "Unknown field"),
    ({"width": "512"}, "width", "integer"),
    ({"seed": 1.5}, "seed", "integer"),
    ({"guidance_scale": True}, "guidance_scale", "number"),
    ({"sampler": "ddim"}, "sampler", "one of"),
    ({"width": 4096}, "width", "between"),
    ({"sample_steps": 0}, "sample_steps", "between"),
    ({"ctrl_img_1": "http://example.org/in.png"}, "ctrl_img_1", "https"),
])
def test_lora_schema_is_validated(http: httpx.Client, change: dict[str, Any], field: str,
                                  says: str) -> None:
    body = {k: v for k, v in {**LORA_BODY, **change}.items() if v is not None}
    reply = http.post(f"/deployments/{LORA}/inference", json=body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error_code"] == 422001 and says in reply.json()["error_message"]
    assert reply.json()["detail"][0]["loc"] == ["body", field]


def test_lora_success_shape_and_cancel_rules(emu: Emulator, http: httpx.Client) -> None:
    result = finish(http, submit(http, LORA, LORA_BODY))
    assert result["status"] == "succeeded" and "outputs" not in result
    urls = result["output"]["images"]
    assert len(urls) == 2 and all(isinstance(u, str) for u in urls)
    pictures = [Image.open(io.BytesIO(httpx.get(u).content)) for u in urls]
    assert [p.size for p in pictures] == [(256, 256)] * 2
    assert finish(http, submit(http, LORA, {"prompt": "minimal"}))["status"] == "succeeded"
    # running: not cancellable (and it finishes); queued: cancellable
    emu.add_deployment({**emu.deployment_config(LORA), "id": "dep-test-lora-slow", "run_seconds": 40})
    running = submit(http, "dep-test-lora-slow", LORA_BODY)
    poll(http, running, lambda s: s["status"] == "in_progress")
    assert http.post(running["cancel_url"]).json()["outcome"] == "not_cancellable"
    queued = submit(http, "dep-test-lora-slow", LORA_BODY)
    assert http.post(queued["cancel_url"]).json()["outcome"] == "cancelled"
    assert http.get(queued["status_url"]).json()["status"] == "cancelled"
    assert finish(http, running)["status"] == "succeeded"


# --- status styles ----------------------------------------------------------------------------


def test_live_status_style(emu: Emulator, http: httpx.Client) -> None:
    done = submit(http, LIVE)
    assert poll(http, done, lambda s: s["status"] in TERMINAL)[-1]["status"] == "succeeded"
    assert http.get(done["result_url"]).json()["status"] == "succeeded"
    assert http.post(done["cancel_url"]).json() == {"request_id": done["request_id"],
                                                    "status": "not_cancellable"}
    emu.set_fault(LIVE, "job_fails")
    assert poll(http, submit(http, LIVE), lambda s: s["status"] in TERMINAL)[-1]["status"] == "failed"
    emu.set_fault(LIVE, "slow_queue", seconds=1000)
    queued = submit(http, LIVE)
    reply = http.post(queued["cancel_url"])
    assert reply.status_code == 202
    assert reply.json() == {"request_id": queued["request_id"], "status": "cancellation_requested"}
    assert poll(http, queued, lambda s: s["status"] in TERMINAL)[-1]["status"] == "canceled"
    result = http.get(queued["result_url"]).json()
    assert result["status"] == "canceled" and TIMESTAMP.match(result["finished_at"])


# --- faults -----------------------------------------------------------------------------------


def test_rate_limit_is_not_processed(emu: Emulator, http: httpx.Client) -> None:
    emu.set_fault(FLUX, "rate_limit", count=2, retry_after=3)
    before = len(emu.requests_for(FLUX))
    for _ in range(2):
        reply = http.post(f"/deployments/{FLUX}/inference", json={"overrides": {}})
        assert reply.status_code == 429 and reply.headers["Retry-After"] == "3"
        assert reply.json() == {"error_code": 429001, "error_message": "Too many requests"}
    assert len(emu.requests_for(FLUX)) == before
    assert submit(http, FLUX)["request_id"]  # the count is used up
    assert len(emu.requests_for(FLUX)) == before + 1


def test_server_http_and_body_errors(emu: Emulator, http: httpx.Client) -> None:
    run = submit(http, FLUX)
    emu.set_fault(FLUX, "server_error", on="status")
    reply = http.get(run["status_url"])
    assert reply.status_code == 500
    assert reply.json() == {"error_code": 500001, "error_message": "Internal server error"}
    assert http.get(run["status_url"]).status_code == 200
    before = len(emu.requests_for(FLUX))
    emu.set_fault(FLUX, "http_error", status=402, error_code=402001, message="Insufficient balance")
    reply = http.post(f"/deployments/{FLUX}/inference", json={"overrides": {}})
    assert reply.status_code == 402
    assert reply.json() == {"error_code": 402001, "error_message": "Insufficient balance"}
    emu.set_fault(FLUX, "body_error")
    reply = http.post(f"/deployments/{FLUX}/inference", json={"overrides": {}})
    assert reply.status_code == 200
    assert reply.json() == {"error_code": 10001,
                            "error_message": "InsufficientFunds: deployment disabled by balance"}
    assert len(emu.requests_for(FLUX)) == before


def test_faults_match_deployment_operation_and_count(emu: Emulator, http: httpx.Client) -> None:
    run = submit(http, FLUX)
    emu.set_fault(VIDEO, "server_error", count=-1)  # another deployment: no effect here
    emu.set_fault("*", "rate_limit", count=-1, on="result")
    assert http.get(run["status_url"]).status_code == 200
    for _ in range(3):
        assert http.get(run["result_url"]).status_code == 429
    assert http.post(f"/deployments/{VIDEO}/inference", json={"overrides": {}}).status_code == 500
    emu.clear_faults()
    assert http.get(run["result_url"]).status_code == 200
    with pytest.raises(ValueError, match="unknown fault"):
        emu.set_fault(FLUX, "gremlins")
    with pytest.raises(ValueError, match="operation"):
        emu.set_fault(FLUX, "rate_limit", on="sometimes")
    with pytest.raises(ValueError, match="count"):
        emu.set_fault(FLUX, "rate_limit", count=0)


def test_drop_takes_the_job_but_sends_no_answer(emu: Emulator, http: httpx.Client) -> None:
    before = len(emu.requests_for(FLUX))
    emu.set_fault(FLUX, "drop")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        http.post(f"/deployments/{FLUX}/inference", json={"overrides": {}})
    assert len(emu.requests_for(FLUX)) == before + 1  # the server took it
    run = submit(http, FLUX)
    emu.set_fault(FLUX, "drop", on="status")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        http.get(run["status_url"])
    assert http.get(run["status_url"]).status_code == 200


def test_delay_outlasts_a_short_timeout_after_taking_the_job(emu: Emulator, http: httpx.Client) -> None:
    before = len(emu.requests_for(FLUX))
    emu.set_fault(FLUX, "delay", seconds=1.0)
    with pytest.raises(httpx.ReadTimeout):
        http.post(f"/deployments/{FLUX}/inference", json={"overrides": {}}, timeout=0.2)
    assert len(emu.requests_for(FLUX)) == before + 1


def test_a_refused_submit_is_answered_and_uses_up_a_late_fault(emu: Emulator, http: httpx.Client) -> None:
    emu.set_fault(FLUX, "drop")  # acts only once a job was taken: a refused body is answered
    reply = http.post(f"/deployments/{FLUX}/inference", content=b"{not json")
    assert reply.status_code == 422 and reply.json()["error_code"] == 422001
    assert not [f for f in emu.state.faults.armed() if f.deployment == FLUX]
    submit(http, FLUX)  # the drop was used up by the refused submit


def test_unknown_deployment_is_answered_before_faults(emu: Emulator, http: httpx.Client) -> None:
    emu.set_fault("*", "server_error", on="status")
    assert http.get("/deployments/dep-nope/requests/x/status").status_code == 404
    assert http.get(f"/deployments/{FLUX}/requests/x/status").status_code == 500  # still armed


def test_get_routes_answer_head(emu: Emulator, http: httpx.Client) -> None:
    run = submit(http, FLUX)
    for url in (run["status_url"], f"{emu.url}/prod/v2/deployments", f"{emu.url}/v1/models"):
        got, head = http.get(url), http.head(url)
        assert head.status_code == got.status_code == 200 and head.content == b""
        assert head.headers["Content-Type"] == got.headers["Content-Type"]
    assert http.put(run["status_url"]).status_code == 405


def test_job_fails_and_slow_queue(emu: Emulator, http: httpx.Client) -> None:
    emu.set_fault(FLUX, "job_fails")
    failed = finish(http, submit(http, FLUX))
    assert failed["status"] == "failed"
    assert failed["error"] == {"type": "execution_error",
                               "message": "CUDA out of memory. Tried to allocate 2.00 GiB"}
    emu.set_fault(FLUX, "job_fails", message="boom")
    assert finish(http, submit(http, FLUX))["error"]["message"] == "boom"
    assert finish(http, submit(http, FLUX))["status"] == "succeeded"  # used up
    emu.set_fault(FLUX, "slow_queue", seconds=1000)
    stuck = submit(http, FLUX)
    passing = finish(http, submit(http, FLUX))  # a later job is not held up
    assert passing["status"] == "succeeded"
    status = http.get(stuck["status_url"]).json()
    assert status["status"] == "in_queue" and status["queue_position"] == 0
    http.post(stuck["cancel_url"])


def test_truncated_download(emu: Emulator, http: httpx.Client) -> None:
    url = image_urls(finish(http, submit(http, FLUX)))[0]
    whole = httpx.get(url).content
    emu.set_fault("*", "truncate")
    with httpx.stream("GET", url) as reply:
        assert int(reply.headers["content-length"]) == len(whole)
        received = b""
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            for chunk in reply.iter_raw():
                received += chunk
    assert len(received) < len(whole)
    assert httpx.get(url).content == whole


def test_control_endpoints_and_config_faults(emu: Emulator, http: httpx.Client) -> None:
    control = f"{emu.url}/_emulator/faults"
    arm = {"deployment": FLUX, "fault": "http_error", "status": 503, "error_code": 503001,
           "message": "busy", "count": 1, "on": "submit"}
    assert httpx.post(control, json=arm).status_code == 200
    assert [f["name"] for f in httpx.get(control).json()] == ["http_error"]
    assert http.post(f"/deployments/{FLUX}/inference", json={"overrides": {}}).status_code == 503
    assert httpx.post(control, json={"fault": "gremlins"}).status_code == 400
    assert httpx.post(control, json={"deployment": FLUX, "fault": "server_error", "count": -1}).is_success
    assert http.post(f"/deployments/{FLUX}/inference", json={"overrides": {}}).status_code == 500
    assert httpx.delete(control).status_code == 200
    assert httpx.get(control).json() == []
    submit(http, FLUX)
    log = httpx.get(f"{emu.url}/_emulator/log").json()
    assert {"method", "path", "query", "has_authorization", "status", "time"} <= set(log[-1])
    http.get(f"/deployments/{FLUX}/requests/x/status", params={"webhook": "https://example.org/h"})
    assert emu.log[-1].query == {"webhook": "https://example.org/h"} and emu.log[-1].status == 404
    emu.add_deployment({"id": "dep-test-faulty", "preset": "image", "run_seconds": 1,
                        "faults": [{"fault": "rate_limit", "count": 1, "retry_after": 5}]})
    reply = http.post("/deployments/dep-test-faulty/inference", json={"overrides": {}})
    assert reply.status_code == 429 and reply.headers["Retry-After"] == "5"
    assert finish(http, submit(http, "dep-test-faulty"))["status"] == "succeeded"


# --- the Emulator object and the command line ---------------------------------------------------


def test_emulator_lifecycle_and_config_file(tmp_path: Path) -> None:
    emulator = Emulator()
    assert re.fullmatch(r"emu-[0-9a-f]{24}", emulator.token)
    config = tmp_path / "deployments.json"
    config.write_text(json.dumps({"deployments": [{"id": "dep-only", "run_seconds": 1}]}))
    with Emulator(speed=50, config=str(config)) as small:
        assert small.url.startswith("http://127.0.0.1:")
        assert small.deployment_ids() == ["dep-only"]
        assert small.start() == small.url
        url = small.url
    small.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/_emulator/log")


def test_command_line(tmp_path: Path) -> None:
    config = tmp_path / "deployments.json"
    config.write_text(json.dumps({"deployments": [{"id": "dep-cli", "run_seconds": 1}]}))
    process = subprocess.Popen([sys.executable, "-m", "runcomfy_nb.emulator", "--port", "0",
                                "--speed", "50", "--token", "T", "--config", str(config)],
                               stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert re.fullmatch(r"runcomfy emulator listening on http://127\.0\.0\.1:\d+\n", line)
        url = line.rsplit(" ", 1)[-1].strip()
        with httpx.Client(base_url=f"{url}/prod/v1", headers={"Authorization": "Bearer T"}) as http:
            assert finish(http, submit(http, "dep-cli"))["status"] == "succeeded"
    finally:
        process.terminate()
        process.wait(10)
