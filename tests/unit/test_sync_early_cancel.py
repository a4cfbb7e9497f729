"""A Ctrl-C that lands before the blocking call's task has taken its first step still reaches the
coroutine inside its body (where `Job.result` cancels the remote job), not before its first line."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from runcomfy_nb.sync import _Running


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_a_cancel_before_the_first_step_is_seen_inside_the_coroutine(loop: asyncio.AbstractEventLoop) -> None:
    seen: list[str] = []

    async def wait() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled inside")  # where Job.result sends the remote cancel
            raise

    held, release = threading.Event(), threading.Event()
    loop.call_soon_threadsafe(lambda: (held.set(), release.wait(5)))  # the loop busy a moment
    assert held.wait(5)
    running = _Running(wait(), loop)
    running.cancel()  # queued behind the task's start, as when Ctrl-C comes at once
    release.set()
    assert running.ended.wait(5)
    assert running.future.cancelled()
    assert seen == ["cancelled inside"]
