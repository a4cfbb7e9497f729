"""HTTP transport: one `httpx.AsyncClient` per API base URL, with auth, retries (see `http_policy`)
and error replies mapped to the error tree (see `http_errors`). At most `max_in_flight` calls are
on the wire at once (the pool and its keep-alive have as many connections): the others wait for a
slot, and that wait is not part of their timeout. Calls that may not be repeated (submits) take at
most three quarters of the slots, so status calls of running jobs are never stuck behind a flood of
submits. A 429's Retry-After holds every call.

Twelve slots by default: httpcore's pool scans its connections (and their sockets) at every call's
start and end, quadratically in their number (`_assign_requests_to_connections`), so 32 connections
cost a 10,000-job sweep a third more CPU and its loop-lag target, for no throughput: the status loop
makes at most 16 calls at once and a deployment's submits take a few milliseconds each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import httpx
import stamina

from .config import Secret
from .errors import RateLimited, SubmitUncertain, TransportError
from .http_errors import ErrorMapper, api_error, parse_body
from .http_policy import (
    MAX_RETRY_AFTER,
    NEVER_SENT,
    USER_AGENT,
    answered,
    reason,
    retries_of,
    retry_hook,
    tls_context,
)
from .ratelimit import RateLimiter


class Transport:
    """Calls one API at `base_url`; `auth` maps header names to secrets added to each request.
    `errors` turns an error reply into the exception (an API whose statuses mean something else,
    like Comfy Cloud's 429 "subscription inactive", brings its own); retries follow `http_policy`.
    `http_transport` replaces httpx's network transport (tests give an `httpx.MockTransport`).
    `max_in_flight` bounds the calls on the wire at once; more wait for a slot, in order."""

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
        http_transport: httpx.AsyncBaseTransport | None = None,
        max_in_flight: int = 12,
    ) -> None:
        self.service = service
        self._errors = errors
        self._auth = dict(auth or {})
        self._scheme = auth_scheme
        self._limiter = limiter
        self._attempts = attempts
        self._retry_timeout = retry_timeout
        self.max_in_flight = max_in_flight
        self._slots: dict[tuple[asyncio.AbstractEventLoop, bool], asyncio.Semaphore] = {}
        self._held_until = 0.0  # time.monotonic() before which no call is sent (a 429)
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=10.0),
            headers={"User-Agent": USER_AGENT},
            transport=http_transport, verify=tls_context(),
            limits=httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight,
                                keepalive_expiry=30.0),
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
        return parse_body(response)

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
                    on=retry_hook(idempotent), attempts=self._attempts, timeout=self._retry_timeout,
                    wait_initial=0.3, wait_max=10.0,
                ):
                    with attempt:
                        if idempotent:
                            response = await self.once(method, path, **kwargs)
                        else:
                            async with self._slot(submits=True):
                                response = await self.once(method, path, **kwargs)
                        answered(what)
                        return response
        except NEVER_SENT as exc:
            raise TransportError(f"Could not connect to {self.service}: {reason(exc)}. "
                                 "Check the network and the base URL.") from None
        except httpx.TransportError as exc:
            if idempotent:
                raise TransportError(f"{self.service} did not answer ({reason(exc)}); "
                                     "it was retried and gave up.") from None
            raise SubmitUncertain(
                f"{self.service} got the request but no answer came back ({reason(exc)}). "
                "It may have been accepted, so it was NOT sent again: check your recent jobs "
                "before submitting again.") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One attempt, no retry: an error reply raises its APIError, a network failure httpx's."""
        if self._limiter is not None:
            await self._limiter.acquire()
        headers = {**self.auth_headers(), **kwargs.pop("headers", {})}
        async with self._slot():
            while (hold := self._held_until - time.monotonic()) > 0:
                await asyncio.sleep(hold)
            response = await self._client.request(method, path, headers=headers, **kwargs)
        if response.status_code >= 400:
            await response.aread()
            error = self._errors(response.status_code, parse_body(response), response.headers, self.service)
            if isinstance(error, RateLimited) and error.retry_after and error.retry_after <= MAX_RETRY_AFTER:
                self._held_until = max(self._held_until, time.monotonic() + error.retry_after)
            raise error
        body = parse_body(response) if response.headers.get("content-type", "").startswith(
            "application/json") else None
        if isinstance(body, dict) and body.get("error_code") is not None:
            raise self._errors(response.status_code, body, response.headers, self.service)
        return response

    def _slot(self, submits: bool = False) -> asyncio.Semaphore:
        """This event loop's slots for calls on the wire (`submits`: the share of unrepeatable ones)."""
        key = (asyncio.get_running_loop(), submits)
        slots = self._slots.get(key)
        if slots is None:
            size = max(1, self.max_in_flight * 3 // 4) if submits else self.max_in_flight
            slots = self._slots[key] = asyncio.Semaphore(size)
        return slots

    async def aclose(self) -> None:
        await self._client.aclose()
