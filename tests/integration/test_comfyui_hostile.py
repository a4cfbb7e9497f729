"""AsyncComfyUI against a ComfyUI double that behaves the way real servers do when it hurts: a prompt
that is over before the client reads its socket (with SaveImageWebsocket outputs that exist only as
frames), a server that dies mid-run, and WebSocket handshakes answered 429."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import runcomfy_nb as rc
from runcomfy_nb.clients.comfyui import AsyncComfyUI, SocketRun
from runcomfy_nb.errors import ContactLost, TransportError
from runcomfy_nb.events import NodeStarted, Output, Preview, Progress, Started
from runcomfy_nb.jobs import Job
from runcomfy_nb.status import Status

from ..doubles.comfyui_double import ComfyDouble
from ..helpers import downloaded, until

SECRET = "hostile-secret-7c1d"
WORKFLOW: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 2}},
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 7, "steps": 4, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "nb", "images": ["8", 0]}},
    "10": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["8", 0]}},
}


STEPS = [(1, 4), (2, 4), (3, 4), (4, 4)]  # the sampler's progress with 4 steps


def workflow(steps: int = 4) -> rc.Workflow:
    return rc.Workflow(WORKFLOW).override(KSampler={"steps": steps})


def of(job: Job, kind: type) -> list[Any]:
    return [e for e in job.history if isinstance(e, kind)]


@pytest.fixture(autouse=True)
def _quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SocketRun, "IDLE_CHECK", 2.0)
    monkeypatch.setattr(SocketRun, "POLL_INTERVAL", 0.3)


@contextlib.asynccontextmanager
async def serving(**switches: Any) -> AsyncIterator[tuple[ComfyDouble, AsyncComfyUI]]:
    async with ComfyDouble(prefix=f"/{SECRET}", **switches) as double, AsyncComfyUI(double.url) as comfy:
        yield double, comfy


# --- A: a prompt that is over before its socket is read ---------------------------------------


@pytest.mark.parametrize("metadata", [True, False], ids=["type4", "type1"])
async def test_a_prompt_over_before_the_socket_is_read_keeps_every_event_and_socket_output(
        metadata: bool, tmp_path: Path) -> None:
    async with serving(finish_before_reply=True, metadata_previews=metadata) as (double, comfy):
        job = await comfy.queue(workflow())
        assert job.id in double.history  # the prompt ended before the client read a frame
        result = await job.result(timeout=30)

        assert job.status is Status.SUCCEEDED
        assert isinstance(job.history[0], Started)
        assert [e.node for e in of(job, NodeStarted)] == ["4", "6", "7", "5", "3", "8", "9", "10"]
        assert [(e.value, e.max) for e in of(job, Progress) if e.node == "3"] == STEPS
        previews = of(job, Preview)
        assert job.previews_seen == 4 and len(previews) == 1 and {p.node for p in previews} == {"3"}
        assert all(p.mime == "image/jpeg" for p in previews)

        held = [m for m in result.media if m.node == "10"]
        assert [m.filename for m in held] == ["ws_10_1.png", "ws_10_2.png"]
        assert [m.kind for m in held] == ["image", "image"]
        assert [await m.read() for m in held] == double.ws_images
        assert [m.filename for m in result.media if m.node == "9"] == ["nb_00001_.png"]
        assert {id(e.media) for e in of(job, Output)} >= {id(m) for m in held}
        for media in held:
            assert "PNG" not in repr(media) and len(repr(media)) < 300
        paths = await result.save(tmp_path)
        assert sorted(p.name for p in paths) == ["nb_00001_.png", "ws_10_1.png", "ws_10_2.png"]
        assert downloaded(tmp_path / "ws_10_2.png") == double.ws_images[1]
        again = await held[0].save(tmp_path)  # never over a file
        assert again.name == "ws_10_1 (1).png" and downloaded(again) == double.ws_images[0]


async def test_socket_outputs_of_a_normal_run_are_results_too() -> None:
    async with serving() as (double, comfy):
        result = await (await comfy.queue(workflow())).result(timeout=30)
        assert [await m.read() for m in result.media if m.node == "10"] == double.ws_images
        assert len(double.ws_images) == 2


# --- B: a server that dies mid-run ---------------------------------------------------------------


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_server_that_dies_mid_run_fails_the_job_with_contact_lost(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    limit = 2.0
    monkeypatch.setenv("RUNCOMFY_CONTACT_TIMEOUT", str(limit))
    caplog.set_level(logging.INFO)
    async with serving(step_delay=0.2) as (double, comfy):
        job = await comfy.queue(workflow(steps=500))
        await until(lambda: of(job, Progress), what="the sampler to start")
        caplog.clear()
        await double.vanish()
        started = time.monotonic()
        with pytest.raises(ContactLost) as lost:
            await asyncio.wait_for(job.result(), limit + 10)
        assert time.monotonic() - started < limit + 8
        assert job.status is Status.FAILED and isinstance(job.error, ContactLost)
        text = str(lost.value)
        assert "Lost contact with the ComfyUI server since" in text
        assert f"`await comfy.attach('{job.id}')`" in text and SECRET not in text
        said = warnings(caplog)
        assert 1 <= len(said) <= 2, said
        assert not any(SECRET in line for line in said)


async def test_cancel_while_the_server_is_gone_ends_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCOMFY_CONTACT_TIMEOUT", "30")
    async with serving(step_delay=0.2) as (double, comfy):
        job = await comfy.queue(workflow(steps=500))
        await until(lambda: of(job, Progress), what="the sampler to start")
        await double.vanish()
        await until(lambda: job.status is Status.RUNNING, what="the job to still run here")
        started = time.monotonic()
        cancelled = None
        with contextlib.suppress(TransportError):
            cancelled = await asyncio.wait_for(job.cancel(wait=2), 15)
        assert time.monotonic() - started < 10
        assert not cancelled and job.status is not Status.CANCELLED  # nothing confirmed it


# --- C: WebSocket handshakes answered 429 -------------------------------------------------------


@pytest.mark.parametrize("retry_after", ["0", "1"])
async def test_a_429_on_the_websocket_handshake_is_retried_and_progress_is_live(retry_after: str) -> None:
    async with serving(ws_busy=2, ws_retry_after=retry_after) as (double, comfy):
        job = await comfy.queue(workflow())
        await job.result(timeout=30)
        assert double.ws_refused == 2 and len(double.ws_connects) >= 1
        assert [(e.value, e.max) for e in of(job, Progress) if e.node == "3"] == STEPS
        assert job.previews_seen == 4
