"""One Job everywhere: a serverless request, a ComfyUI prompt, a Model API request and a Comfy
Cloud job, each against the emulator on real sockets, go through the same lifecycle, events,
`result()`, `cancel()` and render in the same JobProgress and Gallery."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.app import load_config
from runcomfy_nb.errors import JobCancelled, JobFailed
from runcomfy_nb.events import Failed, Finished, Output, Queued, Started
from runcomfy_nb.jobs import Job
from runcomfy_nb.status import Status
from runcomfy_nb.widgets import Gallery, JobProgress

from ..helpers import until

TOKEN = "rc_one_job_SENTINEL_0c7d"
DEPLOYMENT = "dep-flux-kontext"
MODEL = "blackforestlabs/flux-1-kontext/pro/edit"
MODEL_INPUTS = {"prompt": "an orange umbrella", "image_url": "https://example.org/in.webp", "seed": 3}
BOOM = "CUDA out of memory (emulated)"
SEEDS = itertools.count(1000)


@dataclass
class Machine:
    url: str
    server_id: str
    workflow: dict[str, Any]


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    config = load_config(None)
    config["machines"].update(rate_per_second=0, ready_seconds=1, deleting_seconds=1)
    with Emulator(speed=40, token=TOKEN, config=config) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def machine(emu: Emulator) -> Iterator[Machine]:
    client = rc.RunComfy(token=TOKEN, base_url=emu.url, user_id=emu.user_id)
    version = next(w["version_id"] for w in load_config(None)["workflows"] if w["preset"] == "image")
    launched = client.machines.launch(version, server_type="large", duration="1h")
    launched.wait_ready(timeout=30, poll=0.05)
    url = emu.comfy_url(launched.id)
    assert url is not None
    yield Machine(url, launched.id, emu.machine_workflow(version))
    launched.stop()
    client.aclose()


@dataclass
class Kind:
    """How to make, for one kind of run, a job that succeeds, one that fails with BOOM, and one
    that waits (queued or running) until it is cancelled."""

    name: str
    succeed: Callable[[], Awaitable[Job]]
    fail: Callable[[], Awaitable[Job]]
    hold: Callable[[], Awaitable[Job]]
    running_when_held: bool  # the held job runs (a ComfyUI prompt), or waits in the queue


@contextlib.asynccontextmanager
async def kind_of(name: str, emu: Emulator, machine: Machine) -> AsyncIterator[Kind]:
    async with rc.AsyncRunComfy(token=TOKEN, base_url=emu.url, model_api_url=emu.url) as client:
        if name == "serverless":
            def submit() -> Awaitable[Job]:
                return client.deployments.submit(DEPLOYMENT, overrides={"31": {"inputs": {"seed": 5}}})

            async def fail() -> Job:
                emu.set_fault(DEPLOYMENT, "job_fails", message=BOOM)
                return await submit()

            async def hold() -> Job:
                emu.set_fault(DEPLOYMENT, "slow_queue", seconds=100_000)
                return await submit()

            yield Kind(name, submit, fail, hold, running_when_held=False)
        elif name == "model":
            def submit() -> Awaitable[Job]:
                return client.models.submit(MODEL, MODEL_INPUTS)

            async def fail() -> Job:
                emu.set_fault(MODEL, "job_fails", message=BOOM)
                return await submit()

            async def hold() -> Job:
                emu.set_fault(MODEL, "slow_queue", seconds=100_000)
                return await submit()

            yield Kind(name, submit, fail, hold, running_when_held=False)
        elif name == "comfyui":
            async with rc.AsyncComfyUI(machine.url) as comfy:
                workflow = rc.Workflow(machine.workflow)

                def queue(steps: int) -> Awaitable[Job]:  # a new seed: ComfyUI caches outputs
                    return comfy.queue(workflow.override({"31": {"seed": next(SEEDS), "steps": steps}}))

                async def fail() -> Job:
                    emu.set_fault(machine.server_id, "node_raises", exception_type="torch.OutOfMemoryError",
                                  message=BOOM)
                    return await queue(4)

                yield Kind(name, lambda: queue(4), fail, lambda: queue(10_000), running_when_held=True)
        elif name == "cloud":
            async with rc.AsyncComfyCloud(base_url=emu.cloud_url, api_key=emu.comfy_api_key) as cloud:
                workflow = rc.Workflow(machine.workflow)

                def submit(steps: int) -> Awaitable[Job]:  # a new seed: Cloud caches outputs too
                    return cloud.queue(workflow.override({"31": {"seed": next(SEEDS), "steps": steps}}))

                async def fail() -> Job:
                    emu.set_fault("cloud", "node_raises", exception_type="OOMError", message=BOOM)
                    return await submit(4)

                yield Kind(name, lambda: submit(4), fail, lambda: submit(10_000), running_when_held=True)
        else:
            raise AssertionError(name)


KINDS = ["serverless", "comfyui", "model", "cloud"]


@pytest.fixture(params=KINDS)
async def kind(request: pytest.FixtureRequest, emu: Emulator, machine: Machine) -> AsyncIterator[Kind]:
    emu.clear_faults()
    async with kind_of(request.param, emu, machine) as made:
        yield made
    emu.clear_faults()


def lifecycle(job: Job) -> list[str]:
    """The statuses the job's events moved it through, in order, without repeats."""
    seen: list[str] = []
    for event in job.history:
        state = {Queued: "queued", Started: "running", Finished: "succeeded"}.get(type(event))
        if isinstance(event, Failed):
            state = "cancelled" if isinstance(event.error, JobCancelled) else "failed"
        if state and (not seen or seen[-1] != state):
            seen.append(state)
    return seen


async def test_success_lifecycle_events_result_and_widgets(kind: Kind) -> None:
    job = await kind.succeed()
    assert job.kind == kind.name and job.id and job.status in (Status.QUEUED, Status.RUNNING)
    progress = JobProgress(job)
    result = await job.result(timeout=60)

    assert job.status is Status.SUCCEEDED and job.done and job.error is None
    assert lifecycle(job)[-2:] == ["running", "succeeded"]
    assert lifecycle(job)[0] in ("queued", "running")
    assert isinstance(job.history[-1], Finished) and job.history[-1].result is result
    outputs = [e.media for e in job.history if isinstance(e, Output)]
    assert outputs and sorted(m.filename for m in outputs) == sorted(m.filename for m in result.media)
    assert result.images and all(m.kind == "image" for m in result.images)
    data = await result.images[0].read()
    assert data[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb", b"RIFF")
    replayed = [event async for event in job.events()]
    assert replayed == job.history

    await until(lambda: progress.status == "succeeded")
    assert progress.kind == kind.name and progress.outputs == len(outputs) and progress.error == ""
    assert "succeeded" in progress._repr_mimebundle_()[0]["text/plain"]
    gallery = Gallery(result.media)
    await until(lambda: all(item["thumb"] for item in gallery.items if item["kind"] == "image"))
    assert gallery._repr_mimebundle_()[0]["text/html"].count("<img") >= len(result.images)


async def test_failure_lifecycle_and_message(kind: Kind) -> None:
    job = await kind.fail()
    progress = JobProgress(job)
    with pytest.raises(JobFailed, match="out of memory") as caught:
        await job.result(timeout=60)
    assert caught.value.job_id == job.id
    assert job.status is Status.FAILED and lifecycle(job)[-1] == "failed"
    assert isinstance(job.history[-1], Failed) and job.error is caught.value
    await until(lambda: progress.status == "failed")
    assert "out of memory" in progress.error


async def test_cancel_lifecycle(kind: Kind) -> None:
    job = await kind.hold()
    progress = JobProgress(job)
    wanted = Status.RUNNING if kind.running_when_held else Status.QUEUED
    await until(lambda: job.status is wanted)
    assert await job.cancel() is True
    assert job.status is Status.CANCELLED and lifecycle(job)[-1] == "cancelled"
    with pytest.raises(JobCancelled):
        await job.result(timeout=5)
    assert await job.cancel() is True  # cancelling a cancelled job is a no-op that says so
    await until(lambda: progress.status == "cancelled")


async def test_timeout_cancels_the_remote_run(kind: Kind) -> None:
    job = await kind.hold()
    with pytest.raises(rc.JobTimeout, match="cancelled it"):
        await job.result(timeout=0.5)
    assert job.status is Status.CANCELLED
