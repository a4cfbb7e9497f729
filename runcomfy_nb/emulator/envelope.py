"""Reply shapes the RunComfy APIs share: the error envelope, timestamps, absolute URLs."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from aiohttp import web


def error(status: int, code: int | str, message: str, detail: Any = None) -> web.Response:
    """`{"error_code": ..., "error_message": ..., ["detail": ...]}` with HTTP `status`."""
    body: dict[str, Any] = {"error_code": code, "error_message": message}
    if detail is not None:
        body["detail"] = detail
    return web.json_response(body, status=status)


def with_nulls(body: dict[str, Any], fields: tuple[str, ...], nulls: bool) -> web.Response:
    """`body` as JSON; with `nulls` (the `nulls` fault), each of `fields` it leaves out is sent as
    `null`, as some replies of the real services do."""
    if nulls:
        body = {**dict.fromkeys(fields), **body}
    return web.json_response(body)


def iso(ts: float) -> str:
    """A wall-clock epoch as the serverless API writes it: UTC, no offset, microseconds."""
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds")


def origin(request: web.Request) -> str:
    """`scheme://host[:port]` as the client addressed us: absolute URLs in replies start with it."""
    return f"{request.scheme}://{request.host}"


def absolute(value: Any, host: str) -> Any:
    """Outputs hold `{origin}/storage/...`: absolute URLs follow the host each client used."""
    if isinstance(value, str):
        return value.replace("{origin}", host)
    if isinstance(value, list):
        return [absolute(v, host) for v in value]
    if isinstance(value, dict):
        return {k: absolute(v, host) for k, v in value.items()}
    return value
