"""Comfy Cloud (cloud.comfy.org): Comfy Org's hosted ComfyUI, through `AsyncComfyUI`.

Cloud speaks ComfyUI's protocol under `/api` with an `X-API-Key` header, so `AsyncComfyCloud` is an
`AsyncComfyUI` with what differs:

- One WebSocket per client, `/ws?clientId=<uuid>&token=<key>`: Cloud sends every job of the account
  to every socket (`clientId` is ignored), so the client's jobs share one socket and a router hands
  each job its own prompt's messages. A message without a prompt id (a type 1 preview) goes to a job
  only when it is the one job of the account known to be running; type 4 previews are asked for.
- Status and outcome from `GET /api/job/{id}/status` and `GET /api/jobs/{id}` (every status spelling
  of the docs is understood); `GET /api/history_v2/{id}` is `history()` (plain `/history/{id}` is 404).
- Outputs: `GET /api/view` answers 302 to a signed storage URL, fetched without our key.
- Cancel: a pending job is deleted from the queue; a running one is interrupted only when it is the
  account's sole running job, since Cloud's interrupt stops all of them.
- Errors: 402 is "insufficient credits" and 429 "subscription inactive" (`SubscriptionInactive`,
  never retried: it is not a rate limit); each `execution_error` category says what to do.

Partner (API) nodes need the Comfy API key in the prompt's `extra_data.api_key_comfy_org` — the same
key as `X-API-Key`. By default `queue` adds it when the workflow holds a partner node (`api_node` or
an "api node" category in `object_info`, read once per server and cached), so such workflows just
work while others never carry it; `partner_key=True`/`False` forces it, a string or `Secret` sends
another key. If the node list cannot be read the key is sent: it only goes to the server that
already receives it as `X-API-Key`, and a partner node refused at run time wastes the run. The key
lives in the request body only: never in a repr, a log line, an exception, the Job or its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

from ..config import Config, Secret
from ..errors import (
    APIError,
    AuthError,
    BadRequest,
    JobFailed,
    MissingCredentials,
    NotFound,
    PaymentRequired,
    RunComfyError,
    SubscriptionInactive,
    ValidationError,
)
from ..jobs import Job, Started, Status, parse_status
from ..media import Media
from ..timefmt import parse_timestamp
from ..transport import Storage, Transport, api_error
from ..workflow import Workflow
from .comfyui import (
    _WS_ERRORS,
    AsyncComfyUI,
    HistoryEntry,
    QueueStatus,
    _Dropped,
    _PromptRun,
    execution_error_message,
    preview_metadata,
)

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

SERVICE = "Comfy Cloud"
T = TypeVar("T")
KEY_HELP = "create one at platform.comfy.org (API Keys) and set COMFY_CLOUD_API_KEY, or pass api_key=..."
log = logging.getLogger("runcomfy_nb")

# What each `execution_error.exception_type` of Cloud means for the user.
ADVICE = {
    "ValidationError": "Cloud rejected the workflow or one of its inputs at run time: check the node's "
                       "inputs against object_info() and fix them before submitting again.",
    "ModelDownloadError": "a model the workflow needs is not available on Comfy Cloud or failed to "
                          "download: pick one the loader offers (see object_info()) or try again later.",
    "ImageDownloadError": "an input image could not be downloaded from its URL: check that the URL is "
                          "public and reachable, or upload the file with upload() and use its name.",
    "OOMError": "the GPU ran out of memory: lower the resolution, batch size or frame count, or use a "
                "smaller model.",
    "InsufficientFundsError": "the account's credits are too low for its Partner Nodes: add credits at "
                              "platform.comfy.org, then submit again.",
    "InactiveSubscriptionError": "the Comfy Cloud subscription is not active: subscribe to a plan "
                                 "(Standard, Creator or Pro) at cloud.comfy.org, then submit again.",
    "PanicError": "the inference worker crashed: submit again; if it keeps happening, report the job "
                  "id to Comfy support.",
    "ServiceError": "Comfy Cloud had an internal error: submit again in a minute.",
    "WebSocketError": "Comfy Cloud lost its connection to the inference worker: submit again.",
    "DispatcherError": "Comfy Cloud could not hand the job to an inference worker: submit again in a "
                       "minute.",
}
PARTNER_ADVICE = ("this Partner Node needs your Comfy API key in the prompt's extra_data: queue with "
                  "partner_key=True (the default sends it when object_info marks the node as an API node).")


# --- errors --------------------------------------------------------------------------------------


def _reason(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("message", "error"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if isinstance(value, str) and value.strip():
                return value.strip()
    return ""


def cloud_error(status: int, body: Any, headers: Mapping[str, str], service: str) -> APIError:
    """The exception for an error reply of Comfy Cloud (Transport's `errors` hook)."""
    reason = _reason(body)
    said = f": {reason}" if reason else ""
    code = body.get("code") if isinstance(body, dict) else None
    kw: dict[str, Any] = {"status": status, "code": code, "detail": body}
    if status == 401:
        return AuthError(f"{service} rejected the API key (401{said}). Check it: {KEY_HELP}", **kw)
    if status == 403:
        return AuthError(f"{service} refused access (403{said}): the job or file belongs to another "
                         "account. Use that account's API key.", **kw)
    if status == 402:
        return PaymentRequired(f"{service}: insufficient credits (402{said}). Add credits to your Comfy "
                               "account at platform.comfy.org, then submit again.", **kw)
    subscription = "subscription" in f"{code} {reason}".lower() or "paid" in reason.lower()
    if status == 429 and (subscription or "retry-after" not in headers):
        # Cloud's 429 means "user has not paid", not "slow down": retrying cannot help.
        return SubscriptionInactive(
            f"{service} refused to run it: the subscription is not active (429{said}). Running workflows "
            "through the API needs an active paid plan (Standard, Creator or Pro): subscribe at "
            "cloud.comfy.org, then submit again. Nothing was retried.", **kw)
    return api_error(status, body, headers, service)


def cloud_failure_message(data: Mapping[str, Any], nodes: Mapping[str, Any]) -> str:
    """Text for a Cloud `execution_error`: where and what failed, then what to do about it."""
    text = execution_error_message(data, nodes, run=SERVICE).rstrip(".")
    message = str(data.get("exception_message") or "").lower()
    if "please login" in message or "unauthorized" in message:
        return f"{text}. Likely cause: {PARTNER_ADVICE}"
    advice = ADVICE.get(str(data.get("exception_type") or ""))
    return f"{text}. What to do: {advice}" if advice else f"{text}."


# --- typed replies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CloudJob:
    """A Comfy Cloud job as the server reports it. `status` is the unified status and `raw_status`
    the server's spelling; `media` and `text` are its outputs once it completed; `error` says why it
    failed and what to do; `created` is a Unix time."""

    id: str
    status: Status
    raw_status: str
    media: list[Media] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    error: str | None = None
    created: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class CloudUser:
    """The account of the API key: `status` is "active" or "waitlisted"."""

    id: str
    status: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def active(self) -> bool:
        return self.status == "active"


def _created(body: Mapping[str, Any]) -> float | None:
    if isinstance(body.get("create_time"), (int, float)):
        return float(body["create_time"])
    return parse_timestamp(body.get("created_at"))


def _is_partner_node(schema: Any) -> bool:
    if not isinstance(schema, Mapping):
        return False
    return schema.get("api_node") is True or str(schema.get("category") or "").lower().startswith("api node")


# --- downloads -----------------------------------------------------------------------------------


class _SignedFetcher:
    """Downloads outputs: `/api/view` (with the key) answers 302 to a signed storage URL, which
    Storage fetches without it — httpx would forward `X-API-Key` on a redirect, so it is not asked
    to follow one. No `public_url`: a browser cannot send the key to `/api/view`."""

    def __init__(self, http: Transport, storage: Storage) -> None:
        self._http = http
        self._storage = storage

    def __repr__(self) -> str:
        return "<Comfy Cloud outputs>"

    @property
    def loop(self) -> Any:
        return self._storage.loop

    async def _signed(self, media: Media) -> Media:
        if not media.url.startswith(f"{self._http.base_url}/view?"):  # the key goes to Cloud only
            raise ValidationError(f"{media.filename} is not an output of this Comfy Cloud client.")
        response = await self._http.send("GET", media.url, idempotent=True)
        if not response.is_redirect:
            raise APIError(f"{SERVICE} answered /api/view for {media.filename} with HTTP "
                           f"{response.status_code}, not the redirect to its storage.")
        return replace(media, url=urljoin(str(response.url), response.headers["location"]))

    async def _from_storage(self, media: Media, fetch: Callable[[Media], Awaitable[T]]) -> T:
        signed = await self._signed(media)
        try:
            return await fetch(signed)
        except AuthError as exc:
            raise AuthError(f"The storage host refused the signed link to {media.filename} "
                            f"(HTTP {exc.status}): it expired or was altered. Read or save the file "
                            "again for a fresh link.", status=exc.status) from None

    async def read(self, media: Media) -> bytes:
        return await self._from_storage(media, self._storage.read)

    async def save(self, media: Media, path: Path) -> Path:
        return await self._from_storage(media, lambda signed: self._storage.save(signed, path))


# --- the shared socket ---------------------------------------------------------------------------


def _preview_prompt(frame: bytes) -> str | None:
    """The prompt id in a type 4 preview's metadata (None for other frames)."""
    meta = preview_metadata(frame)
    return str(meta["prompt_id"]) if meta and meta.get("prompt_id") else None


class _Router:
    """The client's one WebSocket, shared by its jobs; each job gets its own prompt's messages."""

    def __init__(self, api: AsyncComfyCloud) -> None:
        self.api = api
        self.client_id = uuid.uuid4().hex
        self.runs: set[_CloudRun] = set()
        self.ws: ClientConnection | None = None
        self.generation = 0
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._started: set[str] = set()  # prompts seen starting and ending on this socket
        self._ended: set[str] = set()

    async def join(self, run: _CloudRun) -> None:
        """Deliver the run's messages to it, opening the socket if needed (raises _WS_ERRORS)."""
        self.runs.add(run)
        async with self._lock:
            if self.ws is None:
                await self._replace()
            run._adopt_shared(self.ws, self.generation)

    async def revive(self, run: _CloudRun, retry: bool) -> None:
        """A new socket after the one `run` followed dropped, unless another run made one already;
        `retry`: the handshake is tried again after a 429, a 5xx or a connection error."""
        lost = run._generation  # read before waiting: a replacement adopts the run meanwhile
        async with self._lock:
            if self.ws is None or self.generation == lost:
                await (self.api._handshake(self._replace) if retry else self._replace())
            run._adopt_shared(self.ws, self.generation)

    async def leave(self, run: _CloudRun) -> None:
        self.runs.discard(run)
        async with self._lock:
            if not self.runs:
                await self.close()

    async def close(self) -> None:
        ws, reader, self.ws, self._reader = self.ws, self._reader, None, None
        self._started.clear()
        self._ended.clear()
        if reader is not None:
            reader.cancel()
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 3.0)

    async def _replace(self) -> None:
        await self.close()
        for run in self.runs:
            run._ws = None  # polling until the new socket is up
        ws = await self.api._open_socket(self.client_id)
        self.ws, self.generation = ws, self.generation + 1
        self._reader = asyncio.get_running_loop().create_task(self._read(ws, self.generation))
        for run in self.runs:
            run._adopt_shared(ws, self.generation)
            if run.job is not None:  # it may have missed messages meanwhile: it checks the server
                run.poke()

    async def _read(self, ws: ClientConnection, generation: int) -> None:
        try:
            async for message in ws:
                self._route(message)
        except _WS_ERRORS:
            pass
        finally:
            for run in list(self.runs):
                run._inbox.put_nowait(_Dropped(generation))

    def _route(self, message: str | bytes) -> None:
        item: Any = message
        if isinstance(message, bytes):
            prompt_id = _preview_prompt(message)
        else:
            try:
                item = json.loads(message)
            except ValueError:
                return
            if not isinstance(item, dict):
                return
            data = item.get("data") if isinstance(item.get("data"), dict) else {}
            prompt_id = data.get("prompt_id")
            self._track(item.get("type"), prompt_id, data)
            if item.get("type") == "status":  # the account's queue changed: every job checks
                for run in self.runs:
                    run._inbox.put_nowait(item)
                return
        if prompt_id is not None:  # a run whose submit is still on its way filters it itself
            targets = [r for r in self.runs if r.prompt_id in ("", prompt_id)]
        else:
            sole = self._sole_running()
            targets = [sole] if sole is not None else []
        for run in targets:
            run._inbox.put_nowait(item)

    def _track(self, kind: Any, prompt_id: Any, data: Mapping[str, Any]) -> None:
        if prompt_id is None:
            return
        if kind == "execution_start":
            self._started.add(prompt_id)
        elif kind in ("execution_success", "execution_error", "execution_interrupted") or (
                kind == "executing" and data.get("node") is None):
            self._ended.add(prompt_id)

    def _sole_running(self) -> _CloudRun | None:
        """Our run, if it is the only job of the account known to run (seen starting here, or
        running in the last /api/queue), else None: a message without a prompt id is then ours."""
        snapshot = self.api._snapshot
        running = (self._started | set(snapshot[1].running if snapshot else ())) - self._ended
        if len(running) != 1:
            return None
        return next((r for r in self.runs if r.prompt_id in running), None)


# --- one job, followed ---------------------------------------------------------------------------


class _CloudRun(_PromptRun):
    """The JobBackend of one Cloud job: the shared socket, and the job endpoints when it is quiet."""

    RECONNECT_WHEN_SILENT = False  # Cloud does not unregister sockets; websockets' pings find dead ones
    api: AsyncComfyCloud

    def __repr__(self) -> str:
        return f"<Comfy Cloud job {self.prompt_id or '(not queued)'}>"

    def _adopt_shared(self, ws: ClientConnection | None, generation: int) -> None:
        self._ws, self._generation = ws, generation
        self._socket_warned = self._socket_warned and ws is None
        self._last_message = asyncio.get_running_loop().time()

    async def _open(self) -> None:
        await self.api._router.join(self)

    async def _reopen(self, retry: bool) -> None:
        await self.api._router.revive(self, retry)

    async def close(self) -> None:
        self._ws = None
        await self.api._router.leave(self)

    async def _outcome(self) -> HistoryEntry | None:
        info = await self.api._job(self.prompt_id, self.nodes)
        if not info.status.terminal:
            return None
        return HistoryEntry(info.id, info.status, info.media, info.text, info.error, raw=info.raw)

    async def _locate(self, max_age: float) -> HistoryEntry | None:
        """The job's outcome once it ended, else None: the account's queue, else its status."""
        job = self.job
        assert job is not None
        try:
            if self._follow_queue(await self.api._queue_snapshot(max_age)):
                return None
            state = await self.api.job_status(self.prompt_id)
            if not state.status.terminal:  # between the queue and its end
                if state.status is Status.RUNNING and job.status is Status.QUEUED:
                    job.emit(Started())
                return None
            return await self._outcome()
        except NotFound:
            raise JobFailed(f"{SERVICE} does not know job {self.prompt_id} (any more).",
                            job_id=self.prompt_id) from None


# --- the client ----------------------------------------------------------------------------------


class AsyncComfyCloud(AsyncComfyUI):
    """Comfy Cloud: `queue` a workflow and follow the `Job` live (kind "cloud").

    The key comes from `api_key` or COMFY_CLOUD_API_KEY; `base_url` (or COMFY_CLOUD_URL) points
    elsewhere, e.g. at the emulator. Several jobs may run at once, up to the plan's limit. Uploads
    are content-addressed: `subfolder` and `overwrite` are accepted and ignored by Cloud.
    """

    service = "Comfy Cloud service"
    kind = "cloud"
    label = SERVICE
    handle = "cloud"

    def __init__(self, api_key: str | Secret | None = None, *, base_url: str | None = None,
                 config: Config | None = None, timeout: float | None = None) -> None:
        config = config or Config.from_env()
        if api_key is not None:
            config = config.with_(comfy_api_key=api_key)
        if config.comfy_api_key is None:
            raise MissingCredentials(f"No Comfy Cloud API key: {KEY_HELP}")
        self._key: Secret = config.comfy_api_key
        super().__init__(base_url or config.comfy_cloud_url,
                         timeout=config.timeout if timeout is None else timeout)
        self._fetcher = _SignedFetcher(self._http, self._storage)
        self._router = _Router(self)

    def __repr__(self) -> str:
        parts = urlsplit(self._base.get())
        return f"<AsyncComfyCloud {parts.netloc}{parts.path}>"

    def _transport(self, timeout: float) -> Transport:
        return Transport(f"{self._base.get()}/api", service=SERVICE, auth={"X-API-Key": self._key},
                         timeout=timeout, errors=cloud_error)

    def _ws_url(self, client_id: str) -> str:
        return f"{super()._ws_url(client_id)}&token={quote(self._key.get(), safe='')}"

    async def aclose(self) -> None:
        await super().aclose()
        await self._router.close()

    # -- account and jobs --
    async def user(self) -> CloudUser:
        """The account of the key; `.active` is False while it has no subscription."""
        reply = await self._http.request("GET", "/user")
        reply = reply if isinstance(reply, dict) else {}
        return CloudUser(id=str(reply.get("id") or ""), status=str(reply.get("status") or ""), raw=reply)

    async def job_status(self, prompt_id: str) -> CloudJob:
        """The job's status (`GET /api/job/{id}/status`): no outputs; `error` if it failed."""
        reply = await self._http.request("GET", f"/job/{quote(prompt_id, safe='')}/status")
        return self._cloud_job(reply if isinstance(reply, dict) else {}, {}, prompt_id)

    async def job(self, prompt_id: str) -> CloudJob:
        """The job with its outputs and error (`GET /api/jobs/{id}`)."""
        return await self._job(prompt_id, {})

    async def jobs(self, *, status: str | list[str] | None = None, limit: int = 100,
                   offset: int = 0) -> list[CloudJob]:
        """The account's jobs, newest first; `status` filters ("pending", "in_progress", "completed",
        "failed", "cancelled"; a list or a comma-separated string). No outputs: see `job(id)`."""
        params: dict[str, Any] = {"limit": limit, "offset": offset, "sort_by": "create_time",
                                  "sort_order": "desc"}
        if status:
            params["status"] = status if isinstance(status, str) else ",".join(status)
        reply = await self._http.request("GET", "/jobs", params=params)
        rows = reply.get("jobs") if isinstance(reply, dict) else None
        return [self._cloud_job(row, {}) for row in rows or [] if isinstance(row, dict)]

    async def history(
        self, prompt_id: str | None = None, *, max_items: int | None = None,
    ) -> HistoryEntry | list[HistoryEntry] | None:
        """One ended job as ComfyUI's history has it (None while it is queued or running), or the
        recent ones, oldest first (`/api/history_v2`)."""
        if prompt_id is not None:
            reply = await self._http.request("GET", f"/history_v2/{quote(prompt_id, safe='')}")
            raw = reply.get(prompt_id) if isinstance(reply, dict) else None
            return self._entry(prompt_id, raw) if isinstance(raw, dict) else None
        params = {"max_items": max_items} if max_items is not None else None
        reply = await self._http.request("GET", "/history_v2", params=params)
        return [self._entry(str(k), v) for k, v in (reply or {}).items() if isinstance(v, dict)]

    async def _job(self, prompt_id: str, nodes: Mapping[str, Any]) -> CloudJob:
        reply = await self._http.request("GET", f"/jobs/{quote(prompt_id, safe='')}")
        return self._cloud_job(reply if isinstance(reply, dict) else {}, nodes, prompt_id)

    def _cloud_job(self, body: Mapping[str, Any], nodes: Mapping[str, Any], prompt_id: str = "") -> CloudJob:
        raw_status = str(body.get("status") or "")
        status = parse_status(raw_status, completed=Status.SUCCEEDED)
        media, text = self._media(body.get("outputs")) if status is Status.SUCCEEDED else ([], [])
        error = None
        if status is Status.FAILED:
            failure = body.get("execution_error")
            error = (self._failure_text(failure, nodes) if isinstance(failure, dict)
                     else f"The {SERVICE} job failed: {body.get('error_message') or 'no details'} "
                          f"(status {raw_status!r}). Submit again; if it repeats, report the job id.")
        return CloudJob(id=str(body.get("id") or prompt_id), status=status, raw_status=raw_status,
                        media=media, text=text, error=error, created=_created(body), raw=dict(body))

    def _failure_text(self, data: Mapping[str, Any], nodes: Mapping[str, Any]) -> str:
        return cloud_failure_message(data, nodes)

    # -- submit --
    async def queue(
        self, workflow: Workflow | Mapping[str, Any], *, partner_key: bool | str | Secret | None = None,
        extra_data: Mapping[str, Any] | None = None, label: str | None = None,
    ) -> Job:
        """Submit an API-format workflow and return its `Job`, followed over the shared WebSocket.

        `partner_key`: None (default) sends the Comfy API key in `extra_data` when the workflow holds
        a Partner (API) node; True always, False never; a string or Secret sends that key instead.
        A workflow Cloud refuses raises ValidationError with one line per bad node input."""
        wf = workflow if isinstance(workflow, Workflow) else Workflow(workflow)
        if extra_data is not None and not isinstance(extra_data, Mapping):
            raise ValidationError("extra_data must be an object.")
        extra = dict(extra_data or {})
        key = await self._partner_key(wf, partner_key)
        if key is not None:
            extra["api_key_comfy_org"] = key  # a Secret: revealed in the request body only
        return await super().queue(wf, client_id=self._router.client_id, extra_data=extra or None,
                                   label=label)

    async def _partner_key(self, wf: Workflow, choice: bool | str | Secret | None) -> Secret | None:
        if choice is None:
            return self._key if await self._has_partner_nodes(wf) else None
        if isinstance(choice, bool):
            return self._key if choice else None
        if isinstance(choice, Secret):
            return choice
        if not isinstance(choice, str) or not choice.strip():
            raise ValidationError("partner_key must be True, False, None or a non-empty key.")
        return Secret(choice)

    async def _has_partner_nodes(self, wf: Workflow) -> bool:
        try:
            info = await self.object_info()
        except RunComfyError as exc:
            log.info("Could not read the %s's node list (%s); sending the Comfy API key for any "
                     "Partner Nodes.", SERVICE, type(exc).__name__)
            return True
        return any(_is_partner_node(info.get(str(node.get("class_type"))))
                   for node in wf.data.values() if isinstance(node, Mapping))

    async def _find_by_client_id(self, client_id: str) -> str | None:
        return None  # Cloud's queue and job records do not carry the client id (and ours is shared)

    def _new_run(self, nodes: Mapping[str, Any], client_id: str) -> _CloudRun:
        return _CloudRun(self, nodes, self._router.client_id)

    def _upload_refused(self, name: str, exc: BadRequest) -> BadRequest:
        said = _reason(exc.detail) or f"HTTP {exc.status}"
        return BadRequest(f"{SERVICE} refused the upload of {name} ({said}). It takes files up to 50 MB "
                          "and images up to 16384 px per edge and 64 megapixels.", status=exc.status,
                          code=exc.code, detail=exc.detail)

    # -- stopping --
    async def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the account's running jobs — all of them: Cloud cannot stop just one. With
        `prompt_id`, only if that job is the sole one running (else ValidationError, nothing sent)."""
        if prompt_id is not None:
            running = (await self.queue_status()).running
            if running != (prompt_id,):
                raise ValidationError(
                    f"{SERVICE} interrupts every running job of the account at once, and job {prompt_id} "
                    f"is {'not running' if prompt_id not in running else 'running beside others'}: "
                    "nothing was interrupted. Call interrupt() without an id to stop them all.")
        await self._http.request("POST", "/interrupt", idempotent=True)

    async def _stop_running(self, prompt_id: str, status: QueueStatus) -> bool:
        others = len(status.running) - 1
        if others:
            log.warning("%s can only interrupt all running jobs of the account at once, and %d other "
                        "job(s) run beside %s: it was not stopped. interrupt() stops them all.",
                        SERVICE, others, prompt_id)
            return False
        await self.interrupt()
        return True

    async def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        """Not on Comfy Cloud: it manages its workers' memory itself."""
        raise ValidationError(f"{SERVICE} manages its workers' memory itself; there is no free().")


__all__ = ["AsyncComfyCloud", "CloudJob", "CloudUser", "cloud_error", "cloud_failure_message"]
