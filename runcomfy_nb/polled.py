"""The queue protocol serverless deployments and the Model API share: a request's status, result and
cancel replies read (`read_status`, `read_result`, `cancel_accepted`), `PolledRun`, the Job backend
that follows a request by adaptive polling (the plan in polling.py), and `PolledRequests`, the base
of both clients (the jobs they follow, each deployment's or model's run times)."""

from __future__ import annotations

import asyncio
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
from .status_loop import StatusLoop
from .timefmt import parse_timestamp

T = TypeVar("T")
log = logging.getLogger("runcomfy_nb")
EXPEDITED_GAP = 0.1  # seconds between status calls of an expedited run once it may be done


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
    record and `status_loop` gives the deployment's shared `StatusLoop`, which makes the status
    calls; `what` names the run in a failure message; `service` and `reattach` (how to follow the
    request again) go into the ContactLost raised once the service has not answered for the contact
    timeout. A transient failure of a poll (errors.transient, or a call that outlasts the contact
    timeout) never ends the job: polling goes on at its pace."""

    def __init__(self, request: Request, *, durations: DurationModel,
                 status_loop: Callable[[], StatusLoop], what: str, service: str, reattach: str) -> None:
        self.request, self.request_id = request, request.request_id
        self.what, self.durations, self.status_loop = what, durations, status_loop
        self.service, self.reattach = service, reattach
        self._cancelled = False  # a cancel was accepted: poll soon
        self._plan: PollPlan | None = None
        self._expedited = False
        self._outage = False
        self._retry_after = 0.0

    async def _ask(self, call: Callable[[float], Awaitable[T]], contact: Contact) -> T | None:
        """One status or result call; None if it failed transiently (ContactLost once the service
        has been silent for the contact timeout). `call(limit)` is cut after `limit` seconds, the
        rest of the contact timeout, so a server that takes connections but never answers cannot
        hold the job longer."""
        self._retry_after = 0.0
        try:
            reply = await call(max(0.5, contact.limit - contact.silent))
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

    def _pause(self, pause: float, contact: Contact) -> float:
        """`pause`, shorter once a cancel was accepted, never past the contact timeout."""
        if self._cancelled:
            pause = min(pause, 0.3)
        return min(pause, max(0.05, contact.limit - contact.silent))

    async def _sleep(self, pause: float, contact: Contact) -> None:
        """Wait `pause` (longer if a 429 asked for it)."""
        await asyncio.sleep(self._pause(max(pause, self._retry_after), contact))

    async def _poll(self, job: Job, plan: PollPlan, shared: StatusLoop, contact: Contact) -> RequestStatus:
        """Status calls, made by the shared loop when the plan says, until one says finished."""
        loop = asyncio.get_running_loop()
        position: int | None = -1
        pause = plan.next_pause(plan.start)
        while True:
            pause = self._pause(pause, contact)

            def call(limit: float, pause: float = pause) -> Awaitable[RequestStatus]:
                return shared.call(self.request_id, self.request.status, pause, max(0.5, limit - pause))

            status = await self._ask(call, contact)
            t = loop.time()
            if status is None:
                pause = plan.next_pause(t)
                continue
            queued = status.status is Status.QUEUED
            previous = plan.last
            plan.observe(t, queued, status.queue_position)
            if queued and status.queue_position != position:
                position = status.queue_position
                job.emit(Queued(position))
            elif status.status is Status.RUNNING and job.status is Status.QUEUED:
                job.emit(Started())
            if status.finished:
                shared.finished(self.request_id, (previous + t) / 2)
                return status
            pause = plan.next_pause(t)

    async def run(self, job: Job) -> JobResult:
        contact = Contact(self.service, self.request_id, self.reattach)
        shared = self.status_loop()
        plan = self._plan = PollPlan(self.durations, asyncio.get_running_loop().time())
        if self._expedited:
            plan.gap = EXPEDITED_GAP
        shared.plans[self.request_id] = plan
        try:
            status = await self._poll(job, plan, shared, contact)
        finally:
            shared.plans.pop(self.request_id, None)
        reply = await self._final(contact)
        if reply.status is Status.SUCCEEDED and reply.result is not None:
            if reply.duration is not None:
                self.durations.record(reply.duration - plan.queue_wait())
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
            reply = await self._ask(lambda limit: asyncio.wait_for(self.request.result(), limit), contact)
            if reply is None:
                await self._sleep(pause, contact)
                pause = min(2 * pause, 4.0)
                continue
            answers += 1
            if reply.status is None or reply.status.terminal or answers >= 20:
                return reply
            await asyncio.sleep(0.25)

    def expedite(self) -> None:
        """Poll at `EXPEDITED_GAP` once the run may be done (a sweep's last jobs, whose results end
        it); the waiting status call is brought forward to the new plan."""
        self._expedited = True
        plan = self._plan
        if plan is not None and plan.gap > EXPEDITED_GAP:
            plan.gap = EXPEDITED_GAP
            self.status_loop().hurry(self.request_id, plan.next_pause(asyncio.get_running_loop().time()))

    async def cancel(self) -> bool:
        accepted = await self.request.cancel()
        if accepted:
            self._cancelled = True
            self.status_loop().hurry(self.request_id, 0.3)
        return accepted


class PolledRequests:
    """The base of a queue API's client (serverless deployments, the Model API): the Jobs it follows
    (`followed`, detached when the client closes) and the run times of each deployment or model."""

    service = ""  # names the API in messages
    kind = ""  # the Job kind of its runs

    def __init__(self) -> None:
        self.followed: weakref.WeakSet[Job] = weakref.WeakSet()
        self._durations: dict[str, DurationModel] = {}
        self._loops: dict[str, StatusLoop] = {}

    def durations(self, target: str) -> DurationModel:
        """The recent run times of one deployment or model (`target`: its id), which its polls are
        planned with."""
        return self._durations.setdefault(target, DurationModel())

    def status_loop(self, target: str) -> StatusLoop:
        """The shared status loop of one deployment or model on the running event loop."""
        found = self._loops.get(target)
        if found is None or found.loop is not asyncio.get_running_loop():
            found = self._loops[target] = StatusLoop()
        return found

    def _request_id(self, reply: Any) -> str:
        """The request id a submit reply carries; UnexpectedReply if it has none."""
        request_id = reply.get("request_id") if isinstance(reply, dict) else None
        if not request_id:
            raise UnexpectedReply(f"{self.service} accepted the submit but returned no request_id.")
        return str(request_id)

    def _follow(self, request: Request, *, target: str, what: str, reattach: str, label: str) -> Job:
        """A running Job that polls `request` of the deployment or model `target`."""
        backend = PolledRun(request, durations=self.durations(target),
                            status_loop=lambda: self.status_loop(target), what=what,
                            service=self.service, reattach=reattach)
        job = Job(backend, kind=self.kind, id=request.request_id, label=label)
        self.followed.add(job)
        return job
