"""One status loop per deployment (or model) and event loop: a single task makes the status calls
of every request followed there, each at the time its own `PollPlan` asked for, at most
`concurrency` at once, and pauses them all while a 429's Retry-After runs. It also tells each
followed job's plan when another job of the deployment finished (a queued one may have started)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import RateLimited
from .http_policy import MAX_RETRY_AFTER
from .polling import PollPlan


@dataclass(eq=False)
class _Due:
    """One waiting status call: `call` makes it, `limit` cuts it, `future` gets its outcome."""

    call: Callable[[], Awaitable[Any]]
    limit: float
    future: asyncio.Future[Any] = field(repr=False)
    made: bool = False
    when: float = float("inf")  # the earliest loop time it is planned for


class StatusLoop:
    """The shared status loop of one deployment or model on the running event loop."""

    def __init__(self, concurrency: int = 16) -> None:
        self.loop = asyncio.get_running_loop()
        self.plans: dict[str, PollPlan] = {}  # the followed jobs' plans, by request id
        self.paused_until = 0.0  # loop time before which no status call is made (a 429)
        self._heap: list[tuple[float, int, _Due]] = []
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._gate = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._waiting: dict[str, _Due] = {}  # by request id

    @property
    def running(self) -> bool:
        """Whether the loop's task is alive (it ends when no call waits and starts again)."""
        return self._task is not None and not self._task.done()

    async def call(self, key: str, call: Callable[[], Awaitable[Any]], pause: float, limit: float) -> Any:
        """The outcome of `call()` (the status call of request `key`) made `pause` seconds from now
        (later while a 429 pauses the loop), cut after `limit` seconds; a 429 with Retry-After
        pauses every call."""
        due = self._waiting[key] = _Due(call, limit, self.loop.create_future())
        self._push(due, pause)
        try:
            return await due.future
        finally:
            if self._waiting.get(key) is due:
                del self._waiting[key]
            if not due.future.done():  # the job was cancelled while it waited: leave the loop
                due.future.cancel()

    def hurry(self, key: str, pause: float) -> None:
        """Make request `key`'s waiting call within `pause` seconds, if it was planned later."""
        due = self._waiting.get(key)
        if due is not None and not due.made and self.loop.time() + pause < due.when:
            self._push(due, pause)

    def _push(self, due: _Due, pause: float) -> None:
        due.when = self.loop.time() + pause
        heapq.heappush(self._heap, (due.when, next(self._order), due))
        self._wake.set()
        if not self.running:
            self._task = self.loop.create_task(self._run(), name="runcomfy-status-loop")

    def finished(self, request_id: str, t: float) -> None:
        """Request `request_id` was seen finished about loop time `t`: tell the others' plans."""
        self.plans.pop(request_id, None)
        now = self.loop.time()
        for key, plan in self.plans.items():
            if plan.other_finished(t):  # planned as started now: its next call may be due sooner
                self.hurry(key, plan.next_pause(now))

    async def _run(self) -> None:
        while self._heap:
            when, _, due = self._heap[0]
            delay = max(when, self.paused_until) - self.loop.time()
            if due.made or due.future.done():
                heapq.heappop(self._heap)
            elif delay > 0:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            else:
                heapq.heappop(self._heap)
                due.made = True
                await self._gate.acquire()
                task = self.loop.create_task(self._make(due))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)

    async def _make(self, due: _Due) -> None:
        try:
            if due.future.done():
                return
            outcome = await asyncio.wait_for(due.call(), due.limit)
        except Exception as exc:
            if isinstance(exc, RateLimited) and exc.retry_after:
                pause = min(exc.retry_after, MAX_RETRY_AFTER)
                self.paused_until = max(self.paused_until, self.loop.time() + pause)
            if not due.future.done():
                due.future.set_exception(exc)
        else:
            if not due.future.done():
                due.future.set_result(outcome)
        finally:
            self._gate.release()
