"""Comfy Cloud's dialect of ComfyUI's protocol (cloud.comfy.org; the client is `clients/cloud.py`).

Where Cloud differs from a stock server, all in `CloudDialect`:

- Paths under `/api` with an `X-API-Key` header; 402 is "insufficient credits" and 429 "subscription
  inactive" (`SubscriptionInactive`, never retried: it is not a rate limit).
- One WebSocket per client, `/ws?clientId=<uuid>&token=<key>`: Cloud sends every job of the account
  to every socket (`clientId` is ignored), so the client's jobs share one socket and it hands each
  job its own prompt's messages (sockets.SharedSocket). Cloud does not record client ids, so a lost
  submit reply cannot be matched by one.
- Status and outcome from `GET /api/job/{id}/status` and `GET /api/jobs/{id}` (every status spelling
  of the docs is understood); `GET /api/history_v2/{id}` is `history()` (plain `/history/{id}` is 404).
- Outputs: `GET /api/view` answers 302 to a signed storage URL, fetched without our key.
- Stopping: Cloud's interrupt stops every running job of the account, so a running job is
  interrupted only when it is the account's sole running job.
- Each `execution_error` category says what to do; an upload refusal names Cloud's limits.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

from ..config import Secret
from ..errors import (
    APIError,
    AuthError,
    BadRequest,
    JobFailed,
    NotFound,
    PaymentRequired,
    SubscriptionInactive,
    UnexpectedReply,
    ValidationError,
)
from ..http_errors import api_error
from ..media import Fetcher, Media
from ..status import Status, parse_status
from ..storage import Storage
from ..timefmt import parse_timestamp
from ..transport import Transport
from .comfyui import Calls, Dialect, HistoryEntry, QueueStatus, execution_error_message
from .comfyui.downloads import ViewFetcher

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


def reason(body: Any) -> str:
    """The message of a Cloud error body, if it has one."""
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
    said_reason = reason(body)
    said = f": {said_reason}" if said_reason else ""
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
    subscription = "subscription" in f"{code} {said_reason}".lower() or "paid" in said_reason.lower()
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


# --- jobs ----------------------------------------------------------------------------------------


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


def _created(body: Mapping[str, Any]) -> float | None:
    if isinstance(body.get("create_time"), (int, float)):
        return float(body["create_time"])
    return parse_timestamp(body.get("created_at"))



# --- downloads -----------------------------------------------------------------------------------


class SignedFetcher(ViewFetcher):
    """Downloads outputs: `/api/view` (with the key) answers 302 to a signed storage URL, which
    Storage fetches without it — httpx would forward `X-API-Key` on a redirect, so it is not asked
    to follow one. No `public_url`: a browser cannot send the key to `/api/view`."""

    def __init__(self, http: Transport, storage: Storage) -> None:
        super().__init__(storage)
        self._http = http

    def __repr__(self) -> str:
        return "<Comfy Cloud outputs>"

    async def _signed(self, media: Media) -> Media:
        if not media.url.startswith(f"{self._http.base_url}/view?"):  # the key goes to Cloud only
            raise ValidationError(f"{media.filename} is not an output of this Comfy Cloud client.")
        response = await self._http.send("GET", media.url, idempotent=True)
        if not response.is_redirect:
            raise UnexpectedReply(f"{SERVICE} answered /api/view for {media.filename} with HTTP "
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
        return await self._from_storage(media, super().read)

    async def save(self, media: Media, path: Path) -> Path:
        save = super().save
        return await self._from_storage(media, lambda signed: save(signed, path))


# --- the dialect ---------------------------------------------------------------------------------


class CloudDialect(Dialect):
    """Comfy Cloud's ways (see the module docstring), for the API key `key`."""

    service = "Comfy Cloud service"
    kind = "cloud"
    label = SERVICE
    handle = "cloud"
    run_name = "Comfy Cloud job"
    history_path = "/history_v2"
    shared_socket = True
    records_client_id = False  # Cloud's queue and job records do not carry the client id

    def __init__(self, key: Secret) -> None:
        self._key = key

    def transport(self, base_url: str, timeout: float) -> Transport:
        return Transport(f"{base_url}/api", service=SERVICE, auth={"X-API-Key": self._key},
                         timeout=timeout, errors=cloud_error)

    def fetcher(self, http: Transport, storage: Storage) -> Fetcher:
        return SignedFetcher(http, storage)

    def ws_url(self, base_url: str, client_id: str) -> str:
        return f"{super().ws_url(base_url, client_id)}&token={quote(self._key.get(), safe='')}"

    def shown_as(self, base_url: str) -> str:
        parts = urlsplit(base_url)
        return f"{parts.netloc}{parts.path}"

    def failure_text(self, data: Mapping[str, Any], nodes: Mapping[str, Any]) -> str:
        return cloud_failure_message(data, nodes)

    def upload_refused(self, name: str, exc: BadRequest) -> BadRequest:
        said = reason(exc.detail) or f"HTTP {exc.status}"
        return BadRequest(f"{SERVICE} refused the upload of {name} ({said}). It takes files up to 50 MB "
                          "and images up to 16384 px per edge and 64 megapixels.", status=exc.status,
                          code=exc.code, detail=exc.detail)

    async def interrupt(self, server: Calls, prompt_id: str | None) -> None:
        """Stop the account's running jobs — all of them: Cloud cannot stop just one. With
        `prompt_id`, only if that job is the sole one running (else ValidationError, nothing sent)."""
        if prompt_id is not None:
            running = (await server.queue_status()).running
            if running != (prompt_id,):
                raise ValidationError(
                    f"{SERVICE} interrupts every running job of the account at once, and job {prompt_id} "
                    f"is {'not running' if prompt_id not in running else 'running beside others'}: "
                    "nothing was interrupted. Call interrupt() without an id to stop them all.")
        await server.http.request("POST", "/interrupt", idempotent=True)

    async def stop_running(self, server: Calls, prompt_id: str, status: QueueStatus) -> bool:
        others = len(status.running) - 1
        if others:
            log.warning("%s can only interrupt all running jobs of the account at once, and %d other "
                        "job(s) run beside %s: it was not stopped. interrupt() stops them all.",
                        SERVICE, others, prompt_id)
            return False
        await self.interrupt(server, None)
        return True

    async def outcome(self, server: Calls, prompt_id: str, nodes: Mapping[str, Any]) -> HistoryEntry | None:
        info = await self.job(server, prompt_id, nodes)
        if not info.status.terminal:
            return None
        return HistoryEntry(info.id, info.status, info.media, info.text, info.error, raw=info.raw)

    async def locate(
        self, server: Calls, prompt_id: str, nodes: Mapping[str, Any],
    ) -> HistoryEntry | Status | None:
        """The job's end once it ended, else its status (`/api/job/{id}/status`)."""
        try:
            state = await self.job_status(server, prompt_id)
            if not state.status.terminal:  # between the queue and its end
                return state.status
            return await self.outcome(server, prompt_id, nodes) or state.status
        except NotFound:
            raise JobFailed(f"{SERVICE} does not know job {prompt_id} (any more).",
                            job_id=prompt_id) from None

    # -- Cloud's job records --
    async def job_status(self, server: Calls, prompt_id: str) -> CloudJob:
        """The job's status (`GET /api/job/{id}/status`): no outputs; `error` if it failed."""
        reply = await server.http.request("GET", f"/job/{quote(prompt_id, safe='')}/status")
        return self.read_job(server, reply if isinstance(reply, dict) else {}, {}, prompt_id)

    async def job(self, server: Calls, prompt_id: str, nodes: Mapping[str, Any]) -> CloudJob:
        """The job with its outputs and error (`GET /api/jobs/{id}`)."""
        reply = await server.http.request("GET", f"/jobs/{quote(prompt_id, safe='')}")
        return self.read_job(server, reply if isinstance(reply, dict) else {}, nodes, prompt_id)

    def read_job(self, server: Calls, body: Mapping[str, Any], nodes: Mapping[str, Any],
                 prompt_id: str = "") -> CloudJob:
        """A job record of Cloud as a CloudJob (`nodes`: the workflow, for failure text)."""
        raw_status = str(body.get("status") or "")
        status = parse_status(raw_status, completed=Status.SUCCEEDED) or Status.SUCCEEDED
        media, text = server.outputs(body.get("outputs")) if status is Status.SUCCEEDED else ([], [])
        error = None
        if status is Status.FAILED:
            failure = body.get("execution_error")
            error = (self.failure_text(failure, nodes) if isinstance(failure, dict)
                     else f"The {SERVICE} job failed: {body.get('error_message') or 'no details'} "
                          f"(status {raw_status!r}). Submit again; if it repeats, report the job id.")
        return CloudJob(id=str(body.get("id") or prompt_id), status=status, raw_status=raw_status,
                        media=media, text=text, error=error, created=_created(body), raw=dict(body))
