"""The emulator's video deployment returns a real H.264 MP4 in a `gifs` entry, as ComfyUI's
VHS_VideoCombine writes it (issue 16 point 3), and the client shows it as a playable video."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator

import httpx
import pytest

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator, synth
from runcomfy_nb.emulator.app import load_config
from runcomfy_nb.widgets import Gallery
from runcomfy_nb.widgets.images import mp4_size

from ..helpers import TOKEN, wait_for

av = pytest.importorskip("av", reason="the MP4 needs PyAV (the emulator extra)")
VIDEO = "dep-animate"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(speed=50, token=TOKEN) as emulator:
        yield emulator


def top_boxes(data: bytes) -> list[bytes]:
    """The types of an ISO-BMFF file's top-level boxes, in order."""
    boxes, at = [], 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        assert size >= 8, f"bad box size {size} at {at}"
        boxes.append(kind)
        at += size
    assert at == len(data), "the boxes do not add up to the file"
    return boxes


def finished(http: httpx.Client, dep: str, body: dict[str, object]) -> dict[str, object]:
    run = http.post(f"/deployments/{dep}/inference", json=body).json()
    request_id = run["request_id"]
    wait_for(lambda: http.get(f"/deployments/{dep}/requests/{request_id}/status").json()["status"]
             in ("completed", "succeeded"), timeout=20, what="the video job")
    result: dict[str, object] = http.get(f"/deployments/{dep}/requests/{request_id}/result").json()
    return result


def test_video_deployment_returns_an_h264_mp4_like_vhs(emu: Emulator) -> None:
    with httpx.Client(base_url=f"{emu.url}/prod/v1", headers=AUTH, timeout=10) as http:
        result = finished(http, VIDEO, {"overrides": {}})
    (node,) = result["outputs"].values()  # type: ignore[attr-defined]
    (item,) = node["gifs"]
    assert {k: item[k] for k in ("filename", "subfolder", "type", "format")} == {
        "filename": "ComfyUI_00001.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4"}
    reply = httpx.get(item["url"])
    assert reply.status_code == 200 and reply.headers["content-type"] == "video/mp4"
    data = reply.content
    assert 1_000 < len(data) < 60_000  # tens of KB at most
    boxes = top_boxes(data)
    assert boxes[0] == b"ftyp" and b"moov" in boxes and b"mdat" in boxes
    assert boxes.index(b"moov") < boxes.index(b"mdat")  # faststart: playable before it all arrived
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and (stream.width, stream.height) == (256, 256)
        frames = list(container.decode(video=0))
    assert len(frames) == 24
    first, last = frames[0].to_image(), frames[-1].to_image()
    assert first.tobytes() != last.tobytes()  # it moves
    # the same inputs give the same file
    assert data == synth.video(7, "a red ball bouncing across a meadow")


def test_a_webp_override_still_gets_an_animated_webp(emu: Emulator) -> None:
    with httpx.Client(base_url=f"{emu.url}/prod/v1", headers=AUTH, timeout=10) as http:
        result = finished(http, VIDEO, {"overrides": {"12": {"inputs": {"format": "image/webp"}}}})
    (node,) = result["outputs"].values()  # type: ignore[attr-defined]
    (item,) = node["gifs"]
    assert item["filename"].endswith(".webp") and item["format"] == "image/webp"


def test_the_client_shows_the_mp4_as_a_playable_video(emu: Emulator) -> None:
    with rc.RunComfy(token=TOKEN, base_url=emu.url) as client:
        result = client.deployments.submit(VIDEO, overrides={}).result(timeout=60)
        (clip,) = result.media
        assert (clip.kind, clip.mime, clip.filename) == ("video", "video/mp4", "ComfyUI_00001.mp4")
        (item,) = Gallery(result.media).items
    assert item["src"].startswith("data:video/mp4;base64,") and item["error"] == ""
    assert (item["width"], item["height"]) == (256, 256) and 1_000 < item["size"] < 60_000


async def test_a_machines_video_combine_writes_the_mp4_too() -> None:
    # the same node on a dedicated machine's ComfyUI (emulator/comfyui/executor.py)
    config = load_config(None)
    config["machines"].update(rate_per_second=0, ready_seconds=1, deleting_seconds=1)
    version = next(w["version_id"] for w in config["workflows"] if w["preset"] == "video")
    with Emulator(speed=50, token=TOKEN, config=config) as emu:
        async with rc.AsyncRunComfy(token=TOKEN, base_url=emu.url, user_id=emu.user_id) as client:
            machine = await client.machines.launch(version, server_type="large", duration="1h")
            try:
                await machine.wait_ready(timeout=15, poll=0.05)
                comfy = machine.comfyui()
                try:
                    result = await (await comfy.queue(emu.machine_workflow(version))).result(timeout=30)
                    (clip,) = result.media
                    data = await clip.read()
                finally:
                    await comfy.aclose()
            finally:
                await machine.stop()
    assert (clip.kind, clip.mime) == ("video", "video/mp4") and clip.filename.endswith(".mp4")
    assert top_boxes(data)[0] == b"ftyp" and mp4_size(data) == (256, 256)
