"""RunComfy Serverless API: ComfyUI-style and LoRA deployments (submit, status, result, cancel)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote

from ..config import Secret
from ..errors import JobCancelled, JobFailed, ValidationError
from ..jobs import Job, JobResult, Queued, Started, Status, failure_message, parse_status
from ..media import Fetcher, media_from_outputs
from ..polling import DurationModel, PollPlan
from ..timefmt import parse_timestamp
from ..transport import Storage, Transport
from ..workflow import Workflow, check_api_format, normalize_overrides

SERVICE = "RunComfy Serverless API"


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


def build_body(
    overrides: Mapping[Any, Any] | None = None,
    *,
    workflow: Workflow | Mapping[str, Any] | None = None,
    inputs: Mapping[str, Any] | None = None,
    extra_data: Mapping[str, Any] | None = None,
    comfy_api_key: str | Secret | None = None,
) -> dict[str, Any]:
    """The submit body, checked before anything is sent (see api/serverless.md)."""
    if inputs is not None:
        if overrides is not None or workflow is not None:
            raise ValidationError(
                "LoRA inputs are the whole body: pass inputs=... alone, without overrides or "
                "a workflow."
            )
        if not isinstance(inputs, Mapping):
            raise ValidationError("inputs must be an object of the deployment's input fields.")
        return dict(inputs)
    body: dict[str, Any] = {}
    if workflow is not None:
        if overrides:
            raise ValidationError(
                "Send either overrides or a whole workflow, not both (the API ignores overrides "
                "with workflow_api_json): apply them with Workflow(...).override(...) first."
            )
        data = workflow.to_api() if isinstance(workflow, Workflow) else workflow
        body["workflow_api_json"] = check_api_format(data, "workflow_api_json")
    else:
        body["overrides"] = normalize_overrides(overrides or {})
    extra = dict(extra_data or {})
    if comfy_api_key is not None:
        key = comfy_api_key.get() if isinstance(comfy_api_key, Secret) else comfy_api_key
        extra["api_key_comfy_org"] = key
    if extra:
        body["extra_data"] = extra
    return body


class Deployments:
    """Submit to and follow serverless deployments. `submit` returns a running `Job`."""

    def __init__(self, transport: Transport, storage: Storage, *, version: str = "v1") -> None:
        self._http = transport
        self._storage = storage
        self._prefix = f"/prod/{version}/deployments"
        self._durations: dict[str, DurationModel] = {}

    def __repr__(self) -> str:
        return "<Deployments>"

    def _path(self, deployment_id: str, request_id: str | None = None, action: str = "") -> str:
        path = f"{self._prefix}/{quote(deployment_id, safe='')}"
        if request_id is not None:
            path += f"/requests/{quote(request_id, safe='')}"
        return f"{path}/{action}" if action else path

    def durations(self, deployment_id: str) -> DurationModel:
        return self._durations.setdefault(deployment_id, DurationModel())

    async def submit(
        self,
        deployment_id: str,
        overrides: Mapping[Any, Any] | None = None,
        *,
        workflow: Workflow | Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
        extra_data: Mapping[str, Any] | None = None,
        comfy_api_key: str | Secret | None = None,
        label: str | None = None,
    ) -> Job:
        """Queue one request: `overrides` for the saved workflow, or `workflow=` to replace it,
        or `inputs=` for a LoRA deployment's own schema. The POST is never resent after it may
        have reached the server."""
        if not isinstance(deployment_id, str) or not deployment_id.strip():
            raise ValidationError("deployment_id must be the deployment's id (a string).")
        body = build_body(overrides, workflow=workflow, inputs=inputs, extra_data=extra_data,
                          comfy_api_key=comfy_api_key)
        reply = await self._http.request("POST", self._path(deployment_id, action="inference"),
                                         json=body, idempotent=False)
        request_id = reply.get("request_id") if isinstance(reply, dict) else None
        if not request_id:
            raise ValidationError(f"{SERVICE} accepted the submit but returned no request_id.")
        return self.attach(deployment_id, request_id, label=label)

    def attach(self, deployment_id: str, request_id: str, *, label: str | None = None) -> Job:
        """Follow an existing request as a Job (call inside the event loop)."""
        backend = PolledRun(
            request_id, status=partial(self.status, deployment_id, request_id),
            result=partial(self.result, deployment_id, request_id),
            cancel=partial(self.cancel, deployment_id, request_id),
            durations=self.durations(deployment_id), what="The deployment run",
        )
        return Job(backend, kind="serverless", id=request_id,
                   label=label or f"{deployment_id} · {request_id[:8]}")

    async def status(self, deployment_id: str, request_id: str) -> RequestStatus:
        return read_status(request_id, await self._http.request(
            "GET", self._path(deployment_id, request_id, "status")))

    async def result(self, deployment_id: str, request_id: str) -> RequestResult:
        return read_result(request_id, await self._http.request(
            "GET", self._path(deployment_id, request_id, "result")), self._storage)

    async def cancel(self, deployment_id: str, request_id: str) -> bool:
        """Ask to cancel; True if accepted. The request may take a moment to stop."""
        return cancel_accepted(await self._http.request(
            "POST", self._path(deployment_id, request_id, "cancel"), idempotent=True))


# --- the queue protocol the Serverless and Model APIs share ------------------------------------


def read_status(request_id: str, reply: Any) -> RequestStatus:
    """A `/status` reply as a RequestStatus."""
    reply = reply if isinstance(reply, dict) else {}
    raw = str(reply.get("status", ""))
    position = reply.get("queue_position")
    return RequestStatus(
        request_id=request_id, status=parse_status(raw), raw_status=raw,
        queue_position=position if isinstance(position, int) else None,
        instance_id=reply.get("instance_id"),
    )


def read_result(request_id: str, reply: Any, fetcher: Fetcher) -> RequestResult:
    """A `/result` reply as a RequestResult: `outputs` (ComfyUI) or `output` (LoRA, Model API) of
    any shape become media and text."""
    reply = reply if isinstance(reply, dict) else {}
    status = parse_status(reply.get("status"), completed=Status.SUCCEEDED)
    created, finished = (parse_timestamp(reply.get(k)) for k in ("created_at", "finished_at"))
    duration = finished - created if created is not None and finished is not None else None
    result = error = None
    if status is Status.SUCCEEDED:
        outputs = reply.get("outputs") if "outputs" in reply else reply.get("output")
        media, text = media_from_outputs(outputs, fetcher)
        result = JobResult(job_id=request_id, media=media, text=text, raw=reply)
    elif status is Status.FAILED:
        error = failure_message(reply.get("error"))
    return RequestResult(request_id, status, result, error, duration)


def cancel_accepted(reply: Any) -> bool:
    """Whether a cancel reply says the cancel was taken (`outcome` or, live, `status`)."""
    reply = reply if isinstance(reply, dict) else {}
    outcome = str(reply.get("outcome") or reply.get("status") or "").lower()
    return outcome in ("cancelled", "canceled", "cancellation_requested")


class PolledRun:
    """Follows one queued request (serverless or Model API) by adaptive polling. `status`,
    `result` and `cancel` call the request's endpoints; `durations` is its deployment's (or
    model's) run-time record; `what` names the run in a failure message."""

    def __init__(
        self, request_id: str, *, status: Callable[[], Awaitable[RequestStatus]],
        result: Callable[[], Awaitable[RequestResult]], cancel: Callable[[], Awaitable[bool]],
        durations: DurationModel, what: str,
    ) -> None:
        self.request_id, self.what, self.durations = request_id, what, durations
        self._status, self._result, self._cancel = status, result, cancel
        self._poke = asyncio.Event()

    async def run(self, job: Job) -> JobResult:
        loop = asyncio.get_running_loop()
        model = self.durations
        plan = PollPlan(model)
        start = loop.time()
        t = previous = 0.0
        queued = False
        position: int | None = -1
        while True:
            pause = 0.3 if self._poke.is_set() else plan.next_pause(t, queued)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._poke.wait(), pause)
            status = await self._status()
            previous, t = t, loop.time() - start
            queued = status.status is Status.QUEUED
            plan.observe(t, queued, previous)
            if queued and status.queue_position != position:
                position = status.queue_position
                job.emit(Queued(position))
            elif status.status is Status.RUNNING and job.status is Status.QUEUED:
                job.emit(Started())
            if status.finished:
                break
        for _ in range(20):  # /status may say done a moment before /result has it
            reply = await self._result()
            if reply.status is None or reply.status.terminal:
                break
            await asyncio.sleep(0.25)
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

    async def cancel(self) -> bool:
        accepted = await self._cancel()
        if accepted:
            self._poke.set()
        return accepted
