"""A job's memory is bounded: of its sampler previews it keeps the latest one and a count."""

from __future__ import annotations

import asyncio
from typing import Any

from runcomfy_nb.events import Event, Finished, JobResult, Preview, Progress, Queued
from runcomfy_nb.jobs import Job

from ..helpers import until

FRAMES = 500
FRAME_BYTES = 100_000


class Previewing:
    """A backend that emits `frames` previews of `size` bytes (a step and a frame each), then ends;
    with `begin` (after a Queued event) / `gate`, it waits for that before the first frame / before
    it ends."""

    def __init__(self, frames: int = FRAMES, size: int = FRAME_BYTES, gate: asyncio.Event | None = None,
                 begin: asyncio.Event | None = None) -> None:
        self.frames, self.size, self.gate, self.begin = frames, size, gate, begin

    async def run(self, job: Job) -> JobResult:
        if self.begin is not None:
            job.emit(Queued(position=1))
            await self.begin.wait()
        for step in range(1, self.frames + 1):
            job.emit(Progress(step, self.frames, node="3"))
            job.emit(Preview(bytes([step % 256]) * self.size, node="3"))
            if step % 50 == 0:
                await asyncio.sleep(0)  # a backend gives the loop a turn now and then, as a socket's does
        if self.gate is not None:
            await self.gate.wait()
        return JobResult(job.id)

    async def cancel(self) -> bool:
        return False


def preview_bytes(events: list[Event]) -> int:
    return sum(len(e.data) for e in events if isinstance(e, Preview))


async def test_a_finished_job_keeps_its_last_preview_and_a_count_not_every_frame() -> None:
    job = Job(Previewing(), kind="test", id="many-previews")
    await job.result(timeout=30)
    assert preview_bytes(job.history) < 1_000_000
    assert job.previews_seen == FRAMES
    previews = [e for e in job.history if isinstance(e, Preview)]
    assert len(previews) == 1 and previews[0].data[:1] == bytes([FRAMES % 256])
    assert sum(isinstance(e, Progress) for e in job.history) == FRAMES  # the rest is all kept
    assert isinstance(job.history[-1], Finished)


async def test_a_running_job_keeps_only_its_latest_preview_too() -> None:
    gate = asyncio.Event()
    job = Job(Previewing(gate=gate), kind="test", id="running")
    await until(lambda: job.previews_seen == FRAMES, what="every frame")
    assert preview_bytes(job.history) == FRAME_BYTES and not job.done
    gate.set()
    await job.result(timeout=30)


async def test_live_followers_still_see_every_frame_and_late_ones_the_latest() -> None:
    begin, gate = asyncio.Event(), asyncio.Event()
    job = Job(Previewing(frames=20, size=10, gate=gate, begin=begin), kind="test", id="followed")
    live: list[Event] = []
    job.subscribe(lambda _job, event: live.append(event))

    async def follow() -> list[Event]:
        seen = []
        async for event in job.events():
            seen.append(event)
            begin.set()  # following (the Queued event came): now the frames may come
        return seen

    following = asyncio.ensure_future(follow())
    await until(lambda: job.previews_seen == 20, what="every frame")
    late: list[Any] = []
    job.subscribe(lambda _job, event: late.append(event))  # a widget made late: replay
    gate.set()
    await job.result(timeout=30)
    followed = await following
    assert sum(isinstance(e, Preview) for e in live) == 20
    assert sum(isinstance(e, Preview) for e in followed) == 20
    kept = [e for e in late if isinstance(e, Preview)]
    assert kept == [e for e in job.history if isinstance(e, Preview)] and kept[0].data == bytes([20]) * 10
    replayed = [event async for event in job.events()]  # after the end: the kept history
    assert replayed == job.history
