"""The blocking facade: the reasons we chose a loop thread over nest-asyncio, as tests."""

from __future__ import annotations

import _thread
import asyncio
import threading
import time

import pytest

import runcomfy_nb as rc
from runcomfy_nb import loops, sync
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.status import Status

from ..helpers import TOKEN, wait_for

FLUX = "dep-flux-kontext"


def test_blocking_client_mirrors_async(fresh: Emulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with rc.RunComfy(token=TOKEN, base_url=fresh.url) as client:
        job = client.deployments.submit(FLUX, {"31": {"inputs": {"seed": 5}}})
        events = [type(e).__name__ for e in job.events()]
        result = job.result(timeout=30)
        assert events[-1] == "Finished" and result.images
        paths = result.save(tmp_path)
        assert all(p.exists() for p in paths)


def test_jobs_progress_while_caller_is_idle(fresh: Emulator) -> None:
    client = rc.RunComfy(token=TOKEN, base_url=fresh.url)
    job = client.deployments.submit(FLUX, {})
    # nobody waits on the job: the background loop follows it anyway
    wait_for(lambda: job.status is Status.SUCCEEDED)


def test_live_updates_during_a_blocking_call(fresh: Emulator) -> None:
    from runcomfy_nb.widgets import JobProgress

    fresh.set_fault(FLUX, "slow_queue", seconds=5)
    client = rc.RunComfy(token=TOKEN, base_url=fresh.url)
    job = client.deployments.submit(FLUX, {})
    widget = loops.call(lambda: JobProgress(sync.unwrap(job)))
    seen: list[str] = []
    widget.observe(lambda change: seen.append(change["new"]), names="status")
    job.result(timeout=30)  # the calling thread blocks here
    assert "running" in seen and seen[-1] == "succeeded"


def test_ctrl_c_in_a_blocking_wait_cancels_the_remote_job(fresh: Emulator) -> None:
    fresh.set_fault(FLUX, "slow_queue", seconds=200)
    client = rc.RunComfy(token=TOKEN, base_url=fresh.url)
    job = client.deployments.submit(FLUX, {})
    threading.Timer(0.3, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        job.result(timeout=60)
    wait_for(lambda: job.status is Status.CANCELLED)
    remote = next(r for r in fresh.requests_for(FLUX) if r.id == job.id)
    assert remote.status in ("cancelled", "canceled")


def test_ctrl_c_waits_until_the_cancelled_task_has_finished() -> None:
    finished = threading.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:  # as Job.result does: cancel the remote job, then go on
            await asyncio.sleep(0.5)
            finished.set()
            raise

    threading.Timer(0.3, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        sync.run(work())
    assert finished.is_set()  # not merely scheduled: done before the interrupt went on


def test_a_second_ctrl_c_stops_waiting_for_the_cancel() -> None:
    release = threading.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            _thread.interrupt_main()  # the user presses Ctrl-C again while the cancel runs
            await asyncio.to_thread(release.wait, 30)
            raise

    threading.Timer(0.3, _thread.interrupt_main).start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            sync.run(stubborn())
        assert time.monotonic() - started < sync.CANCEL_GRACE / 2
    finally:
        release.set()


def test_no_widget_pump_outside_a_kernel() -> None:
    from runcomfy_nb import uievents

    with uievents.pumping() as pump:
        assert pump() is None  # here a no-op; the real kernel is tests/test_kernel_ui_events.py
    assert sync.run(asyncio.sleep(0.25, "done")) == "done"


def test_ctrl_c_can_detach_instead(fresh: Emulator) -> None:
    fresh.set_fault(FLUX, "slow_queue", seconds=2)
    client = rc.RunComfy(token=TOKEN, base_url=fresh.url)
    job = client.deployments.submit(FLUX, {})
    threading.Timer(0.2, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        job.result(timeout=60, cancel_on_interrupt=False)
    wait_for(lambda: job.status is Status.SUCCEEDED)


def test_blocking_call_from_inside_the_loop_is_refused() -> None:
    async def inner() -> None:
        sync.run(asyncio.sleep(0))

    with pytest.raises(RuntimeError, match="inside its own event loop"):
        sync.run(inner())


def test_plain_methods_returning_async_objects_are_wrapped() -> None:
    class Inner:
        async def ping(self) -> str:
            return "pong"

    class Outer:
        def make(self) -> Inner:
            return Inner()

        async def noop(self) -> None: ...

    outer = sync.wrap(Outer())
    assert isinstance(outer, sync.Blocking)
    assert outer.make().ping() == "pong"
