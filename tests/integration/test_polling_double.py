"""Polled jobs (serverless ComfyUI and LoRA deployments, the Model API) against the independent
double of api/serverless.md and api/model-api.md: an odd answer (an error body in a 200, a page that
is not JSON, a reply without its status, 429/500 past the transport's retries, explicit nulls) never
ends a paid job nor drops its outputs, a cancel is still sent and confirmed while polls fail, and a
server that vanishes or hangs ends the job with ContactLost after the contact timeout."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator

import pytest
from PIL import Image

import runcomfy_nb as rc
from runcomfy_nb.errors import ContactLost, transient
from runcomfy_nb.jobs import Job
from runcomfy_nb.polled import read_result, read_status
from runcomfy_nb.status import Status

from ..doubles.runcomfy_double import RunComfyDouble
from ..helpers import until

TOKEN = "rc_polling_double_SENTINEL_41d9"
MODEL = "acme/painter/v1"
KINDS = ("comfyui", "lora", "model")
MEDIA = {"comfyui": 2, "lora": 2, "model": 1}
REATTACH = {"comfyui": "client.deployments.attach('dep-comfy', '{id}')",
            "lora": "client.deployments.attach('dep-lora', '{id}')",
            "model": f"client.models.attach('{{id}}', model_id='{MODEL}')"}


@pytest.fixture
async def double() -> AsyncIterator[RunComfyDouble]:
    async with RunComfyDouble(token=TOKEN, run_seconds=0.3) as server:
        yield server


@pytest.fixture
async def client(double: RunComfyDouble) -> AsyncIterator[rc.AsyncRunComfy]:
    async with rc.AsyncRunComfy(token=TOKEN, base_url=double.url, model_api_url=double.url) as c:
        yield c


async def submit(client: rc.AsyncRunComfy, kind: str) -> Job:
    if kind == "comfyui":
        return await client.deployments.submit("dep-comfy", {"31": {"inputs": {"seed": 1}}})
    if kind == "lora":
        return await client.deployments.submit("dep-lora", inputs={"prompt": "warm light"})
    return await client.models.submit(MODEL, {"prompt": "a lighthouse"})


async def assert_full_result(job: Job, kind: str, double: RunComfyDouble) -> None:
    result = await job.result(timeout=30)
    assert job.status is Status.SUCCEEDED
    assert len(result.media) == MEDIA[kind]
    assert Image.open(io.BytesIO(await result.media[0].read())).format == "PNG"
    assert double.state(job.id) == "succeeded"
    assert any(c.status == 200 for c in double.calls_to("result", job.id))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("operation", ["status", "result"])
@pytest.mark.parametrize("mode", ["error_body", "not_json", "no_status"])
async def test_one_odd_answer_does_not_end_the_job(client: rc.AsyncRunComfy, double: RunComfyDouble,
                                                   kind: str, operation: str, mode: str) -> None:
    double.hostile(operation, mode, times=1)
    job = await submit(client, kind)
    await assert_full_result(job, kind, double)
    assert double.calls_to(operation, job.id)[0].status == 200  # the odd answer was met


@pytest.mark.parametrize("kind", KINDS)
async def test_explicit_nulls_mean_absent(client: rc.AsyncRunComfy, double: RunComfyDouble,
                                          kind: str) -> None:
    double.hostile("status", "nulls", times=-1)
    double.hostile("result", "nulls", times=-1)
    job = await submit(client, kind)
    await assert_full_result(job, kind, double)


@pytest.mark.parametrize("kind", KINDS)
async def test_429_and_500_past_the_transport_retries(client: rc.AsyncRunComfy, double: RunComfyDouble,
                                                      kind: str) -> None:
    double.hostile("status", "http_500", times=4)  # conftest: 3 transport attempts per call
    double.hostile("status", "http_429", times=4)
    double.hostile("result", "http_500", times=4)
    job = await submit(client, kind)
    await assert_full_result(job, kind, double)
    assert sum(c.status >= 429 for c in double.calls_to("status", job.id)) == 8


@pytest.mark.parametrize("kind", KINDS)
async def test_cancel_sent_and_confirmed_while_polls_fail(client: rc.AsyncRunComfy, double: RunComfyDouble,
                                                          kind: str) -> None:
    double.hold = True
    double.hostile("status", "error_body", times=-1)
    job = await submit(client, kind)
    await until(lambda: len(double.calls_to("status", job.id)) >= 2)
    cancelling = asyncio.create_task(job.cancel(wait=20))
    await until(lambda: double.state(job.id) == "cancelled")
    assert [c.status for c in double.calls_to("cancel", job.id)] == [202]
    assert not job.done  # not confirmed by us yet: every poll still fails
    double.calm()
    assert await cancelling is True
    assert job.status is Status.CANCELLED
    with pytest.raises(rc.JobCancelled):
        await job.result(5)


@pytest.mark.parametrize("kind", KINDS)
async def test_vanished_server_ends_with_contact_lost(client: rc.AsyncRunComfy, double: RunComfyDouble,
                                                      kind: str, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("RUNCOMFY_CONTACT_TIMEOUT", "1")
    double.hold = True
    job = await submit(client, kind)
    await until(lambda: any(c.status == 200 for c in double.calls_to("status", job.id)))
    await double.vanish()
    start = time.monotonic()
    with pytest.raises(ContactLost) as caught:
        await job.result(timeout=30)
    assert time.monotonic() - start < 8
    assert job.status is Status.FAILED
    message = str(caught.value)
    assert "Lost contact with the RunComfy" in message and "may still be running there" in message
    assert REATTACH[kind].format(id=job.id) in message
    polling = [r for r in caplog.records if r.levelno >= logging.WARNING and r.module == "polled"]
    assert len(polling) == 1 and "polling on" in polling[0].getMessage()  # one line, not one a poll


@pytest.mark.parametrize("kind", KINDS)
async def test_hanging_server_ends_with_contact_lost(client: rc.AsyncRunComfy, double: RunComfyDouble,
                                                     kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCOMFY_CONTACT_TIMEOUT", "1")
    double.hold = True
    double.hostile("status", "hang", times=-1)
    job = await submit(client, kind)
    start = time.monotonic()
    with pytest.raises(ContactLost, match="re-attach"):
        await job.result(timeout=30)  # the client's own read timeout is 30 s: contact bounds it
    assert time.monotonic() - start < 8


def test_read_result_and_status_treat_null_as_absent() -> None:
    ok = read_result("r1", {"status": "succeeded", "outputs": None, "output": {"images": ["https://x.org/a.png"]},
                            "error": None, "finished_at": None, "created_at": None}, None)
    assert ok.result is not None and [m.url for m in ok.result.media] == ["https://x.org/a.png"]
    assert ok.duration is None
    failed = read_result("r2", {"status": "failed", "error": None, "outputs": None}, None)
    assert failed.error == "no error details were given"
    status = read_status("r3", {"status": "in_progress", "queue_position": None, "instance_id": None})
    assert status.queue_position is None and status.instance_id is None and status.status is Status.RUNNING
    for odd in ({"request_id": "r4"}, {"status": None}, "<html>502</html>", None):
        with pytest.raises(rc.APIError) as caught:
            read_status("r4", odd)
        assert transient(caught.value)  # polled again, never the job's end
