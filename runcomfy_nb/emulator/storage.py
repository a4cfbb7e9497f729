"""Public storage as the services serve output files: no auth, credentials refused, single byte
ranges (RFC 9110 §14: `Range: bytes=a-`, `bytes=a-b`, `bytes=-n`, with `If-Range`), and the
download faults `truncate` and `no_range`."""

from __future__ import annotations

import hashlib
import mimetypes
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from aiohttp import web

from .faults import drop

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


async def serve_file(request: web.Request, state: Any, data: bytes | None, target: str) -> web.StreamResponse:
    """An output file as public storage serves it, without auth: a request carrying credentials is
    refused (403, recorded in `state.leaks`); otherwise as `send_file` sends it."""
    if "Authorization" in request.headers or "X-API-Key" in request.headers:
        state.leaks.append(request.path)
        return web.json_response({"message": "Credentials must not be sent to output URLs"}, status=403)
    if data is None:
        return web.json_response({"message": "Not found"}, status=404)
    filename = request.match_info.get("filename", request.path)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if filename.endswith(".webp"):
        content_type = "image/webp"  # not in every platform's mimetypes table
    return await send_file(request, data, {"Content-Type": content_type}, state.faults, target)


async def send_file(request: web.Request, data: bytes, headers: Mapping[str, str], faults: Any,
                    target: str) -> web.StreamResponse:
    """`data` whole (200) or the one byte range asked (206 + Content-Range; 416 when it starts past
    the end), with a strong ETag and Accept-Ranges. Faults armed for `target` on "download":
    `no_range` answers 200 with the whole file whatever the Range; `truncate` announces the full
    length of the answer (whole or ranged), sends half of it, then closes the connection."""
    etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    sent = {**headers, "ETag": etag}
    status, body = 200, data
    if faults.take(target, "download", {"no_range"}) is None:
        sent["Accept-Ranges"] = "bytes"
        asked = _asked_range(request, etag, len(data))
        if asked == "unsatisfiable":
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}", "ETag": etag})
        if isinstance(asked, tuple):
            start, end = asked
            status, body = 206, data[start:end + 1]
            sent["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    if faults.take(target, "download", {"truncate"}):
        await send_truncated(request, body, sent, status)
    return web.Response(status=status, body=body, headers=sent)


def _asked_range(request: web.Request, etag: str, size: int) -> tuple[int, int] | str | None:
    """The (first, last) byte of the one range the request asks for; None to send the whole file
    (no Range, one we do not serve, e.g. several ranges, or an If-Range naming another version:
    a date never matches, as we send no Last-Modified); "unsatisfiable" past the end (416)."""
    found = _RANGE.fullmatch(request.headers.get("Range", "").replace(" ", ""))
    if found is None or request.headers.get("If-Range", etag) != etag:
        return None
    first, last = found.groups()
    if not first and not last:
        return None
    if not first:  # a suffix: the last n bytes
        count = int(last)
        return (max(size - count, 0), size - 1) if count and size else "unsatisfiable"
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # invalid: ignored (RFC 9110 §14.2)
    return (start, end) if start < size else "unsatisfiable"


async def send_truncated(request: web.Request, data: bytes, headers: Mapping[str, str],
                         status: int = 200) -> NoReturn:
    """The `truncate` fault: the full Content-Length, half the bytes, then the connection closes
    (never returns)."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    drop(request)
