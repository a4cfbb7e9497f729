"""Ctrl-C and cancelled waits in the README's own async pattern: the remote job is cancelled, and
the server has confirmed it, before the wait re-raises; a timeout is always a JobTimeout."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.errors import ServerError
from runcomfy_nb.events import JobResult
from runcomfy_nb.jobs import Job
from runcomfy_nb.status import Status

from ..helpers import TOKEN

DEP = "dep-flux-kontext"
OVERRIDES = {"31": {"inputs": {"seed": 11}}}


def remote_status(emulator: Emulator, request_id: str) -> str:
    return next(r.status for r in emulator.requests_for(DEP) if r.id == request_id)


async def test_cancelled_wait_inside_async_with_cancels_the_remote_job(fresh: Emulator) -> None:
    fresh.set_fault(DEP, "slow_queue", seconds=100_000)
    submitted = asyncio.Event()
    jobs: list[Job] = []

    async def cell() -> None:
        async with rc.AsyncRunComfy(token=TOKEN, base_url=fresh.url) as client:
            jobs.append(await client.deployments.submit(DEP, overrides=OVERRIDES))
            submitted.set()
            await jobs[0].result()

    task = asyncio.create_task(cell())
    await asyncio.wait_for(submitted.wait(), 20)
    task.cancel()  # what Ctrl-C does to `asyncio.run(main())`
    with pytest.raises(asyncio.CancelledError):
        await task
    # Nothing left to wait for: the cancel was sent and confirmed before the wait re-raised.
    assert remote_status(fresh, jobs[0].id) == "cancelled"
    assert jobs[0].status is Status.CANCELLED


def test_ctrl_c_in_a_script_cancels_the_remote_job(fresh: Emulator) -> None:
    fresh.set_fault(DEP, "slow_queue", seconds=100_000)
    script = textwrap.dedent(f"""
        import asyncio, sys
        import runcomfy_nb as rc

        async def main():
            async with rc.AsyncRunComfy() as client:
                job = await client.deployments.submit({DEP!r}, overrides={OVERRIDES!r})
                print("SUBMITTED", job.id, flush=True)
                await job.result()

        asyncio.run(main())
    """)
    env = {**os.environ, "RUNCOMFY_TOKEN": TOKEN, "RUNCOMFY_BASE_URL": fresh.url}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("SUBMITTED"), proc.stderr.read() if proc.stderr else line
        request_id = line.split()[1]
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert remote_status(fresh, request_id) == "cancelled"


class _Stuck:
    """A backend whose run never ends and whose cancel meets a server error."""

    def __init__(self) -> None:
        self.cancels = 0

    async def run(self, job: Job) -> JobResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def cancel(self) -> bool:
        self.cancels += 1
        raise ServerError("RunComfy Serverless API failed (500)", status=500)


async def test_a_timeout_is_a_job_timeout_whatever_the_cancel_met(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runcomfy_nb.jobs.CANCEL_WAIT", 1.0, raising=False)
    backend = _Stuck()
    job = Job(backend, kind="serverless", id="req-1")
    with pytest.raises(rc.JobTimeout, match="could not be cancelled") as caught:
        await job.result(timeout=0.2)
    assert "still be running" in str(caught.value)
    assert backend.cancels >= 2  # a transient failure is tried again within the bound
    job.detach()


async def test_closing_a_client_finishes_the_cancels_it_owes(fresh: Emulator) -> None:
    fresh.set_fault(DEP, "slow_queue", seconds=100_000)
    client = rc.AsyncRunComfy(token=TOKEN, base_url=fresh.url)
    job = await client.deployments.submit(DEP, overrides=OVERRIDES)
    waiter = asyncio.create_task(job.result())
    await asyncio.sleep(0)  # the wait has begun
    waiter.cancel()
    closing: Any = asyncio.create_task(client.aclose())  # raced against the cancel
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await closing
    assert remote_status(fresh, job.id) == "cancelled"


async def test_a_job_left_running_when_its_client_closes_is_detached_not_failed(fresh: Emulator) -> None:
    fresh.set_fault(DEP, "slow_queue", seconds=100_000)
    async with rc.AsyncRunComfy(token=TOKEN, base_url=fresh.url, model_api_url=fresh.url) as client:
        job = await client.deployments.submit(DEP, overrides=OVERRIDES)
        model_job = await client.models.submit("blackforestlabs/flux-1-kontext/pro/edit",
                                               {"prompt": "x", "image_url": "https://example.org/a.png"})
    await job.wait(2)
    await model_job.wait(2)
    for left in (job, model_job):  # it runs on there: nothing here may say it failed
        assert left.detached and left.status is not Status.FAILED and left.error is None
    assert remote_status(fresh, job.id) == "in_queue"
    await rc.AsyncRunComfy(token=TOKEN, base_url=fresh.url).deployments.cancel(DEP, job.id)


async def test_a_cancelled_wait_on_a_comfyui_prompt_interrupts_it_before_the_client_closes() -> None:
    from ..doubles.comfyui_double import ComfyDouble
    from .test_comfyui_hostile import workflow

    async with ComfyDouble(step_delay=0.2) as double:
        started = asyncio.Event()
        jobs: list[Job] = []

        async def cell() -> None:
            async with rc.AsyncComfyUI(double.url) as comfy:
                jobs.append(await comfy.queue(workflow(steps=500)))
                jobs[0].subscribe(lambda job, _event: started.set() if job.status is Status.RUNNING else None)
                await jobs[0].result()

        task = asyncio.create_task(cell())
        await asyncio.wait_for(started.wait(), 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert jobs[0].status is Status.CANCELLED  # the server said execution_interrupted
