"""Public storage as the services serve output files: no auth, credentials refused, a `truncate` fault."""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from typing import Any, NoReturn

from aiohttp import web

from .faults import drop


async def serve_file(request: web.Request, state: Any, data: bytes | None, target: str) -> web.StreamResponse:
    """An output file as public storage serves it, without auth: a request carrying credentials is
    refused (403, recorded in `state.leaks`); a `truncate` fault armed for `target` sends the full
    Content-Length, half the bytes, then closes the connection."""
    if "Authorization" in request.headers or "X-API-Key" in request.headers:
        state.leaks.append(request.path)
        return web.json_response({"message": "Credentials must not be sent to output URLs"}, status=403)
    if data is None:
        return web.json_response({"message": "Not found"}, status=404)
    filename = request.match_info.get("filename", request.path)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if filename.endswith(".webp"):
        content_type = "image/webp"  # not in every platform's mimetypes table
    if state.faults.take(target, "download", {"truncate"}):
        await send_truncated(request, data, {"Content-Type": content_type})
    return web.Response(body=data, content_type=content_type)


async def send_truncated(request: web.Request, data: bytes, headers: Mapping[str, str]) -> NoReturn:
    """The `truncate` fault: the full Content-Length, half the bytes, then the connection closes
    (never returns)."""
    response = web.StreamResponse(headers=headers)
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    drop(request)
