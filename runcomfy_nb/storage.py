"""Downloads of output files by URL: without our credentials, retried, resumed with `Range` where
the server allows it, checked against the full length and written atomically under a name that
overwrites nothing."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import stamina

from .errors import TransportError
from .http_errors import api_error, parse_body
from .http_policy import USER_AGENT, answered, retries_of, retry_hook, tls_context
from .media import Media, claim

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


@dataclass
class _Progress:
    """What the attempts so far have written: `have` bytes from 0, of a file of `total` bytes (None:
    not known yet) whose version the server named `validator` (a strong ETag or Last-Modified, sent
    as If-Range so that a resumed download never splices two versions of a file)."""

    have: int = 0
    total: int | None = None
    validator: str | None = None
    resumable: bool = True

    def restart(self, sink: Any) -> None:
        sink.seek(0)
        sink.truncate()
        self.have, self.total, self.validator, self.resumable = 0, None, None, True

    def range_headers(self) -> dict[str, str]:
        if not (self.have and self.resumable):
            return {}
        # identity: a range of an encoded body would count other bytes than the file's
        headers = {"Range": f"bytes={self.have}-", "Accept-Encoding": "identity"}
        if self.validator:
            headers["If-Range"] = self.validator
        return headers


def _validator(response: httpx.Response) -> str | None:
    """The answer's strong validator for If-Range (a weak ETag may not be used there, RFC 9110 13.1.5)."""
    etag = response.headers.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("last-modified")


def _resumes(response: httpx.Response, progress: _Progress) -> tuple[int, int] | None:
    """(start, total) of a 206 that continues exactly where `progress` stopped, of the same file;
    None when it does not (another start, another length, another version, or unparseable)."""
    found = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    if found is None:
        return None
    start, end, total = (int(group) for group in found.groups())
    if start != progress.have or end < start or end >= total:
        return None
    if progress.total is not None and total != progress.total:
        return None
    if response.headers.get("content-encoding", "identity") != "identity":
        return None
    etag = response.headers.get("etag")
    if etag and progress.validator and progress.validator.startswith('"') and etag != progress.validator:
        return None
    return start, total


class Storage:
    """Fetches output files by URL, never with our credentials (they must not leak to storage
    hosts), following redirects; a dropped download resumes with `Range` (else restarts), every
    file is checked against its full length and written atomically.
    `http_transport` replaces httpx's network transport (tests give an `httpx.MockTransport`)."""

    def __init__(self, *, timeout: float = 60.0,
                 http_transport: httpx.AsyncBaseTransport | None = None) -> None:
        try:  # the loop this client will work on; known at the latest at the first download
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=10.0), follow_redirects=True,
            headers={"User-Agent": USER_AGENT}, transport=http_transport, verify=tls_context(),
        )

    def __repr__(self) -> str:
        return "<Storage>"

    async def _stream_to(self, media: Media, sink: Any) -> int:
        self.loop = self.loop or asyncio.get_running_loop()
        what = f"Download of {media.filename}"
        progress = _Progress()
        with retries_of(what):
            async for attempt in stamina.retry_context(
                on=retry_hook(True), attempts=5, timeout=120.0, wait_initial=0.3, wait_max=10.0,
            ):
                with attempt:
                    size = await self._attempt(media, sink, progress)
                    answered(what)
                    return size
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, media: Media, sink: Any, progress: _Progress) -> int:
        """One attempt: resumes where the last one stopped; when the server cannot continue there
        (416, or a 206 of another range or version) it starts again from byte 0 at once."""
        if not await self._fetch(media, sink, progress):
            progress.restart(sink)
            if not await self._fetch(media, sink, progress):  # a 206 to a GET without Range
                raise httpx.ReadError("the server answered a whole-file request with a part")
        if progress.total is not None and progress.have != progress.total:
            raise httpx.ReadError(f"truncated: {progress.have} of {progress.total} bytes")
        return progress.have

    async def _fetch(self, media: Media, sink: Any, progress: _Progress) -> bool:
        """One request, its body written at the offset it starts at; False (nothing written) when
        its answer cannot continue what `progress` holds."""
        ranged = progress.range_headers()
        async with self._client.stream("GET", media.url, headers=ranged) as response:
            if response.status_code == 416 and ranged:
                return False
            if response.status_code >= 400:
                await response.aread()
                raise api_error(response.status_code, parse_body(response), response.headers,
                                f"Download of {media.filename}")
            if response.status_code == 206:
                resumed = _resumes(response, progress) if ranged else None
                if resumed is None:
                    return False
                start, progress.total = resumed
            else:  # the whole file (a server that ignores Range, or a changed file under If-Range)
                progress.restart(sink)
                start = 0
                progress.validator = _validator(response)
                progress.resumable = response.headers.get("content-encoding", "identity") == "identity"
            await self._body(response, sink, progress, start)
            return True

    @staticmethod
    async def _body(response: httpx.Response, sink: Any, progress: _Progress, start: int) -> None:
        """Stream the body to `sink` from `start`, counting in `progress` what arrived (kept for the
        next attempt), checked against this answer's Content-Length."""
        expected = int(response.headers.get("content-length") or -1)
        if response.status_code != 206 and expected >= 0 and progress.resumable:
            progress.total = expected
        sink.seek(start)
        sink.truncate()
        try:
            async for chunk in response.aiter_bytes():
                sink.write(chunk)
                progress.have += len(chunk)
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise httpx.ReadError(f"truncated after {progress.have} bytes") from exc
        encoded = response.headers.get("content-encoding", "identity") != "identity"
        # Content-Length counts the bytes sent, before a Content-Encoding is undone
        sent = response.num_bytes_downloaded if encoded else progress.have - start
        if expected >= 0 and sent != expected:
            raise httpx.ReadError(f"truncated: {progress.have} of {start + expected} bytes")

    def public_url(self, media: Media) -> str:
        """Serverless output URLs need no credentials, so a browser may load them directly."""
        return media.url

    async def read(self, media: Media) -> bytes:
        """The file's bytes."""
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
        """Close the connections."""
        await self._client.aclose()
