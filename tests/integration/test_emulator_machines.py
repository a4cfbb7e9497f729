"""The emulated Server API (machines) and the ComfyUI backend behind each Ready machine, on real
sockets: HTTP with httpx, the WebSocket with aiohttp's client."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import aiohttp
import httpx
import pytest
from PIL import Image, ImageFilter, ImageStat

from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.app import load_config

from ..helpers import TOKEN, until, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _config(**machines: Any) -> dict[str, Any]:
    config = load_config(None)
    config["machines"].update(machines)
    return config


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    # no rate limit here (test_rate_limit has its own emulator); 0.5 virtual s per sampler step
    config = _config(rate_per_second=0, ready_seconds=10, deleting_seconds=5, load_seconds=1)
    with Emulator(speed=50, token=TOKEN, config=config) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def _no_faults(emu: Emulator) -> Iterator[None]:
    emu.clear_faults()
    yield
    emu.clear_faults()


def api(emu: Emulator) -> str:
    return f"{emu.url}/prod/api/users/{emu.user_id}"


def version(emu: Emulator, preset: str = "image") -> str:
    workflows = httpx.get(f"{api(emu)}/workflows", headers=AUTH).json()
    return next(w["version_id"] for w in workflows if w["workflow_name"].startswith(
        "flux" if preset == "image" else "wan"))


def launch(emu: Emulator, duration: int = 3600, **extra: Any) -> dict[str, Any]:
    body = {"workflow_version_id": version(emu), "server_type": "large", "estimated_duration": duration,
            **extra}
    reply = httpx.post(f"{api(emu)}/servers", json=body, headers=AUTH)
    assert reply.status_code == 200, reply.text
    return reply.json()


def status(emu: Emulator, server_id: str) -> httpx.Response:
    return httpx.get(f"{api(emu)}/servers/{server_id}", headers=AUTH)


def wait_ready(emu: Emulator, server_id: str) -> dict[str, Any]:
    return wait_for(lambda: (body := status(emu, server_id).json())["current_status"] == "Ready" and body)


@pytest.fixture(scope="module")
def comfy(emu: Emulator) -> str:
    """The main_service_url of one Ready machine shared by the backend tests."""
    machine = launch(emu)
    return wait_ready(emu, machine["server_id"])["main_service_url"]


def server_id_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def workflow(emu: Emulator, *, steps: int = 6, seed: int | None = None) -> dict[str, Any]:
    prompt = emu.machine_workflow(version(emu))
    prompt["31"]["inputs"].update(steps=steps, seed=seed if seed is not None else uuid.uuid4().int % 10**9)
    return prompt


# --- Server API --------------------------------------------------------------------------------


def test_auth_user_and_workflows(emu: Emulator) -> None:
    assert httpx.get(f"{api(emu)}/workflows").status_code == 401
    wrong = httpx.get(f"{emu.url}/prod/api/users/someone-else/workflows", headers=AUTH)
    assert wrong.status_code == 403 and wrong.json()["error_code"] == 403001
    workflows = httpx.get(f"{api(emu)}/workflows", headers=AUTH).json()
    assert isinstance(workflows, list) and len(workflows) >= 2
    assert set(workflows[0]) == {"workflow_id", "workflow_name", "version_id", "created_at", "updated_at"}
    assert len({w["version_id"] for w in workflows}) == len(workflows)


def test_launch_validation(emu: Emulator) -> None:
    good = {"workflow_version_id": version(emu), "server_type": "medium", "estimated_duration": 600}
    before = len(emu.machines())
    cases = [
        ({**good, "workflow_version_id": None}, 400), ({**good, "workflow_version_id": "nope"}, 404),
        ({**good, "server_type": "huge"}, 400), ({**good, "server_type": None}, 400),
        ({**good, "estimated_duration": 0}, 400), ({**good, "estimated_duration": -5}, 400),
        ({**good, "estimated_duration": "600"}, 400), ({**good, "estimated_duration": 1.5}, 400),
        ({k: v for k, v in good.items() if k != "estimated_duration"}, 400),
    ]
    for body, code in cases:
        reply = httpx.post(f"{api(emu)}/servers", json=body, headers=AUTH)
        assert reply.status_code == code, (body, reply.text)
        assert set(reply.json()) == {"error_code", "error_message"}
    assert httpx.post(f"{api(emu)}/servers", content=b"{", headers=AUTH).status_code == 400
    assert len(emu.machines()) == before
    # the older key is accepted too
    legacy = {"version_id": good["workflow_version_id"], "server_type": "2xl-turbo", "estimated_duration": 60}
    reply = httpx.post(f"{api(emu)}/servers", json=legacy, headers=AUTH)
    assert reply.status_code == 200
    httpx.delete(f"{api(emu)}/servers/{reply.json()['server_id']}", headers=AUTH)


def test_machine_lifecycle_billing_and_stop(emu: Emulator) -> None:
    machine = launch(emu, duration=600)
    sid = machine["server_id"]
    assert machine["current_status"] == "Starting" and machine["main_service_url"] is None
    assert machine["service_ready_at"] is None and machine["estimated_stopping_at"] is None
    assert machine["server_type"] == "large" and machine["estimated_duration"] == 600
    assert emu.comfy_url(sid) is None
    ready = wait_ready(emu, sid)
    assert ready["main_service_url"] == f"{emu.url}/machines/{sid}" == emu.comfy_url(sid)
    assert ready["service_ready_at"].endswith("Z") and len(ready["service_ready_at"]) == 27
    assert sid in [m["server_id"] for m in httpx.get(f"{api(emu)}/servers", headers=AUTH).json()]
    for base in (ready["main_service_url"], ready["main_service_url"] + "/api"):
        stats = httpx.get(f"{base}/system_stats").json()
        assert stats["system"]["comfyui_version"] == "0.3.64"
        assert stats["devices"][0]["vram_total"] == 24 * 1024**3
    assert httpx.get(f"{ready['main_service_url']}/features").json()["supports_preview_metadata"] is True

    def stamp(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    assert stamp(ready["estimated_stopping_at"]) - stamp(ready["service_ready_at"]) == pytest.approx(600)
    extended = httpx.post(f"{api(emu)}/servers/{sid}/update-estimated-duration",
                          json={"update_estimated_duration": 1200}, headers=AUTH).json()
    assert extended["estimated_duration"] == 1200
    span = stamp(extended["estimated_stopping_at"]) - stamp(extended["service_ready_at"])
    assert span == pytest.approx(1200)
    bad = httpx.post(f"{api(emu)}/servers/{sid}/update-estimated-duration",
                     json={"update_estimated_duration": -1}, headers=AUTH)
    assert bad.status_code == 400

    wait_for(lambda: next(m for m in emu.machines() if m["server_id"] == sid)["billed_seconds"] > 5)
    stopped = httpx.delete(f"{api(emu)}/servers/{sid}", headers=AUTH)
    assert stopped.status_code == 200 and stopped.json()["current_status"] == "Deleting"
    billed = next(m for m in emu.machines() if m["server_id"] == sid)["billed_seconds"]
    assert httpx.get(f"{ready['main_service_url']}/system_stats").status_code == 404
    wait_for(lambda: status(emu, sid).status_code == 404)
    assert status(emu, sid).json()["error_code"] == 404001
    assert httpx.delete(f"{api(emu)}/servers/{sid}", headers=AUTH).status_code == 404
    assert sid not in [m["server_id"] for m in httpx.get(f"{api(emu)}/servers", headers=AUTH).json()]
    record = next(m for m in emu.machines() if m["server_id"] == sid)
    assert record["status"] == "Deleted" and record["billed_seconds"] == billed


def test_machine_expires_at_estimated_stopping_at(emu: Emulator) -> None:
    sid = launch(emu, duration=20)["server_id"]
    wait_ready(emu, sid)
    wait_for(lambda: status(emu, sid).status_code == 404)
    record = next(m for m in emu.machines() if m["server_id"] == sid)
    assert record["billed_seconds"] == pytest.approx(20, abs=0.01)


def test_never_ready_and_dropped_launch(emu: Emulator) -> None:
    emu.set_fault("*", "never_ready")
    sid = launch(emu)["server_id"]
    time.sleep(0.6)  # 30 virtual seconds: three times ready_seconds
    assert status(emu, sid).json()["current_status"] == "Starting"
    assert httpx.delete(f"{api(emu)}/servers/{sid}", headers=AUTH).json()["current_status"] == "Deleting"
    assert next(m for m in emu.machines() if m["server_id"] == sid)["billed_seconds"] == 0

    # a dropped launch still took the machine: the client must list servers, not retry
    emu.set_fault("*", "drop")
    before = {m["server_id"] for m in emu.machines()}
    with pytest.raises(httpx.TransportError):
        launch(emu)
    orphans = {m["server_id"] for m in emu.machines()} - before
    assert len(orphans) == 1
    listed = {m["server_id"] for m in httpx.get(f"{api(emu)}/servers", headers=AUTH).json()}
    assert orphans <= listed
    httpx.delete(f"{api(emu)}/servers/{orphans.pop()}", headers=AUTH)


def test_rate_limit() -> None:
    with Emulator(speed=50, token=TOKEN) as emulator:  # the packaged config: 1 request/s, burst 5
        codes, retry_after, bodies = [], [], []
        with httpx.Client(headers=AUTH) as client:
            for _ in range(8):
                reply = client.get(f"{api(emulator)}/servers")
                codes.append(reply.status_code)
                if reply.status_code == 429:
                    retry_after.append(reply.headers["Retry-After"])
                    bodies.append(reply.json())
        assert codes[:5] == [200] * 5 and 429 in codes[5:]
        assert bodies[0]["error_code"] == "rate_limited" and int(retry_after[0]) >= 1
        # the ComfyUI backend and other families are not limited
        assert httpx.get(f"{emulator.url}/prod/v1/deployments/dep-flux-kontext/requests/x/status",
                         headers=AUTH).status_code == 404
    with Emulator(speed=50, token=TOKEN) as emulator:
        emulator.set_fault("*", "rate_limit", retry_after=3)
        reply = httpx.get(f"{api(emulator)}/workflows", headers=AUTH)
        assert reply.status_code == 429 and reply.headers["Retry-After"] == "3"
        assert reply.json()["error_code"] == "rate_limited"


# --- ComfyUI backend: HTTP ---------------------------------------------------------------------


def png(color: tuple[int, int, int], size: int = 32) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, "PNG")
    return out.getvalue()


def upload(comfy: str, name: str, data: bytes, **form: str) -> httpx.Response:
    return httpx.post(f"{comfy}/upload/image", files={"image": (name, data, "image/png")}, data=form)


def test_unknown_machine_is_404(emu: Emulator) -> None:
    assert httpx.get(f"{emu.url}/machines/{uuid.uuid4()}/system_stats").status_code == 404
    assert httpx.post(f"{emu.url}/machines/{uuid.uuid4()}/api/prompt", json={}).status_code == 404


def test_upload_suffix_and_view(comfy: str) -> None:
    name = f"cat-{uuid.uuid4().hex[:6]}.png"
    first = upload(comfy, name, png((255, 0, 0)), overwrite="false", type="input", subfolder="")
    assert first.status_code == 200 and first.json() == {"name": name, "subfolder": "", "type": "input"}
    stem = name[:-4]
    assert upload(comfy, name, png((0, 255, 0))).json()["name"] == f"{stem} (1).png"
    assert upload(comfy, name, png((0, 0, 255))).json()["name"] == f"{stem} (2).png"
    assert upload(comfy, name, png((0, 255, 0))).json()["name"] == f"{stem} (1).png"  # same bytes: reused
    assert upload(comfy, name, png((9, 9, 9)), overwrite="true").json()["name"] == name
    sub = upload(comfy, name, png((1, 2, 3)), subfolder="refs/a").json()
    assert sub == {"name": name, "subfolder": "refs/a", "type": "input"}
    assert upload(comfy, name, png((1, 2, 3)), subfolder="../../etc").status_code == 400
    assert httpx.post(f"{comfy}/upload/image", data={"type": "input"}).status_code == 400

    images = httpx.get(f"{comfy}/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"]
    assert name in images[0] and f"{stem} (1).png" in images[0] and images[1] == {"image_upload": True}

    view = httpx.get(f"{comfy}/api/view", params={"filename": name, "type": "input"})
    assert view.status_code == 200 and view.headers["Content-Type"] == "image/png"
    assert view.headers["Content-Disposition"] == f'filename="{name}"'
    assert Image.open(io.BytesIO(view.content)).getpixel((0, 0)) == (9, 9, 9)
    nested = httpx.get(f"{comfy}/view", params={"filename": name, "type": "input", "subfolder": "refs/a"})
    assert Image.open(io.BytesIO(nested.content)).getpixel((0, 0)) == (1, 2, 3)
    assert httpx.get(f"{comfy}/view", params={"filename": f"{name} [input]"}).status_code == 200
    for params, code in [({"filename": "../secret.png", "type": "input"}, 400),
                         ({"filename": "/etc/passwd"}, 400),
                         ({"filename": name, "type": "input", "subfolder": "../../.."}, 403),
                         ({"filename": name, "type": "bogus"}, 400),
                         ({"filename": "missing.png", "type": "input"}, 404), ({}, 404)]:
        reply = httpx.get(f"{comfy}/view", params=params)
        assert reply.status_code == code, params
        assert reply.content == b""


def test_object_info_and_queue_count(comfy: str) -> None:
    info = httpx.get(f"{comfy}/object_info").json()
    for name in ("KSampler", "CLIPTextEncode", "CheckpointLoaderSimple", "EmptyLatentImage", "VAEDecode",
                 "SaveImage", "PreviewImage", "LoadImage"):
        assert info[name]["name"] == name
    sampler = httpx.get(f"{comfy}/api/object_info/KSampler").json()["KSampler"]
    assert "euler" in sampler["input"]["required"]["sampler_name"][0]
    assert sampler["input"]["required"]["seed"][1]["max"] == 2**64 - 1
    assert sampler["input_order"]["required"][:2] == ["model", "seed"] and sampler["output"] == ["LATENT"]
    assert info["SaveImage"]["output_node"] is True and info["KSampler"]["output_node"] is False
    ckpts = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert "flux1-dev-fp8.safetensors" in ckpts
    assert httpx.get(f"{comfy}/object_info/NoSuchNode").json() == {}
    assert httpx.get(f"{comfy}/prompt").json() == {"exec_info": {"queue_remaining": 0}}


def test_prompt_validation_errors(emu: Emulator, comfy: str) -> None:
    def post(body: Any) -> httpx.Response:
        return httpx.post(f"{comfy}/prompt", json=body)

    def expect(body: Any, kind: str) -> dict[str, Any]:
        reply = post(body)
        assert reply.status_code == 400, reply.text
        data = reply.json()
        assert set(data) == {"error", "node_errors"}
        assert set(data["error"]) == {"type", "message", "details", "extra_info"}
        assert data["error"]["type"] == kind
        return data

    assert expect({"client_id": "x"}, "no_prompt")["error"]["message"] == "No prompt provided"
    missing = expect({"prompt": {"3": {"inputs": {}}}}, "invalid_prompt")
    assert missing["error"]["details"] == "Node ID '#3'" and missing["node_errors"] == {}
    unknown = expect({"prompt": {"3": {"class_type": "Nope", "inputs": {}}}}, "invalid_prompt")
    assert unknown["error"]["message"] == "Cannot execute because node Nope does not exist."
    no_outputs = workflow(emu)
    del no_outputs["9"]
    assert expect({"prompt": no_outputs}, "prompt_no_outputs")["error"]["message"] == "Prompt has no outputs"

    def node_error(mutate: Callable[[dict[str, Any]], None], node: str, output: str = "9") -> dict[str, Any]:
        prompt = workflow(emu)
        mutate(prompt)
        data = expect({"prompt": prompt, "client_id": "c"}, "prompt_outputs_failed_validation")
        entry = data["node_errors"][node]
        assert set(entry) == {"errors", "dependent_outputs", "class_type"}
        assert entry["dependent_outputs"] == [output] and entry["class_type"] == prompt[node]["class_type"]
        error = entry["errors"][0]
        assert set(error) == {"type", "message", "details", "extra_info"}
        return error

    error = node_error(lambda p: p["31"]["inputs"].pop("cfg"), "31")
    assert error["type"] == "required_input_missing" and error["extra_info"] == {"input_name": "cfg"}
    error = node_error(lambda p: p["31"]["inputs"].update(sampler_name="eulr"), "31")
    assert error["type"] == "value_not_in_list" and error["details"].startswith("sampler_name: 'eulr' not in")
    assert error["extra_info"] == {"input_name": "sampler_name", "input_config": None,
                                   "received_value": "eulr"}
    error = node_error(lambda p: p["31"]["inputs"].update(scheduler="nope"), "31")
    assert error["extra_info"]["input_config"][0][0] == "simple"  # short lists are echoed
    error = node_error(lambda p: p["31"]["inputs"].update(steps="twenty"), "31")
    assert error["type"] == "invalid_input_type"
    assert error["message"] == "Failed to convert an input value to a INT value"
    error = node_error(lambda p: p["31"]["inputs"].update(steps=0), "31")
    assert error["type"] == "value_smaller_than_min" and error["message"] == "Value 0 smaller than min of 1"
    error = node_error(lambda p: p["31"]["inputs"].update(positive=["5", 0]), "31")
    assert error["type"] == "return_type_mismatch"
    error = node_error(lambda p: p["4"]["inputs"].update(ckpt_name="missing.safetensors"), "4")
    assert error["type"] == "value_not_in_list"
    error = node_error(lambda p: p.update({"9": {"class_type": "LoadImage", "inputs": {"image": "no.png"}},
                                           "10": {"class_type": "SaveImage",
                                                  "inputs": {"images": ["9", 0], "filename_prefix": "x"}}}),
                       "9", output="10")
    assert error["type"] == "custom_validation_failed"
    # strings are coerced, not rejected
    ok = workflow(emu)
    ok["31"]["inputs"]["steps"] = "3"
    assert post({"prompt": ok}).status_code == 200
    # a body that is not JSON is aiohttp's 500 text page
    broken = httpx.post(f"{comfy}/prompt", content=b"{nope")
    assert broken.status_code == 500 and broken.headers["Content-Type"].startswith("text/plain")


# --- ComfyUI backend: WebSocket runs -----------------------------------------------------------


class Socket:
    """A ComfyUI WebSocket that records text and binary frames."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[tuple[str, Any]] = []  # ("text", {...}) or ("binary", bytes)
        self.closed = False

    async def until(self, done: Callable[[list[tuple[str, Any]]], bool], timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not done(self.messages):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"timed out; got {[m[1].get('type') for m in self.texts()]}")
            message = await self.ws.receive(timeout=remaining)
            if message.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(("text", json.loads(message.data)))
            elif message.type == aiohttp.WSMsgType.BINARY:
                self.messages.append(("binary", message.data))
            else:
                self.closed = True
                return

    def texts(self) -> list[tuple[str, Any]]:
        return [m for m in self.messages if m[0] == "text"]

    def types(self) -> list[str]:
        return [m[1]["type"] for m in self.texts()]

    def binaries(self) -> list[bytes]:
        return [m[1] for m in self.messages if m[0] == "binary"]


def finished(prompt_id: str) -> Callable[[list[tuple[str, Any]]], bool]:
    return lambda messages: any(kind == "text" and m["type"] == "executing" and m["data"]["node"] is None
                                and m["data"].get("prompt_id") == prompt_id for kind, m in messages)


async def connect(session: aiohttp.ClientSession, comfy: str, client_id: str,
                  flags: bool = False) -> Socket:
    """A socket on an idle machine (so no earlier prompt's broadcasts reach it)."""

    async def idle() -> bool:
        async with session.get(f"{comfy}/prompt") as reply:
            return bool((await reply.json())["exec_info"]["queue_remaining"] == 0)

    await until(idle, 10, "the machine to go idle")
    ws = await session.ws_connect(f"{comfy.replace('http', 'ws', 1)}/ws?clientId={client_id}")
    socket = Socket(ws)
    if flags:
        await ws.send_str(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
    await socket.until(lambda m: any(k == "text" and x["type"] == "status" for k, x in m))
    first = socket.texts()[0][1]
    assert first["data"]["sid"] == client_id and "exec_info" in first["data"]["status"]
    return socket


async def queue(session: aiohttp.ClientSession, comfy: str, prompt: dict[str, Any], client_id: str,
                **extra: Any) -> str:
    body = {"prompt": prompt, "client_id": client_id, **extra}
    async with session.post(f"{comfy}/prompt", json=body) as reply:
        assert reply.status == 200, await reply.text()
        body = await reply.json()
    assert set(body) == {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
    return body["prompt_id"]


async def history(session: aiohttp.ClientSession, comfy: str, prompt_id: str, timeout: float = 10) -> Any:
    async def entry() -> Any:
        async with session.get(f"{comfy}/history/{prompt_id}") as reply:
            return (await reply.json()).get(prompt_id)

    return await until(entry, timeout, f"the history of {prompt_id}")


def edges(jpeg: bytes) -> float:
    picture = Image.open(io.BytesIO(jpeg)).convert("L").filter(ImageFilter.FIND_EDGES)
    return ImageStat.Stat(picture).mean[0]


async def test_prompt_over_websocket(emu: Emulator, comfy: str) -> None:
    client_id = uuid.uuid4().hex
    steps = 8
    async with aiohttp.ClientSession() as session:
        socket = await connect(session, comfy, client_id)
        prompt_id = await queue(session, comfy, workflow(emu, steps=steps), client_id,
                                extra_data={"api_key_comfy_org": "comfyui-secret"})
        await socket.until(finished(prompt_id))
        await socket.ws.close()
        entry = await history(session, comfy, prompt_id)
        async with session.get(f"{comfy}/api/history", params={"max_items": "1"}) as reply:
            assert list(await reply.json()) == [prompt_id]

    texts = [m for _, m in socket.texts()][1:]  # after the status on connect
    types = [m["type"] for m in texts]
    main = [t for t in types if t not in ("progress", "progress_state", "status")]
    assert main[:2] == ["execution_start", "execution_cached"]
    assert main[-2:] == ["execution_success", "executing"] and texts[-1]["data"] == {
        "node": None, "prompt_id": prompt_id}
    assert types[-2] == "status" and types[0] == "status"  # queued ... done
    cached = texts[types.index("execution_cached")]["data"]
    assert cached["prompt_id"] == prompt_id and isinstance(cached["timestamp"], int)
    executing = [m["data"]["node"] for m in texts if m["type"] == "executing"][:-1]
    assert executing[-3:] == ["31", "8", "9"] and not set(executing) & set(cached["nodes"])
    assert all(set(m["data"]) == {"node", "display_node", "prompt_id"}
               for m in texts if m["type"] == "executing" and m["data"]["node"])
    progress = [m["data"] for m in texts if m["type"] == "progress"]
    assert [p["value"] for p in progress] == list(range(1, steps + 1))
    assert all(p["max"] == steps and p["node"] == "31" and p["prompt_id"] == prompt_id for p in progress)
    # per node: progress_state (running) -> executing -> (progress, progress_state)* -> progress_state
    start = types.index("executing", types.index("execution_cached"))
    assert types[start - 1] == "progress_state"
    sampler = texts.index(next(m for m in texts if m["type"] == "executing" and m["data"]["node"] == "31"))
    assert types[sampler + 1: sampler + 5] == ["progress", "progress_state", "progress", "progress_state"]
    states = [m["data"]["nodes"] for m in texts if m["type"] == "progress_state"]
    assert states[-1]["9"]["state"] == "finished" and states[-1]["31"]["value"] == steps
    executed = next(m["data"] for m in texts if m["type"] == "executed")
    assert executed["node"] == "9" and len(executed["output"]["images"]) == 2

    previews = socket.binaries()
    assert len(previews) == steps
    assert all(struct.unpack(">II", frame[:8]) == (1, 1) and frame[8:10] == b"\xff\xd8" for frame in previews)
    assert edges(previews[-1][8:]) > edges(previews[0][8:]) * 1.5  # sharpens as steps advance

    assert list(entry) == ["prompt", "outputs", "status", "meta"]
    _, pid, saved, extra, outputs = entry["prompt"]
    assert pid == prompt_id and saved["31"]["inputs"]["steps"] == steps
    assert extra == {"client_id": client_id} and outputs == ["9"]  # the Comfy API key is stripped
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached",
                                                           "execution_success"]
    assert entry["meta"]["9"] == {"node_id": "9", "display_node": "9", "parent_node": None,
                                  "real_node_id": "9"}
    image = entry["outputs"]["9"]["images"][0]
    assert set(image) == {"filename", "subfolder", "type"} and image["type"] == "output"
    view = httpx.get(f"{comfy}/view", params=image)
    assert Image.open(io.BytesIO(view.content)).size == (512, 512)


async def test_feature_flags_give_type_4_previews_and_cached_rerun(emu: Emulator, comfy: str) -> None:
    client_id = uuid.uuid4().hex
    prompt = workflow(emu, steps=5)
    async with aiohttp.ClientSession() as session:
        socket = await connect(session, comfy, client_id, flags=True)
        await socket.until(lambda m: any(k == "text" and x["type"] == "feature_flags" for k, x in m))
        flags = next(m for _, m in socket.texts() if m["type"] == "feature_flags")["data"]
        assert flags["supports_preview_metadata"] is True and flags["max_upload_size"] > 0
        prompt_id = await queue(session, comfy, prompt, client_id)
        await socket.until(finished(prompt_id))
        frames = socket.binaries()
        assert len(frames) == 5 and {struct.unpack(">I", f[:4])[0] for f in frames} == {4}
        size = struct.unpack(">I", frames[0][4:8])[0]
        meta = json.loads(frames[0][8:8 + size])
        assert meta == {"node_id": "31", "prompt_id": prompt_id, "display_node_id": "31",
                        "parent_node_id": None, "real_node_id": "31", "image_type": "image/jpeg"}
        assert frames[0][8 + size:8 + size + 2] == b"\xff\xd8"

        # the same prompt again: everything cached, the output re-sent with `executed`
        again = await queue(session, comfy, prompt, client_id)
        await socket.until(finished(again))
        await socket.ws.close()
        first = (await history(session, comfy, prompt_id))["outputs"]
        second = await history(session, comfy, again)
    texts = [m for _, m in socket.texts()]
    cached = next(m for m in texts if m["type"] == "execution_cached" and m["data"]["prompt_id"] == again)
    assert set(cached["data"]["nodes"]) == set(prompt)
    assert not [m for m in texts if m["type"] == "progress" and m["data"]["prompt_id"] == again]
    assert second["outputs"] == first and second["status"]["status_str"] == "success"


async def test_queue_delete_pending_and_interrupt(emu: Emulator, comfy: str) -> None:
    client_id = uuid.uuid4().hex
    async with aiohttp.ClientSession() as session:
        socket = await connect(session, comfy, client_id)
        long_id = await queue(session, comfy, workflow(emu, steps=400), client_id)
        await socket.until(lambda m: any(k == "text" and x["type"] == "progress" for k, x in m))
        doomed = await queue(session, comfy, workflow(emu, steps=3), client_id)
        kept = await queue(session, comfy, workflow(emu, steps=3), client_id)
        async with session.get(f"{comfy}/queue") as reply:
            listing = await reply.json()
        assert [item[1] for item in listing["queue_running"]] == [long_id]
        assert [item[1] for item in listing["queue_pending"]] == [doomed, kept]
        assert all(len(item) == 5 for item in listing["queue_pending"])
        async with session.get(f"{comfy}/prompt") as reply:
            assert (await reply.json())["exec_info"]["queue_remaining"] == 3
        async with session.post(f"{comfy}/queue", json={"delete": [doomed]}) as reply:
            assert reply.status == 200 and await reply.read() == b""
        async with session.get(f"{comfy}/api/queue") as reply:
            assert [item[1] for item in (await reply.json())["queue_pending"]] == [kept]
        async with session.post(f"{comfy}/interrupt", json={"prompt_id": "not-running"}) as reply:
            assert reply.status == 200
        async with session.post(f"{comfy}/interrupt") as reply:
            assert reply.status == 200 and await reply.read() == b""
        await socket.until(finished(kept))
        await socket.ws.close()
        interrupted = await history(session, comfy, long_id)
        async with session.get(f"{comfy}/history/{doomed}") as reply:
            assert await reply.json() == {}
        assert (await history(session, comfy, kept))["status"]["status_str"] == "success"
        async with session.post(f"{comfy}/history", json={"delete": [kept]}) as reply:
            assert reply.status == 200
        async with session.get(f"{comfy}/history/{kept}") as reply:
            assert await reply.json() == {}
        async with session.post(f"{comfy}/free", json={"unload_models": True, "free_memory": True}) as reply:
            assert reply.status == 200

    texts = [m for _, m in socket.texts()]
    stop = next(m["data"] for m in texts if m["type"] == "execution_interrupted")
    assert stop["prompt_id"] == long_id and stop["node_id"] == "31" and stop["node_type"] == "KSampler"
    assert set(stop) == {"prompt_id", "node_id", "node_type", "executed", "timestamp"}
    progress = [m["data"]["value"] for m in texts
                if m["type"] == "progress" and m["data"]["prompt_id"] == long_id]
    assert 0 < len(progress) < 400
    assert interrupted["status"]["status_str"] == "error" and interrupted["status"]["completed"] is False
    assert interrupted["status"]["messages"][-1][0] == "execution_interrupted"
    assert doomed not in {m["data"].get("prompt_id") for m in texts if m["type"] == "execution_start"}


async def test_ws_drop_fault_still_completes(emu: Emulator, comfy: str) -> None:
    emu.set_fault(server_id_of(comfy), "ws_drop", at_step=3)
    client_id = uuid.uuid4().hex
    async with aiohttp.ClientSession() as session:
        socket = await connect(session, comfy, client_id)
        prompt_id = await queue(session, comfy, workflow(emu, steps=10), client_id)
        await socket.until(lambda m: False)  # returns when the socket is cut
        assert socket.closed and "execution_success" not in socket.types()
        values = [m["data"]["value"] for _, m in socket.texts() if m["type"] == "progress"]
        assert values and max(values) < 10
        entry = await history(session, comfy, prompt_id)
    assert entry["status"]["status_str"] == "success" and entry["outputs"]["9"]["images"]


async def test_node_raises_gives_execution_error(emu: Emulator, comfy: str) -> None:
    emu.set_fault(server_id_of(comfy), "node_raises", exception_type="torch.OutOfMemoryError",
                  message="Allocation on device", at_step=2)
    client_id = uuid.uuid4().hex
    async with aiohttp.ClientSession() as session:
        socket = await connect(session, comfy, client_id)
        prompt_id = await queue(session, comfy, workflow(emu, steps=6), client_id)
        await socket.until(finished(prompt_id))
        await socket.ws.close()
        entry = await history(session, comfy, prompt_id)
    types = socket.types()
    assert "execution_success" not in types and types[-1] == "executing"
    failure = next(m["data"] for _, m in socket.texts() if m["type"] == "execution_error")
    assert {"prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
            "traceback", "current_inputs", "current_outputs", "timestamp"} == set(failure)
    assert failure["node_id"] == "31" and failure["node_type"] == "KSampler"
    assert failure["exception_type"] == "torch.OutOfMemoryError"
    assert failure["exception_message"] == "Allocation on device"
    assert isinstance(failure["traceback"], list) and failure["traceback"]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][0] == "execution_error" and entry["outputs"] == {}


async def test_prompt_without_client_id_broadcasts_progress_only(emu: Emulator, comfy: str) -> None:
    async with aiohttp.ClientSession() as session:
        socket = await connect(session, comfy, uuid.uuid4().hex)
        async with session.post(f"{comfy}/api/prompt", json={"prompt": workflow(emu, steps=3)}) as reply:
            prompt_id = (await reply.json())["prompt_id"]
        await history(session, comfy, prompt_id)
        await socket.until(lambda m: sum(1 for k, x in m if k == "text" and x["type"] == "progress") == 3)
        await socket.ws.close()
    types = set(socket.types())
    assert {"progress", "progress_state", "status"} <= types
    assert not types & {"execution_start", "executing", "executed", "execution_success"}
