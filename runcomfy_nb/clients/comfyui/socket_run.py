"""The WebSocket run backend: one ComfyUI prompt followed live over its socket, and through `/queue`
and the server's record of its end whenever the socket drops, goes quiet or a cancel was asked for."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ...contact import Contact
from ...errors import JobCancelled, JobError, JobFailed, RunComfyError, TransportError, transient
from ...events import JobResult, Queued, Started
from ...jobs import Job
from ...status import Status
from .dialect import Dialect
from .frames import CHECK, END, Frames, Source
from .messages import socket_reason
from .replies import HistoryEntry, QueueStatus
from .sockets import WS_ERRORS, Dropped, Listener, handshake

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

T = TypeVar("T")
log = logging.getLogger("runcomfy_nb")
_POKE = object()


class Server(Source, Protocol):
    """What a SocketRun needs from its client."""

    async def answering(self, timeout: float = 10.0) -> None:
        """Raise TransportError unless one probe of the server, without retries, is answered."""

    async def answers(self, timeout: float) -> bool: ...

    async def queue_status(self) -> QueueStatus: ...

    async def queue_snapshot(self, max_age: float) -> QueueStatus: ...

    async def delete_pending(self, prompt_ids: str | Iterable[str]) -> None: ...

    async def stop_running(self, prompt_id: str, status: QueueStatus) -> bool: ...

    def was_deleted(self, prompt_id: str) -> bool: ...

    async def outcome(self, prompt_id: str, nodes: Mapping[str, Any]) -> HistoryEntry | None: ...

    async def locate(self, prompt_id: str, nodes: Mapping[str, Any]) -> HistoryEntry | Status | None: ...

    def release(self, run: SocketRun) -> None:
        """Forget a run that ended."""


class Feed(Protocol):
    """Where a run's socket comes from: its own (sockets.OwnSocket) or the client's shared one."""

    client_id: str
    reconnect_when_silent: bool

    async def join(self, run: Listener) -> None: ...

    async def rejoin(self, run: Listener, retry: bool) -> None: ...

    async def leave(self, run: Listener) -> None: ...


class _Unreachable(Exception):
    """A call to the server failed transiently; the outage is logged and the contact checked."""


class SocketRun:
    """The JobBackend of one prompt: the WebSocket for live events, `/queue` and the prompt's
    record whenever the socket drops, goes quiet or a cancel was asked for. A server that stops
    answering is probed (one attempt, no retries) until it answers again; after the contact
    timeout without any answer the job fails with ContactLost."""

    IDLE_CHECK = 10.0        # a quiet socket: check /queue and /history this often
    POLL_INTERVAL = 1.0      # without a socket (or while ending or cancelling)
    MAX_DROPS = 20           # then follow the prompt by polling only
    HISTORY_WAIT = 5.0       # history is written a moment after execution_success
    CATCH_UP_WAIT = 5.0      # at most this long for the frames of a prompt the history shows ended
    CATCH_UP_QUIET = 1.0     # ... and no longer once the socket stays quiet this long
    CANCEL_CALL_TIMEOUT = 15.0

    def __init__(self, server: Server, feed: Feed, nodes: Mapping[str, Any]) -> None:
        self.server = server
        self.feed = feed
        self.frames = Frames(server, nodes)
        self.nodes = self.frames.nodes
        self.client_id = feed.client_id
        self.prompt_id = ""
        self.number: Any = None
        self.job: Job | None = None
        self._dialect: Dialect = server.dialect
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._generation = 0
        self._drops = self._polls = 0
        self._last_message = 0.0
        self._cancelling = False
        self._outage = self._socket_warned = False
        self._contact: Contact | None = None
        self._watcher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<{self._dialect.run_name} {self.prompt_id or '(not queued)'}>"

    def bind(self, job: Job) -> None:
        self.job = job
        self.frames.bind(job, self.prompt_id)
        # A job detached before its first step never runs `run`: close the socket regardless.
        self._watcher = asyncio.get_running_loop().create_task(self._close_when_done(job))

    async def _close_when_done(self, job: Job) -> None:
        try:
            await job.wait()
        finally:
            await self.close()
            self.server.release(self)

    def poke(self) -> None:
        """Check the queue and history now (after a cancel or a delete)."""
        self._inbox.put_nowait(_POKE)

    # -- what the socket feeds it (sockets.Listener) --
    @property
    def generation(self) -> int:
        return self._generation

    def deliver(self, item: Any) -> None:
        """A frame of the socket, or Dropped when it ended."""
        self._inbox.put_nowait(item)

    def adopt(self, ws: ClientConnection | None, generation: int) -> None:
        """Follow the socket `ws` of `generation` (None: none for now, polling)."""
        self._ws, self._generation = ws, generation
        self._socket_warned = self._socket_warned and ws is None
        self._last_message = asyncio.get_running_loop().time()

    # -- contact --
    @property
    def contact(self) -> Contact:
        if self._contact is None:
            self._contact = Contact(self._dialect.service, self.prompt_id,
                                    f"`await {self._dialect.handle}.attach({self.prompt_id!r})`")
        return self._contact

    def _answered(self) -> None:
        self.contact.answered()
        if self._outage:
            self._outage = False
            log.info("The %s answers again; following prompt %s on.", self._dialect.service, self.prompt_id)

    def _unanswered(self, reason: str) -> None:
        """One line when an outage starts (not one per attempt); ContactLost past the contact timeout."""
        if not self._outage:
            self._outage = True
            log.warning("No answer from the %s (%s); prompt %s is checked again until it answers, for "
                        "up to %.0f s.", self._dialect.service, reason, self.prompt_id, self.contact.limit)
        self.contact.check()

    async def _reach(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, or _Unreachable when the server did not answer it. During an outage a single
        probe comes first, so the waiting logs no retries."""
        contact = self.contact
        if self._outage and not await self.server.answers(max(0.5, contact.limit - contact.silent)):
            self._unanswered("still no answer")
            raise _Unreachable
        try:  # cut at the contact timeout: a server that takes connections but never answers
            value = await asyncio.wait_for(call(), max(0.5, contact.limit - contact.silent))
        except (asyncio.TimeoutError, RunComfyError) as exc:
            if isinstance(exc, JobError) or not (transient(exc) or isinstance(exc, asyncio.TimeoutError)):
                raise
            self._unanswered(str(exc) or "timed out")
            raise _Unreachable from None
        self._answered()
        return value

    # -- socket --
    async def connect(self) -> None:
        try:
            await handshake(self._dialect.service, lambda: self.feed.join(self))
        except WS_ERRORS as exc:
            self._socket_warned = True
            log.warning("Could not open the %s's WebSocket (%s); the prompt is followed by polling, "
                        "without live progress.", self._dialect.service, socket_reason(exc))

    async def close(self) -> None:
        await self.feed.leave(self)

    async def _reconnect(self, retry: bool = True) -> None:
        try:
            await self.feed.rejoin(self, retry)
        except WS_ERRORS as exc:
            if not self._socket_warned:  # once per lost socket, however often it is tried again
                self._socket_warned = True
                log.warning("Lost the %s's WebSocket and could not reconnect (%s); following prompt %s "
                            "by polling.", self._dialect.service, socket_reason(exc), self.prompt_id)

    # -- the JobBackend protocol --
    async def run(self, job: Job) -> JobResult:
        self.job = job
        try:
            outcome = await self._reconcile()  # the position, or a prompt that already ended
            while outcome is None:
                outcome = await self._next()
            return outcome
        finally:
            await self.close()
            self.server.release(self)

    async def cancel(self) -> bool:
        service = self._dialect.service
        if self._outage and not await self.server.answers(5.0):
            raise TransportError(f"The {service} does not answer: the cancel of prompt {self.prompt_id} "
                                 "could not be sent.")
        try:
            async with asyncio.timeout(self.CANCEL_CALL_TIMEOUT):
                return await self._cancel()
        except TimeoutError:
            raise TransportError(f"The {service} did not answer the cancel of prompt {self.prompt_id} "
                                 f"within {self.CANCEL_CALL_TIMEOUT:g} s.") from None

    async def _cancel(self) -> bool:
        status = await self.server.queue_status()
        accepted = False
        if self.prompt_id in status.pending:
            await self.server.delete_pending([self.prompt_id])
            status = await self.server.queue_status()
            accepted = self.prompt_id not in status.running  # else it started meanwhile
        if self.prompt_id in status.running:  # it ends with execution_interrupted
            accepted = await self.server.stop_running(self.prompt_id, status)
        self._cancelling = self._cancelling or accepted
        self.poke()
        return accepted

    # -- the loop --
    async def _next(self) -> JobResult | None:
        quick = self._ws is None or self.frames.succeeded or self._cancelling
        try:
            item = await asyncio.wait_for(self._inbox.get(),
                                          self.POLL_INTERVAL if quick else self.IDLE_CHECK)
        except asyncio.TimeoutError:
            return await self._on_idle()
        if isinstance(item, Dropped):
            return await self._on_drop(item)
        if item is _POKE:
            return await self._reconcile()
        asked = self._take(item)
        if asked is END:
            return await self._finish()
        if asked is CHECK:
            return await self._reconcile(max_age=1.0)
        return None

    def _take(self, item: Any) -> object | None:
        """Process one frame of the socket; what it asks for (END, CHECK) or None."""
        self._answered()
        self._last_message = asyncio.get_running_loop().time()
        return self.frames.take(item)

    async def _on_drop(self, item: Dropped) -> JobResult | None:
        if item.generation != self._generation:
            return None  # a socket we closed ourselves
        self._ws = None  # it is gone; while the server does not answer, it is probed, not reopened
        self._drops += 1
        try:
            await self._reach(self.server.answering)
        except _Unreachable:
            return None
        if self._generation != item.generation:  # meanwhile a new socket took the run over (a shared one)
            return await self._reconcile()
        if self._drops <= self.MAX_DROPS:
            await self._reconnect()
        else:
            await self.close()
        return await self._reconcile()

    async def _on_idle(self) -> JobResult | None:
        if self.frames.succeeded:
            return await self._finish()
        was_out = self._outage
        outcome = await self._reconcile(max_age=0.0 if self._ws is None else 1.0)
        if outcome is not None or self._outage:
            return outcome
        self._polls += 1
        silent = asyncio.get_running_loop().time() - self._last_message
        if self._ws is None and self._drops <= self.MAX_DROPS and (was_out or self._polls % 5 == 0):
            await self._reconnect(retry=was_out)  # live events again once the socket is back
        elif (self.feed.reconnect_when_silent and self._ws is not None and self.job is not None
              and self.job.status is Status.RUNNING and silent > 2 * self.IDLE_CHECK):
            # The server may have unregistered our socket (see OwnSocket.rejoin); registering
            # again is cheap and it re-sends the running node.
            await self._reconnect()
        return None

    # -- the outcome --
    async def _finish(self) -> JobResult | None:
        """The prompt ended (marker, or success and silence): its outcome is in /history."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.HISTORY_WAIT
        while True:
            try:
                entry = await self._reach(lambda: self.server.outcome(self.prompt_id, self.nodes))
            except _Unreachable:
                entry = None
            if entry is not None:
                return await self._conclude(entry)
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.2)
        if self.frames.succeeded:  # no history on this server: what the socket delivered
            self.frames.mark_done(*self.nodes)
            return JobResult(job_id=self.prompt_id, media=list(self.frames.emitted),
                             text=list(self.frames.text))
        return await self._reconcile()

    def _follow_queue(self, status: QueueStatus) -> bool:
        """Emit Started or Queued(position) from `status`; False if the prompt is in neither list."""
        job = self.job
        assert job is not None
        if self.prompt_id in status.running:
            if job.status is Status.QUEUED:
                job.emit(Started())
            return True
        if self.prompt_id in status.pending:
            position = status.position(self.prompt_id)
            if job.status is Status.QUEUED and (position != job.position or not any(
                    isinstance(e, Queued) for e in job.history)):
                job.emit(Queued(position))
            return True
        return False

    async def _reconcile(self, max_age: float = 0.0) -> JobResult | None:
        """Where the prompt is now; its result or end once the server's record has it."""
        try:
            entry = await self._reach(lambda: self._locate(max_age))
        except _Unreachable:
            return None
        return await self._conclude(entry) if entry is not None else None

    async def _locate(self, max_age: float) -> HistoryEntry | None:
        """The prompt's end, or None while /queue has it or the server runs it (asked in that order,
        so a prompt that finishes in between is found ended)."""
        job = self.job
        assert job is not None
        for attempt in range(3):
            if self._follow_queue(await self.server.queue_snapshot(max_age if attempt == 0 else 0.0)):
                return None
            found = await self.server.locate(self.prompt_id, self.nodes)
            if isinstance(found, HistoryEntry):
                return found
            if found is not None:  # between the queue and its end
                if found is Status.RUNNING and job.status is Status.QUEUED:
                    job.emit(Started())
                return None
            if self.server.was_deleted(self.prompt_id):
                raise JobCancelled(f"Prompt {self.prompt_id} was removed from the ComfyUI queue "
                                   "before it ran.", job_id=self.prompt_id)
            if attempt < 2:
                await asyncio.sleep(0.3)
        raise JobFailed(f"Prompt {self.prompt_id} is neither queued nor in the history of the "
                        f"{self._dialect.service}: it was deleted there, or the server restarted.",
                        job_id=self.prompt_id)

    async def _conclude(self, entry: HistoryEntry) -> JobResult:
        """Settle from the record once the frames the socket holds for the prompt are processed:
        a fast prompt ends before they are read, and some of its outputs exist only there."""
        await self._catch_up()
        return self._settle(entry)

    async def _catch_up(self) -> None:
        """Process the frames received, in order, up to the end-of-prompt marker (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.CATCH_UP_WAIT
        while not self.frames.ended:
            wait = min(self.CATCH_UP_QUIET, deadline - loop.time()) if self._ws is not None else 0.0
            try:
                item = self._inbox.get_nowait() if wait <= 0 else await asyncio.wait_for(
                    self._inbox.get(), wait)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                return
            if isinstance(item, Dropped):
                if item.generation == self._generation:
                    return  # the socket is gone: nothing more will come
            elif item is not _POKE:
                self._take(item)

    def _settle(self, entry: HistoryEntry) -> JobResult:
        detail = entry.raw.get("execution_error") or entry.raw.get("status")  # Cloud's job, or history
        if entry.status is Status.CANCELLED:
            raise JobCancelled(f"Prompt {self.prompt_id} was interrupted on the {self._dialect.service}.",
                               job_id=self.prompt_id, detail=detail)
        if entry.status is Status.FAILED:
            raise JobFailed(entry.error or "The ComfyUI run failed.", job_id=self.prompt_id, detail=detail)
        self.frames.mark_done(*self.nodes)
        result = entry.result
        result.media += [m for m in self.frames.held if m not in result.media]  # no file for them there
        return result
