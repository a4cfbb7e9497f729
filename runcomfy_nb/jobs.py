"""Every kind of run as one `Job`: a lifecycle, a stream of events, a result and a cancel.

Each client supplies a `JobBackend` that drives the run (by polling or a WebSocket) and emits
events; widgets, magics and the journal only consume them. The events and the `JobResult` are in
`events`, the `Status` in `status`, the contact timeout in `contact`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from .errors import JobCancelled, JobError, JobTimeout, transient
from .events import (
    Event,
    Failed,
    Finished,
    JobResult,
    NodeStarted,
    Output,
    Preview,
    Progress,
    Queued,
    Started,
)
from .media import auto_save
from .status import Status

log = logging.getLogger("runcomfy_nb")


class JobBackend(Protocol):
    """What a client supplies to drive one remote run."""

    async def run(self, job: Job) -> JobResult:
        """Follow the run to its end, calling `job.emit(...)`; raise JobFailed/JobCancelled."""
        ...

    async def cancel(self) -> bool:
        """Ask the server to cancel; True if it accepted (the run may take a moment to stop)."""
        ...


Subscriber = Callable[["Job", Event], None]
_RECENT: deque[Job] = deque(maxlen=1000)
CANCEL_WAIT = 10.0  # seconds an interrupted or timed-out wait gives the server to confirm a cancel
_OWED: set[asyncio.Task[str]] = set()  # cancels of interrupted waits, until they end


async def finish_cancels(timeout: float = CANCEL_WAIT) -> None:
    """Let the cancels that interrupted waits of this loop started finish (bounded): a client
    calls this before it closes, so no cancel it owes dies with its connections."""
    loop = asyncio.get_running_loop()
    owed = [t for t in _OWED if t.get_loop() is loop and not t.done() and t is not asyncio.current_task()]
    if owed:
        await asyncio.wait(owed, timeout=timeout)


def recent_jobs() -> list[Job]:
    """Every Job of this process (the last 1,000), oldest first: what `%runcomfy jobs` lists."""
    return list(_RECENT)


class Job:
    """One remote run with the lifecycle queued → running → succeeded | failed | cancelled.

    `await job.result(timeout=…)` returns a `JobResult` or raises `JobFailed`, `JobCancelled`
    or `JobTimeout` (a timeout cancels the remote job unless `cancel_on_timeout=False`).
    `async for event in job.events()` replays past events, then follows new ones. Of the sampler
    previews the history keeps only the latest (`previews_seen` counts them all), so a job's memory
    stays bounded; subscribers and `events()` that follow a job live see every one.
    """

    def __init__(self, backend: JobBackend, *, kind: str, id: str, label: str = "") -> None:
        self.kind = kind
        self.id = id
        self.label = label or id
        self.status = Status.QUEUED
        self.position: int | None = None
        self.progress: tuple[float, float] | None = None
        self.node: str | None = None
        self.nodes_total: int | None = None  # set by backends that know the graph (ComfyUI)
        self.nodes_done = 0
        self.error: Exception | None = None
        self.submitted_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        # what reruns it (see `provenance.record`): target, kind, id, workflow or overrides, seeds;
        # the client fills it at submit, saved outputs carry it
        self.provenance: dict[str, Any] = {}
        self._backend = backend
        self._result: JobResult | None = None
        self._cancelling: asyncio.Task[str] | None = None
        self._history: list[Event] = []
        self._preview_at: int | None = None  # where the latest Preview is in the history
        self.previews_seen = 0
        self._subscribers: list[Subscriber] = []
        self._changed = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self._task = self.loop.create_task(self._drive(), name=f"runcomfy-job-{id}")
        _RECENT.append(self)

    def __repr__(self) -> str:
        return f"<Job {self.kind} {self.id} {self.status.value}>"

    @property
    def done(self) -> bool:
        return self.status.terminal

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.time()) - self.submitted_at

    @property
    def history(self) -> list[Event]:
        """The events so far, in order; of the previews only the latest."""
        return list(self._history)

    # -- events --
    def subscribe(self, callback: Subscriber, *, replay: bool = True) -> Callable[[], None]:
        """Call `callback(job, event)` for each new event (in the job's loop), after the history
        when `replay` (of the previews, the latest); returns unsubscribe."""
        if replay:
            for event in self._history:
                callback(self, event)
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    async def events(self) -> AsyncIterator[Event]:
        """The history, then every new event until the job ends (in the job's loop)."""
        pending: deque[Event] = deque()
        unsubscribe = self.subscribe(lambda _job, event: pending.append(event))
        try:
            while True:
                while pending:
                    yield pending.popleft()
                if self._task.done():
                    return
                await self._changed.wait()
        finally:
            unsubscribe()

    def emit(self, event: Event) -> None:
        """Record an event and tell subscribers (called by backends)."""
        if self.done:
            return
        match event:
            case Queued(position=position):
                self.status, self.position = Status.QUEUED, position
            case Started():
                self.status, self.position = Status.RUNNING, None
                self.started_at = self.started_at or event.at
            case NodeStarted(node=node):
                self.node = node
            case Progress(value=value, max=maximum):
                self.progress = (value, maximum)
            case Finished(result=result):
                self._result, self.status = result, Status.SUCCEEDED
            case Failed(error=error):
                self.error = error
                self.status = Status.CANCELLED if isinstance(error, JobCancelled) else Status.FAILED
        if isinstance(event, (NodeStarted, Progress, Output)) and self.status is Status.QUEUED:
            self.emit(Started(at=event.at))
        if self.status.terminal:
            self.finished_at = event.at
        self._record(event)
        for callback in list(self._subscribers):
            try:
                callback(self, event)
            except Exception:  # a broken widget must not break the job
                log.exception("job subscriber failed")
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _record(self, event: Event) -> None:
        """Keep `event` in the history; a Preview replaces the one before it."""
        if isinstance(event, Preview):
            self.previews_seen += 1
            if self._preview_at is not None:
                del self._history[self._preview_at]
            self._preview_at = len(self._history)
        self._history.append(event)

    async def _drive(self) -> None:
        try:
            result = await self._backend.run(self)
        except asyncio.CancelledError:
            raise
        except JobError as exc:
            exc.job_id = exc.job_id or self.id
            self.emit(Failed(exc))
        except Exception as exc:
            self.emit(Failed(exc))
        else:
            result = result.with_provenance(self.provenance)
            for media in result.media:
                if not any(isinstance(e, Output) and e.media == media for e in self._history):
                    self.emit(Output(media))
            await auto_save(self.id, result.media)  # with the auto_save setting on, before it counts as done
            self.emit(Finished(result))
        finally:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    # -- results and control --
    async def wait(self, timeout: float | None = None) -> Status:
        """Wait until the job ends (or `timeout` passes); returns the status."""
        with contextlib.suppress(asyncio.TimeoutError):
            await self._follow(timeout)
        return self.status

    async def _follow(self, timeout: float | None) -> None:
        """Wait for the driving task. A detached job (its task cancelled) just ends the wait; a
        cancel of the caller raises CancelledError (the shield keeps the task itself running)."""
        if self._task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.CancelledError:
            if self._task.cancelled():
                return
            raise

    async def result(
        self, timeout: float | None = None, *, cancel_on_timeout: bool = True,
        cancel_on_interrupt: bool = True,
    ) -> JobResult:
        """The job's outputs; raises JobFailed, JobCancelled or JobTimeout.

        If the waiting itself is cancelled (Ctrl-C, a cancelled task), the remote job is cancelled
        first — sent, and confirmed by the server within `CANCEL_WAIT` seconds — unless
        `cancel_on_interrupt=False` (then it runs on); then the interruption goes on.
        """
        try:
            await self._follow(timeout)
        except (asyncio.CancelledError, KeyboardInterrupt):
            if cancel_on_interrupt and not self.done:
                await self._cancel_before_leaving()
            raise
        except asyncio.TimeoutError:
            what = "it is still running"
            if cancel_on_timeout:
                what = await self._try_cancel() or "cancelled it"
            raise JobTimeout(f"Job {self.id} did not finish within {timeout:g} s; {what}.",
                             job_id=self.id) from None
        if self._result is not None:
            return self._result
        if isinstance(self.error, Exception):
            raise self.error
        raise JobError(f"Job {self.id} was detached before it finished.", job_id=self.id)

    async def _cancel_before_leaving(self) -> None:
        """Cancel the remote job on the way out of an interrupted wait. The cancel is a task of its
        own (shielded, and owed by the job's client until it ends: see `finish_cancels`), so a
        second interruption stops the waiting here, not the cancel."""
        task = self._cancelling
        if task is None or task.done():
            task = self._cancelling = self.loop.create_task(self._try_cancel(), name=f"cancel-{self.id}")
            _OWED.add(task)
            task.add_done_callback(_OWED.discard)
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(task), CANCEL_WAIT + 1.0)

    async def _try_cancel(self) -> str:
        """Cancel within `CANCEL_WAIT`; what came of it, for a message ('' when cancelled)."""
        try:
            cancelled = await self.cancel(wait=CANCEL_WAIT)
        except Exception as exc:  # said in the message of the error that follows
            return f"it could not be cancelled ({exc}); it may still be running there"
        if cancelled:
            return ""
        if self.done:
            return f"it ended {self.status.value} meanwhile"
        return ("it could not be cancelled (the server did not confirm it in time); it may still be "
                "running there")

    async def cancel(self, wait: float = 30.0) -> bool:
        """Cancel the remote run and wait up to `wait` s for the server to confirm it; True once
        it is cancelled. A transient failure (network, 5xx, 429) is tried again within `wait`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        pause = 0.25
        while not self.done:
            try:
                accepted = await self._backend.cancel()
            except Exception as exc:
                if not transient(exc) or loop.time() + pause > deadline:
                    raise
                log.info("cancel of job %s met %s; trying again", self.id, type(exc).__name__)
                await asyncio.sleep(pause)
                pause = min(2 * pause, 2.0)
                continue
            if accepted:
                await self.wait(max(0.0, deadline - loop.time()))
            break
        return self.status is Status.CANCELLED

    @property
    def detached(self) -> bool:
        """True once this kernel stopped following the job (`detach()`, its client closed) before
        it ended: the remote run may go on; its status here is the last one seen."""
        return self._task.done() and not self.done

    def expedite(self) -> None:
        """Learn of the end sooner, at the cost of more status calls, where the backend polls (a
        sweep's last jobs); a no-op for backends with push events."""
        expedite = getattr(self._backend, "expedite", None)
        if expedite is not None and not self.done:
            expedite()

    def detach(self) -> None:
        """Stop following the job here; the remote run goes on."""
        self._task.cancel()


__all__ = ["Job", "JobBackend", "finish_cancels", "recent_jobs"]
