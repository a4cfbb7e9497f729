"""The queue protocol serverless deployments and the Model API share: a request's status, result and
cancel replies read (`read_status`, `read_result`, `cancel_accepted`), `PolledRun`, the Job backend
that follows a request by adaptive polling (the plan in polling.py), and `PolledRequests`, the base
of both clients (the jobs they follow, each deployment's or model's run times)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .contact import Contact
from .errors import JobCancelled, JobFailed, RateLimited, UnexpectedReply, transient
from .events import JobResult, Queued, Started
from .jobs import Job
from .media import Fetcher, media_from_outputs
from .polling import DurationModel, PollPlan
from .status import Status, failure_message, parse_status
from .timefmt import parse_timestamp

T = TypeVar("T")
log = logging.getLogger("runcomfy_nb")


@dataclass(frozen=True)
class RequestStatus:
    """One status reply. `status` is None when the request finished with an unknown outcome."""

    request_id: str
    status: Status | None
    raw_status: str
    queue_position: int | None = None
    instance_id: str | None = None

    @property
    def finished(self) -> bool:
        return self.status is None or self.status.terminal


@dataclass(frozen=True)
class RequestResult:
    request_id: str
    status: Status | None
    result: JobResult | None
    error: str | None
    duration: float | None  # created_at → finished_at, by the server's clock


def _unreadable(request_id: str, what: str, reply: Any) -> UnexpectedReply:
    """A 2xx reply without a readable status (a proxy's HTML page, an empty body, an object with no
    `status`): it says nothing about the job, so it is transient (errors.transient) and the call is
    tried again."""
    got = "an object without a status" if isinstance(reply, dict) else f"{type(reply).__name__} content"
    return UnexpectedReply(f"The {what} reply for request {request_id} was unreadable ({got}).",
                           status=200, detail=reply if isinstance(reply, dict) else None)


def _readable_status(request_id: str, what: str, reply: Any) -> tuple[dict[str, Any], str]:
    raw = reply.get("status") if isinstance(reply, dict) else None
    if not isinstance(raw, str) or not raw.strip():
        raise _unreadable(request_id, what, reply)
    return reply, raw


def _present(reply: dict[str, Any], *keys: str) -> Any:
    """The first of `keys` holding something: an explicit null (or an empty value) means absent."""
    return next((reply[k] for k in keys if reply.get(k) not in (None, "", [], {})), None)


def read_status(request_id: str, reply: Any) -> RequestStatus:
    """A `/status` reply as a RequestStatus; UnexpectedReply (transient) if it has no status."""
    reply, raw = _readable_status(request_id, "status", reply)
    position = reply.get("queue_position")
    instance = _present(reply, "instance_id")
    return RequestStatus(
        request_id=request_id, status=parse_status(raw), raw_status=raw,
        queue_position=position if isinstance(position, int) and not isinstance(position, bool) else None,
        instance_id=instance if isinstance(instance, str) else None,
    )


def read_result(request_id: str, reply: Any, fetcher: Fetcher | None) -> RequestResult:
    """A `/result` reply as a RequestResult: `outputs` (ComfyUI) or `output` (LoRA, Model API) of
    any shape, whichever holds them, become media and text. UnexpectedReply (transient) if it has
    no status."""
    reply, raw = _readable_status(request_id, "result", reply)
    status = parse_status(raw, completed=Status.SUCCEEDED)
    created, finished = (parse_timestamp(reply.get(k)) for k in ("created_at", "finished_at"))
    duration = finished - created if created is not None and finished is not None else None
    result = error = None
    if status is Status.SUCCEEDED:
        media, text = media_from_outputs(_present(reply, "outputs", "output"), fetcher)
        result = JobResult(job_id=request_id, media=media, text=text, raw=reply)
    elif status is Status.FAILED:
        error = failure_message(_present(reply, "error"))
    return RequestResult(request_id, status, result, error, duration)


def cancel_accepted(reply: Any) -> bool:
    """Whether a cancel reply says the cancel was taken (`outcome` or, live, `status`)."""
    reply = reply if isinstance(reply, dict) else {}
    outcome = str(reply.get("outcome") or reply.get("status") or "").lower()
    return outcome in ("cancelled", "canceled", "cancellation_requested")


@dataclass(frozen=True)
class Request:
    """One queued request's endpoints. `send(method, action, **kwargs)` calls its `status`, `result`
    or `cancel` endpoint and returns the reply; `fetcher` downloads its outputs."""

    request_id: str
    send: Callable[..., Awaitable[Any]]
    fetcher: Fetcher

    async def status(self) -> RequestStatus:
        return read_status(self.request_id, await self.send("GET", "status"))

    async def result(self) -> RequestResult:
        return read_result(self.request_id, await self.send("GET", "result"), self.fetcher)

    async def cancel(self) -> bool:
        return cancel_accepted(await self.send("POST", "cancel", idempotent=True))


class PolledRun:
    """The Job backend that follows one queued request (serverless or Model API) by adaptive
    polling of its `request` endpoints. `durations` is its deployment's (or model's) run-time
    record; `what` names the run in a failure message; `service` and `reattach` (how to follow the
    request again) go into the ContactLost raised once the service has not answered for the contact
    timeout. A transient failure of a poll (errors.transient, or a call that outlasts the contact
    timeout) never ends the job: polling goes on at its pace."""

    def __init__(self, request: Request, *, durations: DurationModel, what: str, service: str,
                 reattach: str) -> None:
        self.request, self.request_id = request, request.request_id
        self.what, self.durations = what, durations
        self.service, self.reattach = service, reattach
        self._poke = asyncio.Event()
        self._outage = False
        self._retry_after = 0.0

    async def _ask(self, call: Callable[[], Awaitable[T]], contact: Contact) -> T | None:
        """One status or result call; None if it failed transiently (ContactLost once the service
        has been silent for the contact timeout). A call is cut at the contact timeout, so a server
        that takes connections but never answers cannot hold the job longer."""
        self._retry_after = 0.0
        try:
            reply = await asyncio.wait_for(call(), max(0.5, contact.limit - contact.silent))
        except Exception as exc:
            if not (transient(exc) or isinstance(exc, TimeoutError)):
                raise
            if isinstance(exc, RateLimited) and exc.retry_after:
                self._retry_after = exc.retry_after
            if not self._outage:  # one line per outage, not one per attempt
                log.warning("%s: polling request %s met %s; polling on for up to %.0f s without an answer",
                            self.service, self.request_id, type(exc).__name__, contact.limit)
            self._outage = True
            contact.check()
            return None
        contact.answered()
        if self._outage:
            log.info("%s answers again about request %s", self.service, self.request_id)
            self._outage = False
        return reply

    async def _sleep(self, pause: float, contact: Contact) -> None:
        """Wait `pause` (longer if a 429 asked for it, shorter once a cancel was accepted), never past
        the contact timeout; a cancel wakes it early."""
        if self._poke.is_set():
            pause = 0.3
        pause = min(max(pause, self._retry_after), max(0.05, contact.limit - contact.silent))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._poke.wait(), pause)

    async def run(self, job: Job) -> JobResult:
        loop = asyncio.get_running_loop()
        contact = Contact(self.service, self.request_id, self.reattach)
        model = self.durations
        plan = PollPlan(model)
        start = loop.time()
        t = seen = 0.0  # the last call, the last answer (seconds from submit)
        queued = False
        position: int | None = -1
        while True:
            await self._sleep(plan.next_pause(t, queued), contact)
            status = await self._ask(self.request.status, contact)
            t = loop.time() - start
            if status is None:
                continue
            queued = status.status is Status.QUEUED
            plan.observe(t, queued, seen)
            seen = t
            if queued and status.queue_position != position:
                position = status.queue_position
                job.emit(Queued(position))
            elif status.status is Status.RUNNING and job.status is Status.QUEUED:
                job.emit(Started())
            if status.finished:
                break
        reply = await self._final(contact)
        if reply.status is Status.SUCCEEDED and reply.result is not None:
            if reply.duration is not None and not plan.queued_seen:
                model.record(reply.duration)
            return reply.result
        if reply.status is Status.FAILED:
            raise JobFailed(f"{self.what} failed: {reply.error}", job_id=self.request_id)
        if reply.status is Status.CANCELLED or status.status is Status.CANCELLED:
            raise JobCancelled(f"Request {self.request_id} was cancelled.", job_id=self.request_id)
        raise JobFailed(f"Request {self.request_id} ended as {status.raw_status!r} with no result.",
                        job_id=self.request_id)

    async def _final(self, contact: Contact) -> RequestResult:
        """The result once /status said the request finished: /result may say so a moment later
        (20 answers, 0.25 s apart); failed calls are tried again within the contact timeout."""
        answers, pause = 0, 0.25
        while True:
            reply = await self._ask(self.request.result, contact)
            if reply is None:
                await self._sleep(pause, contact)
                pause = min(2 * pause, 4.0)
                continue
            answers += 1
            if reply.status is None or reply.status.terminal or answers >= 20:
                return reply
            await asyncio.sleep(0.25)

    async def cancel(self) -> bool:
        accepted = await self.request.cancel()
        if accepted:
            self._poke.set()
        return accepted


class PolledRequests:
    """The base of a queue API's client (serverless deployments, the Model API): the Jobs it follows
    (`followed`, detached when the client closes) and the run times of each deployment or model."""

    service = ""  # names the API in messages
    kind = ""  # the Job kind of its runs

    def __init__(self) -> None:
        self.followed: weakref.WeakSet[Job] = weakref.WeakSet()
        self._durations: dict[str, DurationModel] = {}

    def durations(self, target: str) -> DurationModel:
        """The recent run times of one deployment or model (`target`: its id), which its polls are
        planned with."""
        return self._durations.setdefault(target, DurationModel())

    def _request_id(self, reply: Any) -> str:
        """The request id a submit reply carries; UnexpectedReply if it has none."""
        request_id = reply.get("request_id") if isinstance(reply, dict) else None
        if not request_id:
            raise UnexpectedReply(f"{self.service} accepted the submit but returned no request_id.")
        return str(request_id)

    def _follow(self, request: Request, *, target: str, what: str, reattach: str, label: str) -> Job:
        """A running Job that polls `request` of the deployment or model `target`."""
        backend = PolledRun(request, durations=self.durations(target), what=what,
                            service=self.service, reattach=reattach)
        job = Job(backend, kind=self.kind, id=request.request_id, label=label)
        self.followed.add(job)
        return job
