"""The emulated Comfy Cloud (emulator/cloud.py) on real sockets: HTTP with httpx, the WebSocket with
`websockets`. One module-wide emulator with a fast virtual clock; each test leaves the account idle."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import websockets
from PIL import Image

from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.cloud import CLOUD_ERRORS, PARTNER_NODE, PARTNER_UNAUTHORIZED

from ..helpers import TOKEN, partner_workflow, until, wait_for
from ..helpers import image_workflow as workflow

KEY = "comfyui-cloud-key-SENTINEL-9d41c7"
HEADERS = {"X-API-Key": KEY}
SPEED = 100.0  # a sampler step (0.5 virtual s) takes 5 ms
LONG = 4000  # steps of a job that runs until it is interrupted
TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(speed=SPEED, token=TOKEN, comfy_api_key=KEY) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def _idle_account(emu: Emulator) -> Iterator[None]:
    """Default settings, no faults; afterwards nothing left queued or running."""
    emu.clear_faults()
    yield
    emu.clear_faults()
    emu.cloud_account(tier="creator", active=True, credits=1000)
    emu.cloud_settings(status_vocabulary="guide", url_seconds=3600)
    httpx.post(f"{api(emu)}/queue", json={"clear": True}, headers=HEADERS)
    httpx.post(f"{api(emu)}/interrupt", headers=HEADERS)
    wait_for(lambda: not unfinished(emu), what="the account to go idle")


def api(emu: Emulator) -> str:
    return f"{emu.cloud_url}/api"


def ws_url(emu: Emulator, client_id: str, token: str | None = KEY) -> str:
    query = f"clientId={client_id}" + (f"&token={token}" if token is not None else "")
    return f"{emu.cloud_url.replace('http://', 'ws://')}/ws?{query}"


def unfinished(emu: Emulator) -> list[dict[str, Any]]:
    reply = httpx.get(f"{api(emu)}/jobs", params={"status": "pending,in_progress"}, headers=HEADERS)
    return reply.json()["jobs"]


def submit(emu: Emulator, prompt: dict[str, Any], key: str = KEY, **body: Any) -> str:
    reply = httpx.post(f"{api(emu)}/prompt", json={"prompt": prompt, **body}, headers={"X-API-Key": key})
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert set(data) == {"prompt_id", "number", "node_errors"} and data["node_errors"] == {}
    return data["prompt_id"]


def job(emu: Emulator, prompt_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{api(emu)}/jobs/{prompt_id}", headers=HEADERS)
    assert reply.status_code == 200, reply.text
    return reply.json()


def status(emu: Emulator, prompt_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{api(emu)}/job/{prompt_id}/status", headers=HEADERS)
    assert reply.status_code == 200, reply.text
    return reply.json()


def finished_job(emu: Emulator, prompt_id: str) -> dict[str, Any]:
    return wait_for(lambda: (body := job(emu, prompt_id))["status"] in TERMINAL and body,
                    what=f"job {prompt_id} to end")


def queue(emu: Emulator) -> tuple[list[str], list[str]]:
    body = httpx.get(f"{api(emu)}/queue", headers=HEADERS).json()
    return [i[1] for i in body["queue_running"]], [i[1] for i in body["queue_pending"]]


def png(color: tuple[int, ...], size: tuple[int, int] = (16, 16), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, "PNG")
    return out.getvalue()


def upload(emu: Emulator, data: bytes, filename: str = "cat.png", path: str = "image",
           **fields: str) -> httpx.Response:
    return httpx.post(f"{api(emu)}/upload/{path}", files={"image": (filename, data, "image/png")},
                      data=fields, headers=HEADERS)


class Listener:
    """Every frame a socket receives, read in the background."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[str | bytes] = []
        self.closed = False
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                self.frames.append(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed = True

    def texts(self, prompt_id: str | None = None) -> list[dict[str, Any]]:
        messages = [json.loads(f) for f in self.frames if isinstance(f, str)]
        return [m for m in messages if prompt_id is None or m["data"].get("prompt_id") == prompt_id]

    def types(self, prompt_id: str | None = None) -> list[str]:
        return [m["type"] for m in self.texts(prompt_id)]

    def binaries(self) -> list[bytes]:
        return [f for f in self.frames if isinstance(f, bytes)]

    async def stop(self) -> None:
        await self.ws.close()
        await self._task

    def ended(self, prompt_id: str) -> bool:
        return any(m["type"] == "executing" and m["data"]["node"] is None for m in self.texts(prompt_id))

    async def until(self, check: Callable[[Listener], Any], timeout: float = 15.0) -> None:
        await until(lambda: check(self) or self.closed, timeout, "the socket's messages")


@asynccontextmanager
async def listen(emu: Emulator, *, flags: bool = False) -> AsyncIterator[Listener]:
    async with websockets.connect(ws_url(emu, uuid.uuid4().hex), max_size=None) as ws:
        if flags:
            await ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        listener = Listener(ws)
        try:
            await listener.until(lambda s: s.types())  # the status on connect
            yield listener
        finally:
            await listener.stop()


# --- auth, account ---------------------------------------------------------------------------------


async def test_auth_on_http_and_websocket(emu: Emulator) -> None:
    routes = [("POST", "prompt"), ("GET", "job/x/status"), ("GET", "jobs/x"), ("GET", "jobs"),
              ("GET", "history_v2/x"), ("POST", "upload/image"), ("POST", "upload/mask"), ("GET", "view"),
              ("GET", "queue"), ("POST", "queue"), ("POST", "interrupt"), ("GET", "object_info"),
              ("GET", "user"), ("GET", "features")]
    for headers in ({}, {"X-API-Key": "comfyui-wrong"}, {"Authorization": f"Bearer {KEY}"}):
        for method, path in routes:
            reply = httpx.request(method, f"{api(emu)}/{path}", headers=headers)
            assert reply.status_code == 401, (method, path, headers)
            assert set(reply.json()) == {"code", "message"} and reply.json()["code"] == "unauthorized"
    stats = httpx.get(f"{api(emu)}/system_stats")
    assert stats.status_code == 200 and stats.json()["devices"][0]["type"] == "cuda"
    assert stats.json()["system"]["comfyui_version"]
    mark = len(emu.log)
    for token in ("comfyui-wrong", None):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url(emu, "c1", token)):
                pass
        assert refused.value.response.status_code == 401
    async with websockets.connect(ws_url(emu, "c1")) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "c1"}}
    sockets = [r for r in emu.log[mark:] if r.path == "/cloud/ws"]
    await until(lambda: [r.status for r in sockets] == [401, 401, 101], what="the sockets logged")
    assert sockets[-1].query == {"clientId": "c1", "token": "<redacted>"}  # the key stays out of the log


def test_user_features_object_info(emu: Emulator) -> None:
    assert httpx.get(f"{api(emu)}/user", headers=HEADERS).json()["status"] == "active"
    features = httpx.get(f"{api(emu)}/features", headers=HEADERS).json()
    assert features == {"supports_preview_metadata": True, "max_upload_size": 50 * 1024 * 1024}
    info = httpx.get(f"{api(emu)}/object_info", headers=HEADERS).json()
    assert {"KSampler", "SaveImage", "LoadImage", "CheckpointLoaderSimple", PARTNER_NODE} <= set(info)
    partner = info[PARTNER_NODE]
    assert partner["display_name"] == "Flux 1.1 [pro] Ultra Image" and partner["api_node"] is True
    assert partner["category"] == "api node/image/BFL" and partner["output"] == ["IMAGE"]
    assert partner["input"]["required"]["prompt"][0] == "STRING"
    assert "flux1-dev-fp8.safetensors" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    one = httpx.get(f"{api(emu)}/object_info/{PARTNER_NODE}", headers=HEADERS).json()
    assert one == {PARTNER_NODE: partner}
    assert httpx.get(f"{api(emu)}/object_info/NoSuchNode", headers=HEADERS).json() == {}
    assert emu.comfy_api_key == KEY and emu.cloud_url == f"{emu.url}/cloud"


def test_inactive_subscription_and_no_credits(emu: Emulator) -> None:
    before = len(httpx.get(f"{api(emu)}/jobs", headers=HEADERS).json()["jobs"])
    assert emu.cloud_account(active=False)["active"] is False
    refused = httpx.post(f"{api(emu)}/prompt", json={"prompt": workflow()}, headers=HEADERS)
    assert refused.status_code == 429 and refused.json()["code"] == "subscription_inactive"
    assert "not paid" in refused.json()["message"]
    assert httpx.get(f"{api(emu)}/user", headers=HEADERS).json()["status"] == "waitlisted"
    emu.cloud_account(active=True, credits=0)
    broke = httpx.post(f"{api(emu)}/prompt", json={"prompt": workflow()}, headers=HEADERS)
    assert broke.status_code == 402 and broke.json()["code"] == "insufficient_credits"
    assert "credits" in broke.json()["message"].lower()
    assert len(httpx.get(f"{api(emu)}/jobs", headers=HEADERS).json()["jobs"]) == before
    emu.cloud_account(credits=5)
    finished_job(emu, submit(emu, workflow()))
    with pytest.raises(ValueError, match="tier"):
        emu.cloud_account(tier="enterprise")
    with pytest.raises(ValueError, match="status_vocabulary"):
        emu.cloud_settings(status_vocabulary="klingon")


def test_submit_validation_errors(emu: Emulator) -> None:
    def post(body: Any, **kw: Any) -> httpx.Response:
        return httpx.post(f"{api(emu)}/prompt", headers=HEADERS, **({"json": body} | kw))

    total = len(httpx.get(f"{api(emu)}/jobs", headers=HEADERS).json()["jobs"])
    bad = workflow()
    bad["31"]["inputs"]["sampler_name"] = "eulr"
    reply = post({"prompt": bad, "number": 5, "front": True})
    assert reply.status_code == 400
    body = reply.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["31"]["errors"][0]["type"] == "value_not_in_list"
    assert body["node_errors"]["31"]["dependent_outputs"] == ["9"]
    unknown = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    assert post({"prompt": unknown}).json()["error"]["type"] == "invalid_prompt"
    assert post({"prompt": ["not", "a", "dict"]}).json()["error"]["type"] == "invalid_prompt"
    assert post({"extra_data": {}}).json() == {
        "error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                  "extra_info": {}}, "node_errors": {}}
    not_json = post(None, content=b"{nope")
    assert not_json.status_code == 400 and set(not_json.json()) == {"code", "message"}
    assert post({"prompt": workflow(), "extra_data": "x"}).status_code == 400
    assert len(httpx.get(f"{api(emu)}/jobs", headers=HEADERS).json()["jobs"]) == total
    # `number` and `front` are ignored: numbers count the account's jobs
    first = httpx.post(f"{api(emu)}/prompt", json={"prompt": workflow(), "number": 99, "front": True},
                       headers=HEADERS).json()
    second = httpx.post(f"{api(emu)}/prompt", json={"prompt": workflow()}, headers=HEADERS).json()
    assert second["number"] == first["number"] + 1 != 99


# --- a run -----------------------------------------------------------------------------------------


async def test_job_end_to_end(emu: Emulator) -> None:
    steps = 4
    client_id = uuid.uuid4().hex
    async with listen(emu) as socket:
        started = time.time()
        prompt_id = submit(emu, workflow(steps=steps), client_id=client_id,
                           extra_data={"api_key_comfy_org": KEY, "extra_pnginfo": {"x": 1}})
        await socket.until(lambda s: s.ended(prompt_id))
    texts = socket.texts()
    types = [m["type"] for m in texts]
    assert types[types.index("notification") + 1] == "execution_start"
    assert texts[types.index("notification")]["data"] == {"value": "Executing workflow..."}
    mine = [m["type"] for m in socket.texts(prompt_id) if m["type"] not in ("progress", "progress_state")]
    assert mine[:2] == ["execution_start", "execution_cached"]
    assert mine[-2:] == ["execution_success", "executing"]
    remaining = [m["data"]["status"]["exec_info"]["queue_remaining"] for m in texts if m["type"] == "status"]
    assert remaining[0] == 0 and 1 in remaining and remaining[-1] == 0
    progress = [m["data"]["value"] for m in texts if m["type"] == "progress"]
    assert progress == list(range(1, steps + 1))
    assert len(socket.binaries()) == steps and struct.unpack(">II", socket.binaries()[0][:8]) == (1, 1)
    executed = next(m["data"] for m in texts if m["type"] == "executed")
    assert executed["node"] == "9" and len(executed["output"]["images"]) == 2

    state = status(emu, prompt_id)
    assert set(state) == {"id", "status", "created_at", "updated_at", "last_state_update",
                          "assigned_inference", "error_message"}
    assert state["id"] == prompt_id and state["status"] == "completed" and state["error_message"] is None
    assert state["assigned_inference"].startswith("inf-") and state["created_at"].endswith("Z")
    body = job(emu, prompt_id)
    assert body["status"] == "completed" and body["outputs"] == {"9": executed["output"]}
    assert body["outputs_count"] == 2 and body["preview_output"] == executed["output"]["images"][0]
    assert body["execution_status"]["status_str"] == "success" and body["execution_status"]["completed"]
    assert int(started) <= body["create_time"] <= body["update_time"] <= time.time()
    assert body["create_time"] * 1000 <= body["execution_start_time"] + 1000
    assert body["execution_start_time"] <= body["execution_end_time"]
    assert "execution_error" not in body

    entry = httpx.get(f"{api(emu)}/history_v2/{prompt_id}", headers=HEADERS).json()[prompt_id]
    assert entry["outputs"] == body["outputs"] and entry["status"]["status_str"] == "success"
    assert entry["prompt"][1] == prompt_id
    assert entry["prompt"][3] == {"extra_pnginfo": {"x": 1}, "client_id": client_id}  # no Comfy API key
    gone = httpx.get(f"{api(emu)}/history/{prompt_id}", headers=HEADERS)
    assert gone.status_code == 404 and set(gone.json()) == {"code", "message"}
    assert httpx.get(f"{api(emu)}/job/nope/status", headers=HEADERS).status_code == 404
    assert httpx.get(f"{api(emu)}/jobs/nope", headers=HEADERS).status_code == 404
    assert httpx.get(f"{api(emu)}/history_v2/nope", headers=HEADERS).json() == {}


async def test_two_jobs_at_once_reach_every_socket(emu: Emulator) -> None:
    steps = 150
    async with listen(emu) as plain, listen(emu, flags=True) as modern:
        await modern.until(lambda s: "feature_flags" in s.types())
        first = submit(emu, workflow(steps=steps), client_id="only-plain")
        second = submit(emu, workflow(steps=steps), client_id="only-modern")
        await until(lambda: sorted(queue(emu)[0]) == sorted([first, second]), what="both jobs running")
        for socket in (plain, modern):
            await socket.until(lambda s: s.ended(first) and s.ended(second))
    assert status(emu, first)["assigned_inference"] != status(emu, second)["assigned_inference"]
    for socket in (plain, modern):
        for prompt_id in (first, second):
            types = socket.types(prompt_id)
            assert "execution_start" in types and "execution_success" in types
            assert types.count("progress") == steps
        counts = [m["data"]["status"]["exec_info"]["queue_remaining"] for m in socket.texts()
                  if m["type"] == "status"]
        assert max(counts) == 2 and counts[-1] == 0
    assert {struct.unpack(">I", f[:4])[0] for f in plain.binaries()} == {1}
    frames = modern.binaries()
    assert len(frames) == 2 * steps and {struct.unpack(">I", f[:4])[0] for f in frames} == {4}
    metadata = [json.loads(f[8:8 + struct.unpack(">I", f[4:8])[0]]) for f in frames]
    assert {m["prompt_id"] for m in metadata} == {first, second}
    assert {m["node_id"] for m in metadata} == {"31"}


async def test_standard_tier_queue_delete_and_status_vocabularies(emu: Emulator) -> None:
    emu.cloud_account(tier="standard")
    async with listen(emu) as socket:
        running = submit(emu, workflow(steps=LONG))
        doomed = submit(emu, workflow())
        kept = submit(emu, workflow())
        await until(lambda: queue(emu) == ([running], [doomed, kept]), what="one running, two waiting")
        listing = httpx.get(f"{api(emu)}/queue", headers=HEADERS).json()
        item = listing["queue_pending"][0]
        assert len(item) == 5 and item[1] == doomed and item[3] == ["9"] and set(item[4]) == {"create_time"}
        assert item[2]["31"]["class_type"] == "KSampler"
        await until(lambda: status(emu, running)["status"] == "in_progress", what="the first job running")
        waiting = status(emu, doomed)
        assert waiting["status"] == "pending" and waiting["assigned_inference"] is None
        emu.cloud_settings(status_vocabulary="newer")
        assert [status(emu, p)["status"] for p in (running, doomed)] == ["executing", "queued_waiting"]
        emu.cloud_settings(status_vocabulary="openapi")
        assert status(emu, doomed)["status"] == "waiting_to_dispatch"
        assert job(emu, doomed)["status"] == "pending"  # /api/jobs keeps its own words
        assert httpx.get(f"{api(emu)}/history_v2/{running}", headers=HEADERS).json() == {}
        await socket.until(lambda s: "progress" in s.types(running))  # in the sampler

        reply = httpx.post(f"{api(emu)}/queue", json={"delete": [doomed, running, "nope"]}, headers=HEADERS)
        assert reply.status_code == 200 and reply.json() == {"deleted": [doomed], "cleared": False}
        assert queue(emu) == ([running], [kept])
        assert status(emu, doomed)["status"] == "cancelled"
        emu.cloud_account(tier="creator")  # room for the waiting job at once
        await socket.until(lambda s: s.ended(kept))
        assert queue(emu) == ([running], [])
        assert httpx.post(f"{api(emu)}/interrupt", headers=HEADERS).status_code == 200
        await socket.until(lambda s: s.ended(running))
    assert finished_job(emu, running)["status"] == "cancelled"
    assert status(emu, running)["status"] == "cancelled"
    assert job(emu, kept)["status"] == "completed" and status(emu, kept)["status"] == "completed"
    emu.cloud_settings(status_vocabulary="newer")
    assert status(emu, kept)["status"] == "success"
    stop = next(m["data"] for m in socket.texts(running) if m["type"] == "execution_interrupted")
    assert stop["node_id"] == "31"
    assert "execution_start" not in socket.types(doomed)
    assert httpx.get(f"{api(emu)}/history_v2/{doomed}", headers=HEADERS).json() == {}


def test_creator_tier_runs_three_and_interrupt_stops_all(emu: Emulator) -> None:
    ids = [submit(emu, workflow(steps=LONG)) for _ in range(4)]
    wait_for(lambda: queue(emu) == (ids[:3], ids[3:]), what="three running, one waiting")
    wait_for(lambda: all(status(emu, p)["status"] == "in_progress" for p in ids[:3]), what="three started")
    reply = httpx.post(f"{api(emu)}/queue", json={"clear": True}, headers=HEADERS)
    assert reply.json() == {"deleted": [ids[3]], "cleared": True}
    assert httpx.post(f"{api(emu)}/interrupt", headers=HEADERS).status_code == 200
    ended = [finished_job(emu, p) for p in ids[:3]]
    assert [j["status"] for j in ended] == ["cancelled"] * 3
    assert all(j["execution_status"]["messages"][-1][0] == "execution_interrupted" for j in ended)
    assert job(emu, ids[3])["status"] == "cancelled"
    emu.cloud_account(tier="pro")
    more = [submit(emu, workflow(steps=LONG)) for _ in range(6)]
    wait_for(lambda: queue(emu) == (more[:5], more[5:]), what="five running, one waiting")


def test_other_accounts_job_is_403(emu: Emulator) -> None:
    other = "comfyui-other-account-key"
    assert emu.cloud_account(other)["user_id"] != emu.cloud_account()["user_id"]
    theirs = submit(emu, workflow(), key=other)
    for path in (f"job/{theirs}/status", f"jobs/{theirs}"):
        reply = httpx.get(f"{api(emu)}/{path}", headers=HEADERS)
        assert reply.status_code == 403 and reply.json()["code"] == "forbidden"
    assert theirs not in [j["id"] for j in httpx.get(f"{api(emu)}/jobs", headers=HEADERS).json()["jobs"]]
    body = wait_for(lambda: (b := httpx.get(f"{api(emu)}/jobs/{theirs}", headers={"X-API-Key": other}).json())
                    ["status"] == "completed" and b)
    image = body["preview_output"]
    assert httpx.get(f"{api(emu)}/view", params=image, headers=HEADERS).status_code == 404


# --- partner node, failures ------------------------------------------------------------------------


async def test_partner_node_needs_the_key(emu: Emulator) -> None:
    async with listen(emu) as socket:
        without = submit(emu, partner_workflow())
        wrong = submit(emu, partner_workflow(), extra_data={"api_key_comfy_org": "comfyui-not-mine"})
        await socket.until(lambda s: s.ended(without) and s.ended(wrong))
    for prompt_id in (without, wrong):
        failed = finished_job(emu, prompt_id)
        assert failed["status"] == "failed" and failed["outputs"] == {}
        error = failed["execution_error"]
        assert set(error) == {"node_id", "node_type", "exception_message", "exception_type", "traceback",
                              "current_inputs", "current_outputs"}
        assert error["node_id"] == "1" and error["node_type"] == PARTNER_NODE
        assert error["exception_message"] == PARTNER_UNAUTHORIZED and error["exception_type"] == "Exception"
        assert status(emu, prompt_id)["error_message"] == PARTNER_UNAUTHORIZED
        message = next(m["data"] for m in socket.texts(prompt_id) if m["type"] == "execution_error")
        assert message["exception_message"] == PARTNER_UNAUTHORIZED

    emu.cloud_account(tier="standard")  # a blocker keeps the partner job in the queue for a look
    blocker = submit(emu, workflow(steps=LONG))
    paid = submit(emu, partner_workflow(), extra_data={"api_key_comfy_org": KEY},
                  client_id="c", partial_execution_targets=["2"])
    echoed = [httpx.get(f"{api(emu)}/queue", headers=HEADERS).text,
              httpx.get(f"{api(emu)}/jobs", headers=HEADERS).text]
    assert paid in echoed[0] and paid in echoed[1]
    wait_for(lambda: status(emu, blocker)["status"] == "in_progress", what="the blocker running")
    httpx.post(f"{api(emu)}/interrupt", headers=HEADERS)
    finished_job(emu, blocker)
    body = finished_job(emu, paid)
    assert body["status"] == "completed"
    assert body["outputs"]["2"]["images"][0]["filename"].startswith("partner")
    echoed += [httpx.get(f"{api(emu)}/jobs/{paid}", headers=HEADERS).text,
               httpx.get(f"{api(emu)}/history_v2/{paid}", headers=HEADERS).text]
    assert all(KEY not in text and "api_key_comfy_org" not in text for text in echoed)


@pytest.mark.parametrize("exception_type", [
    "ValidationError", "ModelDownloadError", "ImageDownloadError", "OOMError", "InsufficientFundsError",
    "InactiveSubscriptionError"])
def test_node_raises_with_cloud_categories(emu: Emulator, exception_type: str) -> None:
    emu.set_fault("cloud", "node_raises", exception_type=exception_type, at_step=2)
    body = finished_job(emu, submit(emu, workflow(steps=4)))
    assert body["status"] == "failed"
    error = body["execution_error"]
    assert error["exception_type"] == exception_type
    assert error["exception_message"] == CLOUD_ERRORS[exception_type]
    assert error["node_id"] == "31" and error["node_type"] == "KSampler" and error["traceback"]
    assert body["execution_status"] == {**body["execution_status"], "status_str": "error", "completed": False}
    assert status(emu, body["id"])["error_message"] == CLOUD_ERRORS[exception_type]


def test_node_raises_message_and_node(emu: Emulator) -> None:
    checkpoint = "v1-5-pruned-emaonly-fp16.safetensors"  # no worker has it cached: the loader runs
    emu.set_fault("cloud", "node_raises", exception_type="ModelDownloadError", node="CheckpointLoaderSimple",
                  message=f"{checkpoint}: 403 from the model host")
    wf = workflow()
    wf["4"]["inputs"]["ckpt_name"] = checkpoint
    failed = finished_job(emu, submit(emu, wf))
    assert failed["execution_error"]["node_type"] == "CheckpointLoaderSimple"
    assert failed["execution_error"]["exception_message"] == f"{checkpoint}: 403 from the model host"
    assert finished_job(emu, submit(emu, workflow()))["status"] == "completed"  # the fault was used up


async def test_ws_drop_cuts_sockets_job_completes(emu: Emulator) -> None:
    emu.set_fault("cloud", "ws_drop", at_step=3)
    async with listen(emu) as first, listen(emu) as second:
        prompt_id = submit(emu, workflow(steps=10))
        await first.until(lambda s: False)  # returns once the socket is cut
        await second.until(lambda s: False)
    assert first.closed and second.closed and "execution_success" not in first.types()
    assert finished_job(emu, prompt_id)["status"] == "completed"


# --- files -----------------------------------------------------------------------------------------


def test_uploads_are_flat_content_addressed_and_limited(emu: Emulator) -> None:
    red = png((255, 0, 0))
    first = upload(emu, red, subfolder="deep/er", overwrite="false")
    assert first.status_code == 200
    name = first.json()["name"]
    assert first.json() == {"name": f"{hashlib.sha256(red).hexdigest()}.png", "subfolder": "",
                            "type": "output"}
    again = upload(emu, red, filename="other.png", subfolder="x", type="input")
    assert again.json() == {"name": name, "subfolder": "", "type": "input"}
    assert upload(emu, png((0, 0, 255))).json()["name"] != name
    assert upload(emu, red, type="somewhere").status_code == 400
    missing = httpx.post(f"{api(emu)}/upload/image", data={"type": "output"}, headers=HEADERS)
    assert missing.status_code == 400 and set(missing.json()) == {"code", "message"}
    wide = upload(emu, png((1, 2, 3), size=(16385, 1)))
    assert wide.status_code == 400 and wide.json()["code"] == "image_too_large"
    huge = upload(emu, b"\0" * (50 * 1024 * 1024 + 1), filename="clip.mp4")
    assert huge.status_code == 400 and huge.json()["code"] == "file_too_large"

    # a mask is applied to its original_ref; the result is addressed by its own bytes
    mask = png((0, 0, 0, 77), mode="RGBA")
    ref = json.dumps({"filename": name, "subfolder": "ignored", "type": "output"})
    masked = upload(emu, mask, path="mask", original_ref=ref)
    assert masked.status_code == 200 and masked.json()["name"] != name
    merged = httpx.get(f"{api(emu)}/view", params={"filename": masked.json()["name"], "channel": "a"},
                       headers=HEADERS)
    assert merged.status_code == 200 and Image.open(io.BytesIO(merged.content)).getpixel((0, 0))[3] == 77

    # an upload is an input of LoadImage whatever its type
    loads = {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "copy"}}}
    assert finished_job(emu, submit(emu, loads))["status"] == "completed"
    loads["1"]["inputs"]["image"] = "never-uploaded.png"
    refused = httpx.post(f"{api(emu)}/prompt", json={"prompt": loads}, headers=HEADERS)
    assert refused.status_code == 400
    assert refused.json()["node_errors"]["1"]["errors"][0]["type"] == "custom_validation_failed"


def test_view_redirects_to_a_keyless_signed_url(emu: Emulator) -> None:
    image = finished_job(emu, submit(emu, workflow()))["preview_output"]
    view = httpx.get(f"{api(emu)}/view", params={**image, "subfolder": "whatever"}, headers=HEADERS)
    assert view.status_code == 302
    location = view.headers["Location"]
    assert location.startswith(f"{emu.url}/cloud-storage/") and "Signature=" in location
    fetched = httpx.get(location)
    assert fetched.status_code == 200 and fetched.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (512, 512)
    assert httpx.get(f"{api(emu)}/view", params={**image, "type": "temp"}, headers=HEADERS).status_code == 302

    leaks = len(emu.leaks)
    for headers in (HEADERS, {"Authorization": "Bearer x"}):
        refused = httpx.get(location, headers=headers)
        assert refused.status_code == 403 and refused.content != fetched.content
    followed = httpx.get(f"{api(emu)}/view", params=image, headers=HEADERS, follow_redirects=True)
    assert followed.status_code == 403  # httpx keeps X-API-Key on a same-host redirect: a leak
    assert len(emu.leaks) == leaks + 3 and all(p.startswith("/cloud-storage/") for p in emu.leaks[leaks:])

    assert httpx.get(location.replace("Signature=", "Signature=0")).status_code == 403
    emu.cloud_settings(url_seconds=-1)
    expired = httpx.get(f"{api(emu)}/view", params=image, headers=HEADERS).headers["Location"]
    assert httpx.get(expired).status_code == 403

    for channel, mode in (("rgb", "RGB"), ("a", "RGBA")):
        direct = httpx.get(f"{api(emu)}/view", params={**image, "channel": channel}, headers=HEADERS)
        assert direct.status_code == 200 and direct.headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(direct.content)).mode == mode
    for params in ({"filename": "nope.png"}, {}):
        missing = httpx.get(f"{api(emu)}/view", params=params, headers=HEADERS)
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_jobs_list_filters_sorts_and_pages(emu: Emulator) -> None:
    ids = [submit(emu, workflow()) for _ in range(3)]
    for prompt_id in ids:
        finished_job(emu, prompt_id)

    def listing(**params: Any) -> httpx.Response:
        return httpx.get(f"{api(emu)}/jobs", params=params, headers=HEADERS)

    newest = listing(status="completed", limit=2, sort_by="create_time", sort_order="desc").json()
    assert [j["id"] for j in newest["jobs"]] == ids[::-1][:2]
    assert newest["pagination"]["limit"] == 2 and newest["pagination"]["has_more"] is True
    total = newest["pagination"]["total"]
    entry = newest["jobs"][0]
    assert entry["status"] == "completed" and entry["outputs_count"] == 2 and "outputs" not in entry
    oldest = listing(limit=1000, sort_order="asc").json()
    assert [j["id"] for j in oldest["jobs"] if j["id"] in ids] == ids
    page = listing(status="completed", limit=1, offset=total - 1).json()
    assert len(page["jobs"]) == 1 and page["pagination"]["has_more"] is False
    assert listing(status="failed,cancelled").json()["jobs"] == [
        j for j in oldest["jobs"][::-1] if j["status"] in ("failed", "cancelled")]
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "x"}, {"status": "done"},
                {"sort_by": "name"}, {"sort_order": "up"}):
        assert listing(**bad).status_code == 400, bad


# --- faults ----------------------------------------------------------------------------------------


def test_request_faults(emu: Emulator) -> None:
    def count() -> int:
        reply = httpx.get(f"{api(emu)}/jobs", params={"limit": 1}, headers=HEADERS)
        return reply.json()["pagination"]["total"]

    before = count()
    emu.set_fault("cloud", "server_error", on="submit")
    failed = httpx.post(f"{api(emu)}/prompt", json={"prompt": workflow()}, headers=HEADERS)
    assert failed.status_code == 500 and set(failed.json()) == {"code", "message"}
    emu.set_fault("cloud", "http_error", on="submit", status=503, code="unavailable", message="try later")
    busy = httpx.post(f"{api(emu)}/prompt", json={"prompt": workflow()}, headers=HEADERS)
    assert busy.status_code == 503 and busy.json() == {"code": "unavailable", "message": "try later"}
    assert count() == before

    emu.set_fault("cloud", "drop", on="submit")
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{api(emu)}/prompt", json={"prompt": workflow()}, headers=HEADERS)
    assert count() == before + 1  # taken, then the connection was cut

    emu.set_fault("cloud", "rate_limit", on="status", retry_after=7)
    limited = httpx.get(f"{api(emu)}/queue", headers=HEADERS)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert httpx.get(f"{api(emu)}/queue", headers=HEADERS).status_code == 200
    emu.set_fault("cloud", "server_error", on="status")
    assert httpx.get(f"{api(emu)}/system_stats").status_code == 500
    emu.set_fault("cloud", "server_error", on="cancel")
    assert httpx.post(f"{api(emu)}/interrupt", headers=HEADERS).status_code == 500
    emu.set_fault("cloud", "http_error", on="upload", status=413, code="too_big", message="no")
    assert upload(emu, png((9, 9, 9))).status_code == 413

    emu.set_fault("cloud", "delay", on="result", seconds=0.3)
    began = time.monotonic()
    assert httpx.get(f"{api(emu)}/jobs/nope", headers=HEADERS).status_code == 404
    assert time.monotonic() - began >= 0.3

    image = finished_job(emu, submit(emu, workflow()))["preview_output"]
    location = httpx.get(f"{api(emu)}/view", params=image, headers=HEADERS).headers["Location"]
    emu.set_fault("cloud", "truncate")
    with pytest.raises(httpx.TransportError):
        httpx.get(location)
    assert httpx.get(location).status_code == 200
