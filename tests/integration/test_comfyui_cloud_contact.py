"""AsyncComfyCloud when the Comfy Cloud API stops answering mid-job: the emulator process goes away
(its port closes, its sockets are cut), and the job fails with ContactLost in bounded time."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import uuid
from typing import Any

import pytest

from runcomfy_nb.clients.cloud import AsyncComfyCloud
from runcomfy_nb.clients.comfyui import SocketRun
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.app import load_config
from runcomfy_nb.errors import ContactLost
from runcomfy_nb.events import Progress
from runcomfy_nb.status import Status

from ..helpers import TOKEN, until

KEY = "cloud-contact-key-SENTINEL-91b3"


def long_workflow() -> dict[str, Any]:
    wf = copy.deepcopy(load_config(None)["presets"]["image"])
    wf["31"]["inputs"].update(steps=2000, seed=uuid.uuid4().int % 10**12)
    return wf


async def test_a_cloud_that_stops_answering_fails_the_job_with_contact_lost(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    limit = 2.0
    monkeypatch.setenv("RUNCOMFY_CONTACT_TIMEOUT", str(limit))
    monkeypatch.setattr(SocketRun, "IDLE_CHECK", 2.0)
    monkeypatch.setattr(SocketRun, "POLL_INTERVAL", 0.3)
    caplog.set_level(logging.INFO)
    emu = Emulator(speed=50.0, token=TOKEN, comfy_api_key=KEY)
    emu.start()
    try:
        async with AsyncComfyCloud(KEY, base_url=emu.cloud_url) as cloud:
            job = await cloud.queue(long_workflow())
            await until(lambda: any(isinstance(e, Progress) for e in job.history), 15, "the job sampling")
            caplog.clear()
            await asyncio.to_thread(emu.stop)
            started = time.monotonic()
            with pytest.raises(ContactLost) as lost:
                await asyncio.wait_for(job.result(), limit + 15)
            assert time.monotonic() - started < limit + 12
    finally:
        emu.stop()
    assert job.status is Status.FAILED
    text = str(lost.value)
    assert "Lost contact with the Comfy Cloud service since" in text
    assert f"`await cloud.attach('{job.id}')`" in text and KEY not in text
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(said) <= 2, said
    assert not any(KEY in line for line in said)
