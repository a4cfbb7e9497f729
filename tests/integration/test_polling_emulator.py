"""Polled jobs (serverless ComfyUI and LoRA deployments, the Model API) against the emulator's
hostile modes: an error body in a 200 on status or result, explicit nulls, 429/500 past the
transport's retries and a server that vanishes mid-run; and the emulator's wire shape of each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.errors import ContactLost
from runcomfy_nb.jobs import Job
from runcomfy_nb.status import Status

from ..helpers import TOKEN, until, wait_for

FLUX, LORA, MODEL = "dep-flux-kontext", "dep-lora-portrait", "blackforestlabs/flux-1-kontext/pro/edit"
KINDS = ("comfyui", "lora", "model")
TARGET = {"comfyui": FLUX, "lora": LORA, "model": MODEL}
MEDIA = {"comfyui": 2, "lora": 2, "model": 1}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(fresh: Emulator) -> AsyncIterator[rc.AsyncRunComfy]:
    async with rc.AsyncRunComfy(token=TOKEN, base_url=fresh.url, model_api_url=fresh.url) as c:
        yield c


async def submit(client: rc.AsyncRunComfy, kind: str) -> Job:
    if kind == "comfyui":
        return await client.deployments.submit(FLUX, {"31": {"inputs": {"seed": 3}}})
    if kind == "lora":
        return await client.deployments.submit(LORA, inputs={"prompt": "warm light", "seed": 3})
    return await client.models.submit(MODEL, {"prompt": "an umbrella", "image_url": "https://example.org/a.webp"})


def remote_status(emu: Emulator, kind: str, request_id: str) -> str:
    records = emu.model_requests(MODEL) if kind == "model" else emu.requests_for(TARGET[kind])
    return next(r.status for r in records if r.id == request_id)


def calls(emu: Emulator, request_id: str, operation: str) -> list[Any]:
    return [r for r in emu.log if r.path.endswith(f"/{request_id}/{operation}")]


async def assert_full_result(job: Job, kind: str, emu: Emulator) -> None:
    result = await job.result(timeout=30)
    assert job.status is Status.SUCCEEDED and len(result.media) == MEDIA[kind]
    assert await result.media[0].read()
    assert remote_status(emu, kind, job.id) == "succeeded"
    assert any(r.status == 200 for r in calls(emu, job.id, "result"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("operation", ["status", "result"])
async def test_one_error_body_in_a_200_does_not_end_the_job(client: rc.AsyncRunComfy, fresh: Emulator,
                                                           kind: str, operation: str) -> None:
    fresh.set_fault(TARGET[kind], "body_error", on=operation, error_code="internal_error",
                    message="Internal error")
    job = await submit(client, kind)
    await assert_full_result(job, kind, fresh)


@pytest.mark.parametrize("kind", KINDS)
async def test_explicit_nulls_mean_absent(client: rc.AsyncRunComfy, fresh: Emulator, kind: str) -> None:
    fresh.set_fault(TARGET[kind], "nulls", count=-1, on="any")
    job = await submit(client, kind)
    await assert_full_result(job, kind, fresh)


@pytest.mark.parametrize("kind", KINDS)
async def test_429_and_500_past_the_transport_retries(client: rc.AsyncRunComfy, fresh: Emulator,
                                                      kind: str) -> None:
    fresh.set_fault(TARGET[kind], "server_error", count=4, on="status")  # 3 transport attempts a call
    fresh.set_fault(TARGET[kind], "rate_limit", count=4, on="status", retry_after=0)
    job = await submit(client, kind)
    await assert_full_result(job, kind, fresh)
    assert sum(r.status >= 429 for r in calls(fresh, job.id, "status")) == 8


@pytest.mark.parametrize("kind", KINDS)
async def test_cancel_sent_and_confirmed_while_polls_fail(client: rc.AsyncRunComfy, fresh: Emulator,
                                                          kind: str) -> None:
    fresh.set_fault(TARGET[kind], "slow_queue", seconds=400)
    job = await submit(client, kind)
    fresh.set_fault(TARGET[kind], "body_error", count=-1, on="status", error_code="internal_error")
    await until(lambda: len(calls(fresh, job.id, "status")) >= 2)
    cancelling = asyncio.create_task(job.cancel(wait=20))
    await until(lambda: remote_status(fresh, kind, job.id) == "cancelled")
    assert [r.status for r in calls(fresh, job.id, "cancel")] == [202]
    assert not job.done
    fresh.clear_faults()
    assert await cancelling is True
    assert job.status is Status.CANCELLED


@pytest.mark.parametrize("kind", KINDS)
async def test_vanished_emulator_ends_with_contact_lost(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCOMFY_CONTACT_TIMEOUT", "1")
    emu = Emulator(speed=20, token=TOKEN)
    emu.start()
    try:
        async with rc.AsyncRunComfy(token=TOKEN, base_url=emu.url, model_api_url=emu.url) as client:
            emu.set_fault(TARGET[kind], "slow_queue", seconds=400)
            job = await submit(client, kind)
            await until(lambda: any(r.status == 200 for r in calls(emu, job.id, "status")))
            await asyncio.to_thread(emu.stop)
            start = time.monotonic()
            with pytest.raises(ContactLost) as caught:
                await job.result(timeout=30)
            assert time.monotonic() - start < 8
    finally:
        emu.stop()
    assert job.status is Status.FAILED
    assert job.id in str(caught.value) and ".attach(" in str(caught.value)


# --- the emulator's hostile answers on the wire --------------------------------------------------


def test_body_error_on_status_and_nulls_on_the_wire(fresh: Emulator) -> None:
    run = httpx.post(f"{fresh.url}/prod/v1/deployments/{LORA}/inference", json={"prompt": "x"},
                     headers=AUTH).json()
    fresh.set_fault(LORA, "body_error", on="status", error_code="internal_error", message="oops")
    odd = httpx.get(run["status_url"], headers=AUTH)
    assert odd.status_code == 200 and odd.json() == {"error_code": "internal_error", "error_message": "oops"}
    fresh.set_fault(LORA, "nulls", count=-1, on="any")

    def completed() -> dict[str, Any] | None:
        status: dict[str, Any] = httpx.get(run["status_url"], headers=AUTH).json()
        if status["status"] == "completed":
            return status
        assert status["queue_position"] is None or status["status"] == "in_queue"
        return None

    status = wait_for(completed, timeout=10)
    assert status["queue_position"] is None
    result = httpx.get(run["result_url"], headers=AUTH).json()
    assert result["outputs"] is None and result["error"] is None and len(result["output"]["images"]) == 2
    assert result["status"] == "succeeded"
