"""Every kind of run as one `Job`: a lifecycle, a stream of events, a result and a cancel.

Each client supplies a `JobBackend` that drives the run (by polling or a WebSocket) and emits
events; widgets, magics and the journal only consume them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ContactLost, JobCancelled, JobError, JobFailed, JobTimeout, transient
from .media import auto_save

if TYPE_CHECKING:
    from .media import Media

log = logging.getLogger("runcomfy_nb")


class Status(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """Base of all job events; `at` is the wall-clock time it was emitted."""

    at: float = field(default_factory=time.time, kw_only=True)


@dataclass(frozen=True)
class Queued(Event):
    position: int | None = None


@dataclass(frozen=True)
class Started(Event):
    pass


@dataclass(frozen=True)
class NodeStarted(Event):
    node: str
    title: str = ""


@dataclass(frozen=True)
class Progress(Event):
    value: float
    max: float
    node: str | None = None


@dataclass(frozen=True)
class Preview(Event):
    data: bytes = field(repr=False)
    mime: str = "image/jpeg"
    node: str | None = None


@dataclass(frozen=True)
class Output(Event):
    media: Media


@dataclass(frozen=True)
class Finished(Event):
    result: JobResult


@dataclass(frozen=True)
class Failed(Event):
    """The job ended without a result: `error` is a JobFailed, JobCancelled or other error."""

    error: Exception


# --- result ------------------------------------------------------------------------------------


@dataclass
class JobResult:
    """What a finished job produced: media items, any text outputs, and the raw reply."""

    job_id: str
    media: list[Media] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def images(self) -> list[Media]:
        return [m for m in self.media if m.kind == "image"]

    @property
    def videos(self) -> list[Media]:
        return [m for m in self.media if m.kind == "video"]

    async def save(self, directory: str | Path | None = None) -> list[Path]:
        """Download every media item into `directory` (default: the `output_dir` setting); returns
        the paths written. No file is overwritten: a taken name gets a ` (1)` suffix (see `Media.save`)."""
        return [await m.save(directory) for m in self.media]

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for m in self.media:
            kinds[m.kind] = kinds.get(m.kind, 0) + 1
        parts = [f"{n} {k}{'s' if n > 1 else ''}" for k, n in kinds.items()]
        parts += [f"{len(self.text)} text"] if self.text else []
        return f"<JobResult {self.job_id}: {', '.join(parts) or 'no outputs'}>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from .widgets import Gallery

        return Gallery(self.media, text=self.text)._repr_mimebundle_(include, exclude)


# --- contact with the server -------------------------------------------------------------------

CONTACT_TIMEOUT = 60.0


def contact_timeout() -> float:
    """Seconds a job may go without any answer from its server before it is given up here:
    `RUNCOMFY_CONTACT_TIMEOUT` (read at each call), else 60."""
    try:
        value = float(os.environ.get("RUNCOMFY_CONTACT_TIMEOUT", "") or CONTACT_TIMEOUT)
    except ValueError:
        return CONTACT_TIMEOUT
    return value if value > 0 else CONTACT_TIMEOUT


class Contact:
    """When a job's server last answered. A backend calls `answered()` on every reply (a status,
    a WebSocket frame) and `check()` after every failed attempt: once `limit` seconds passed
    without an answer, `check()` raises ContactLost, which ends the job here (not there)."""

    def __init__(self, service: str, job_id: str, reattach: str, limit: float | None = None) -> None:
        self.service, self.job_id, self.reattach = service, job_id, reattach
        self.limit = contact_timeout() if limit is None else limit
        self.last = time.time()

    def answered(self) -> None:
        self.last = time.time()

    @property
    def silent(self) -> float:
        return time.time() - self.last

    def check(self) -> None:
        if self.silent > self.limit:
            since = time.strftime("%H:%M:%S", time.localtime(self.last))
            raise ContactLost(
                f"Lost contact with the {self.service} since {since} (no answer for "
                f"{self.silent:.0f} s); job {self.job_id} may still be running there: re-attach "
                f"with {self.reattach} once it answers again.", job_id=self.job_id)


# --- job ---------------------------------------------------------------------------------------


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
        self._backend = backend
        self._result: JobResult | None = None
        self._cancelling: asyncio.Task[bool] | None = None
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
        return list(self._history)

    # -- events --
    def subscribe(self, callback: Subscriber, *, replay: bool = True) -> Callable[[], None]:
        """Call `callback(job, event)` for each event (in the job's loop); returns unsubscribe."""
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

    def detach(self) -> None:
        """Stop following the job here; the remote run goes on."""
        self._task.cancel()


_RAW_STATUS = {
    "in_queue": Status.QUEUED, "queued": Status.QUEUED, "pending": Status.QUEUED,
    "waiting_to_dispatch": Status.QUEUED, "submitted": Status.QUEUED,
    "queued_waiting": Status.QUEUED,
    "in_progress": Status.RUNNING, "running": Status.RUNNING, "preparing": Status.RUNNING,
    "executing": Status.RUNNING, "cancel_requested": Status.RUNNING,
    "cancellation_requested": Status.RUNNING,
    "succeeded": Status.SUCCEEDED, "success": Status.SUCCEEDED,
    "failed": Status.FAILED, "error": Status.FAILED, "non_retryable_error": Status.FAILED,
    "lost": Status.FAILED,
    "cancelled": Status.CANCELLED, "canceled": Status.CANCELLED,
}
_unknown_logged: set[str] = set()


def parse_status(raw: Any, *, completed: Status | None = None) -> Status | None:
    """The unified status of a raw API spelling (case-insensitive). `completed` is what the API
    means by "completed" (None: finished, outcome unknown). Unknown spellings count as running."""
    text = str(raw or "").strip().lower()
    if text == "completed":
        return completed
    if text in _RAW_STATUS:
        return _RAW_STATUS[text]
    if text not in _unknown_logged:
        _unknown_logged.add(text)
        log.warning("unknown job status %r, treated as running", text)
    return Status.RUNNING


def failure_message(error: Any) -> str:
    """Readable text of an error body that may be an object, a list or a string."""
    if error is None:
        return "no error details were given"
    if isinstance(error, str):
        return error
    if isinstance(error, list):
        return "; ".join(failure_message(e) for e in error) or "no error details were given"
    if isinstance(error, dict):
        message = next(
            (error[k] for k in ("message", "error_message", "exception_message", "error") if error.get(k)),
            None,
        )
        kind = error.get("type") or error.get("exception_type") or error.get("errorCode")
        text = failure_message(message) if message is not None else str(error)
        return f"{kind}: {text}" if kind and str(kind) not in text else text
    return str(error)


__all__ = [
    "Contact", "ContactLost", "Event", "Failed", "Finished", "Job", "JobBackend", "JobCancelled",
    "JobFailed", "JobResult", "NodeStarted", "Output", "Preview", "Progress", "Queued", "Started",
    "Status", "contact_timeout", "failure_message", "finish_cancels", "parse_status", "recent_jobs",
]
