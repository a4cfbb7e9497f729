"""HTTP transport: one `httpx.AsyncClient` per base URL, auth, retries and error mapping.

Retries (stamina) follow one rule: a call is retried only when repeating it cannot cost money.
Idempotent calls (GET, status polls, DELETE of a machine) and downloads retry on connection errors,
timeouts, 5xx (also an error body with a server error code in a 2xx reply) and 429 (after its
Retry-After, up to 30 s). A paid POST retries only when the request provably never reached the
server (the connection could not be made) or the server refused it with 429 before accepting it.
A retried call logs one warning line, at its first retry; the later ones go to DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import stamina
from stamina.instrumentation import RetryDetails, get_on_retry_hooks, set_on_retry_hooks

from . import __version__
from .config import Secret
from .errors import (
    APIError,
    AuthError,
    BadRequest,
    NotFound,
    PaymentRequired,
    RateLimited,
    ServerError,
    SubmitUncertain,
    TransportError,
)
from .media import Media, claim

USER_AGENT = f"runcomfy_nb/{__version__}"
_URL = re.compile(r"\b(?:https?|wss?)://\S+|(?<=host=)'[^']*'|(?<=host=)\"[^\"]*\"")


class _RedactURLs(logging.Filter):
    """httpx and httpcore log request URLs; a machine's URL grants access, so none is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _URL.sub("<url>", record.getMessage())
        record.args = None
        return True


for _name in ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy",
              "websockets.client"):
    logging.getLogger(_name).addFilter(_RedactURLs())
log = logging.getLogger("runcomfy_nb")
_CALL: contextvars.ContextVar[str | None] = contextvars.ContextVar("runcomfy_nb_call", default=None)
_OTHER_HOOKS = get_on_retry_hooks()  # what stamina does for retries that are not ours
_TROUBLED: set[str] = set()  # the calls in an outage: their retries were reported once already


def _on_retry(details: RetryDetails) -> None:
    """One warning line per outage of a call of ours (at its first retry); the later retries, of
    this call or of the next ones, go to DEBUG until it answers again. No URL or secret in either.
    Other code's stamina retries keep the hooks they had."""
    what = _CALL.get()
    if what is None:
        for hook in _OTHER_HOOKS:
            hook(details)
        return
    first = what not in _TROUBLED
    _TROUBLED.add(what)
    log.log(logging.WARNING if first else logging.DEBUG, "%s failed (%s); retrying (attempt %d)%s",
            what, _why(details.caused_by), details.retry_num + 1,
            "; further retries are logged at DEBUG until it answers again" if first else "")


def _answered(what: str) -> None:
    if what in _TROUBLED:
        _TROUBLED.discard(what)
        log.info("%s answers again", what)


set_on_retry_hooks([_on_retry])


@contextlib.contextmanager
def retries_of(what: str) -> Iterator[None]:
    """Name the call whose retries stamina reports in this block (for `_on_retry`)."""
    token = _CALL.set(what)
    try:
        yield
    finally:
        _CALL.reset(token)


def _why(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return f"HTTP {exc.status}" + (f", {exc.code}" if exc.code is not None else "")
    return _reason(exc) if isinstance(exc, Exception) else type(exc).__name__


NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
MAX_RETRY_AFTER = 30.0


class RateLimiter:
    """A token bucket: `rate` requests per second, `burst` at once. Thread-safe and loop-agnostic,
    so one limiter can serve every client of an account (async and blocking alike)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def _reserve(self) -> float:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate) - 1
            self._stamp = now
            return max(0.0, -self._tokens / self.rate)

    async def acquire(self) -> None:
        delay = self._reserve()
        if delay:
            await asyncio.sleep(delay)


def _message(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("error_message", "message", "error", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return value["message"]
    if isinstance(body, str) and body.strip() and len(body) < 300 and "<" not in body:
        return body.strip()
    return ""


MAX_DETAIL = 600  # characters of error details in a message


def _texts(value: Any, depth: int = 0) -> list[str]:
    """The messages in error details of any shape the APIs use: text, a list of texts, FastAPI's
    `{loc, msg}` items, `{message, details}` objects, or a dict of errors per node or per field."""
    if value is None or value == "" or depth > 6:
        return []
    if isinstance(value, list):
        return [text for item in value for text in _texts(item, depth + 1)]
    if not isinstance(value, dict):
        return [" ".join(str(value).split())]
    if "msg" in value or "loc" in value:
        loc = ".".join(str(x) for x in value.get("loc") or [] if x != "body")
        msg = " ".join(str(value.get("msg") or "").split())
        return [f"{loc}: {msg}" if loc and msg else loc or msg]
    if {"message", "error_message", "details", "errors"} & value.keys():
        head = " ".join(str(value.get("message") or value.get("error_message") or "").split())
        inner = _texts(value.get("details"), depth + 1) + _texts(value.get("errors"), depth + 1)
        return [f"{head}: {text}" if head else text for text in inner] or ([head] if head else [])
    texts = []
    for key, item in value.items():
        name = f"{key} ({item['class_type']})" if isinstance(item, dict) and item.get("class_type") else key
        texts += [f"{name}: {text}" for text in _texts(item, depth + 1)]
    return texts


def _detail(body: Any) -> str:
    """The error details of a body, one line, at most MAX_DETAIL characters."""
    if not isinstance(body, dict):
        return ""
    sources = [body.get("details"), body.get("detail"), body.get("node_errors")]
    if isinstance(body.get("error"), dict):
        sources += [body["error"].get("details"), body["error"].get("errors")]
    parts: list[str] = []
    for text in (t for source in sources for t in _texts(source)):
        if text and text not in parts:
            parts.append(text)
    joined = "; ".join(parts)
    return joined if len(joined) <= MAX_DETAIL else joined[: MAX_DETAIL - 1].rstrip() + "…"


# Codes whose meaning the HTTP status may not carry (a 2xx body-level error, or a plain 400):
# serverless InsufficientFunds, DisabledDeployment (a refusal: 409) and DeletedDeployment (404),
# Model API InsufficientResources and UserAccountError.
_CODE_KIND = {10001: 402, 10002: 409, 10003: 404, 400002: 402, 400004: 401}


# String codes of a server failure (some replies carry them in a 2xx body): a ServerError, which
# idempotent calls retry; a paid POST is never sent again for it.
_SERVER_CODES = {"internal_error": 500, "internal_server_error": 500, "server_error": 500,
                 "bad_gateway": 502, "service_unavailable": 503, "gateway_timeout": 504}


def _error_code(body: Any) -> int | str | None:
    code = body.get("error_code") if isinstance(body, dict) else None
    if isinstance(code, str) and code.strip().isdigit():
        return int(code)  # codes come as strings as well as integers
    return code if isinstance(code, (int, str)) and not isinstance(code, bool) else None


def api_error(status: int, body: Any, headers: Mapping[str, str], service: str) -> APIError:
    """The exception for an HTTP error status or a body-level `error_code`."""
    code = _error_code(body)
    kind = status
    if isinstance(code, int) and code in _CODE_KIND and status <= 400:
        kind = _CODE_KIND[code]
    elif isinstance(code, int) and status < 400:  # body-level error in a 2xx reply
        kind = code // 1000 if code >= 100000 else 400
    elif isinstance(code, str) and status < 400:
        kind = _SERVER_CODES.get(code.strip().lower(), status)
    text = _message(body)
    detail = _detail(body)
    reason = (f"{text} ({detail})" if detail not in text else text) if text and detail else text or detail
    kw: dict[str, Any] = {"status": status, "code": code, "detail": body}
    if kind in (401, 403):
        what = "rejected the credentials" if kind == 401 else "refused access"
        hint = (" Check RUNCOMFY_TOKEN (Token1 or Token2 from your RunComfy profile) and that the "
                "resource is yours." if service.startswith("RunComfy") else "")
        return AuthError(f"{service} {what} ({kind}{'' if not reason else ': ' + reason}).{hint}", **kw)
    if kind == 402:
        return PaymentRequired(
            f"{service}: insufficient balance ({reason or 'payment required'}). "
            "Top up your RunComfy balance, then submit again.", **kw)
    if kind == 429:
        retry_after = _retry_after(headers)
        wait = f" (the server asked to wait {retry_after:g} s)" if retry_after else ""
        return RateLimited(
            f"{service} is rate limiting these calls{wait}; retries ran out. Wait a little and "
            "try again, or make fewer calls at once.", retry_after=retry_after, **kw)
    if kind == 404:
        return NotFound(f"{service}: {reason or 'not found'}. Check the id.", **kw)
    if 400 <= kind < 500:
        return BadRequest(f"{service} rejected the request: {reason or f'HTTP {kind}'}", **kw)
    if kind >= 500 and status < 400:
        return ServerError(
            f"{service} answered HTTP {status} with an error ({code}{'' if not reason else ': ' + reason}); "
            "calls safe to repeat were retried, a submit was not sent again: check your recent jobs "
            "before submitting again.", **kw)
    if kind >= 500:
        return ServerError(
            f"{service} failed ({kind}{'' if not reason else ': ' + reason}); it was retried "
            "where that was safe. Try again in a minute.", **kw)
    return APIError(f"{service} answered with an error: {reason or code}", **kw)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _parse(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


def _retry_hook(idempotent: bool) -> Callable[[Exception], bool | float]:
    def hook(exc: Exception) -> bool | float:
        if isinstance(exc, RateLimited):
            if exc.retry_after is None:
                return True
            return exc.retry_after if exc.retry_after <= MAX_RETRY_AFTER else False
        if isinstance(exc, NEVER_SENT):
            return True
        return idempotent and isinstance(exc, (ServerError, httpx.TransportError))

    return hook


ErrorMapper = Callable[[int, Any, Mapping[str, str], str], APIError]


class Transport:
    """Calls one API at `base_url`; `auth` maps header names to secrets added to each request.
    `errors` turns an error reply into the exception (an API whose statuses mean something else,
    like Comfy Cloud's 429 "subscription inactive", brings its own); retries follow the class."""

    def __init__(
        self,
        base_url: str,
        *,
        service: str,
        auth: Mapping[str, Secret] | None = None,
        auth_scheme: str = "",
        timeout: float = 30.0,
        limiter: RateLimiter | None = None,
        attempts: int = 5,
        retry_timeout: float = 60.0,
        errors: ErrorMapper = api_error,
    ) -> None:
        self.service = service
        self._errors = errors
        self._auth = dict(auth or {})
        self._scheme = auth_scheme
        self._limiter = limiter
        self._attempts = attempts
        self._retry_timeout = retry_timeout
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=10.0),
            headers={"User-Agent": USER_AGENT},
        )

    def __repr__(self) -> str:
        return f"<Transport {self.service}>"

    @property
    def base_url(self) -> str:
        return str(self._client.base_url).rstrip("/")

    def auth_headers(self) -> dict[str, str]:
        """The credential headers of each request (secret: for our own calls only)."""
        return {name: f"{self._scheme}{secret.get()}" for name, secret in self._auth.items()}

    async def request(
        self, method: str, path: str, *, json: Any = None, params: Any = None,
        idempotent: bool | None = None, timeout: float | None = None, **kwargs: Any,
    ) -> Any:
        """Send one call and return the parsed body (JSON, text, or None when empty)."""
        if idempotent is None:
            idempotent = method.upper() in ("GET", "HEAD", "DELETE", "PUT")
        response = await self.send(method, path, json=json, params=params, idempotent=idempotent,
                                   timeout=timeout, **kwargs)
        return _parse(response)

    async def send(
        self, method: str, path: str, *, idempotent: bool, timeout: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Like `request`, but returns the response (for redirects and raw bytes)."""
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=min(10.0, timeout))
        try:
            what = f"{self.service} {method.upper()} call"
            with retries_of(what):
                async for attempt in stamina.retry_context(
                    on=_retry_hook(idempotent), attempts=self._attempts, timeout=self._retry_timeout,
                    wait_initial=0.3, wait_max=10.0,
                ):
                    with attempt:
                        response = await self.once(method, path, **kwargs)
                        _answered(what)
                        return response
        except NEVER_SENT as exc:
            raise TransportError(f"Could not connect to {self.service}: {_reason(exc)}. "
                                 "Check the network and the base URL.") from None
        except httpx.TransportError as exc:
            if idempotent:
                raise TransportError(f"{self.service} did not answer ({_reason(exc)}); "
                                     "it was retried and gave up.") from None
            raise SubmitUncertain(
                f"{self.service} got the request but no answer came back ({_reason(exc)}). "
                "It may have been accepted, so it was NOT sent again: check your recent jobs "
                "before submitting again.") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One attempt, no retry: an error reply raises its APIError, a network failure httpx's."""
        if self._limiter is not None:
            await self._limiter.acquire()
        headers = {**self.auth_headers(), **kwargs.pop("headers", {})}
        response = await self._client.request(method, path, headers=headers, **kwargs)
        if response.status_code >= 400:
            await response.aread()
            raise self._errors(response.status_code, _parse(response), response.headers, self.service)
        body = _parse(response) if response.headers.get("content-type", "").startswith(
            "application/json") else None
        if isinstance(body, dict) and body.get("error_code") is not None:
            raise self._errors(response.status_code, body, response.headers, self.service)
        return response

    async def aclose(self) -> None:
        await self._client.aclose()


def _reason(exc: Exception) -> str:
    names = {
        httpx.ConnectError: "connection refused or host unreachable",
        httpx.ConnectTimeout: "connection timed out",
        httpx.ReadTimeout: "read timed out",
        httpx.WriteTimeout: "write timed out",
        httpx.PoolTimeout: "too many calls at once",
        httpx.RemoteProtocolError: "the connection was dropped",
        httpx.ReadError: "the connection was dropped",
    }
    return next((text for cls, text in names.items() if isinstance(exc, cls)), type(exc).__name__)


class Storage:
    """Fetches output files by URL, never with our credentials (they must not leak to storage
    hosts), following redirects; downloads are checked for truncation and written atomically."""

    def __init__(self, *, timeout: float = 60.0) -> None:
        try:  # the loop this client will work on; known at the latest at the first download
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=10.0), follow_redirects=True,
            headers={"User-Agent": USER_AGENT},
        )

    def __repr__(self) -> str:
        return "<Storage>"

    async def _stream_to(self, media: Media, sink: Any) -> int:
        self.loop = self.loop or asyncio.get_running_loop()
        what = f"Download of {media.filename}"
        with retries_of(what):
            async for attempt in stamina.retry_context(
                on=_retry_hook(True), attempts=5, timeout=120.0, wait_initial=0.3, wait_max=10.0,
            ):
                with attempt:
                    size = await self._stream_once(media, sink)
                    _answered(what)
                    return size
        raise AssertionError("unreachable")  # pragma: no cover

    async def _stream_once(self, media: Media, sink: Any) -> int:
        sink.seek(0)
        sink.truncate()
        async with self._client.stream("GET", media.url) as response:
            if response.status_code >= 400:
                await response.aread()
                raise api_error(response.status_code, _parse(response), response.headers,
                                f"Download of {media.filename}")
            expected = int(response.headers.get("content-length") or -1)
            size = 0
            try:
                async for chunk in response.aiter_bytes():
                    sink.write(chunk)
                    size += len(chunk)
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                raise httpx.ReadError(f"truncated after {size} bytes") from exc
            if expected >= 0 and size != expected:
                raise httpx.ReadError(f"truncated: {size} of {expected} bytes")
            return size

    def public_url(self, media: Media) -> str:
        """Serverless output URLs need no credentials, so a browser may load them directly."""
        return media.url

    async def read(self, media: Media) -> bytes:
        import io

        buffer = io.BytesIO()
        try:
            await self._stream_to(media, buffer)
        except httpx.TransportError as exc:
            raise TransportError(f"Download of {media.filename} failed: {exc}. "
                                 "Nothing was kept; try again.") from None
        return buffer.getvalue()

    async def save(self, media: Media, path: Path) -> Path:
        """Download to `path`, or beside it under a free name: never over a file (see `media.claim`)."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:60]}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as sink:
                await self._stream_to(media, sink)
            return claim(Path(tmp), path)
        except httpx.TransportError as exc:
            raise TransportError(f"Download of {media.filename} failed: {exc}. "
                                 "Nothing was written; try again.") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    async def aclose(self) -> None:
        await self._client.aclose()
