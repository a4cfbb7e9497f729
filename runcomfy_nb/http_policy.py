"""What every HTTP call of ours shares: the User-Agent, one TLS context (loading the CA bundle
takes tens of milliseconds, once per process), the retry rule, one warning line per outage, and
no URL in the logs of httpx, httpcore or websockets.

Retries (stamina) follow one rule: a call is retried only when repeating it cannot cost money.
Idempotent calls (GET, status polls, DELETE of a machine) and downloads retry on connection errors,
timeouts, 5xx (also an error body with a server error code in a 2xx reply) and 429 (after its
Retry-After, up to 30 s). A paid POST retries only when the request provably never reached the
server (the connection could not be made) or the server refused it with 429 before accepting it.
A retried call logs one warning line, at its first retry; the later ones go to DEBUG.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import re
import ssl
from collections.abc import Callable, Iterator

import httpx
from stamina.instrumentation import RetryDetails, get_on_retry_hooks, set_on_retry_hooks

from . import __version__
from .errors import APIError, RateLimited, ServerError

USER_AGENT = f"runcomfy_nb/{__version__}"
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
MAX_RETRY_AFTER = 30.0


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS context of every client of ours (httpx's default: certifi, or SSL_CERT_FILE/DIR)."""
    return httpx.create_ssl_context()


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


def answered(what: str) -> None:
    """`what` answered: an outage it was in is over (one INFO line), the next one is reported again."""
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
    return reason(exc) if isinstance(exc, Exception) else type(exc).__name__


def retry_hook(idempotent: bool) -> Callable[[Exception], bool | float]:
    """stamina's `on=`: whether (or after how many seconds) a failed attempt is tried again."""
    def hook(exc: Exception) -> bool | float:
        if isinstance(exc, RateLimited):
            if exc.retry_after is None:
                return True
            return exc.retry_after if exc.retry_after <= MAX_RETRY_AFTER else False
        if isinstance(exc, NEVER_SENT):
            return True
        return idempotent and isinstance(exc, (ServerError, httpx.TransportError))

    return hook


def reason(exc: Exception) -> str:
    """A network failure in a few words."""
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
