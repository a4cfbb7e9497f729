"""Downloads of output files by URL: without our credentials, retried, checked for truncation and
written atomically under a name that overwrites nothing."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import stamina

from .errors import TransportError
from .http_errors import api_error, parse_body
from .http_policy import USER_AGENT, answered, retries_of, retry_hook
from .media import Media, claim


class Storage:
    """Fetches output files by URL, never with our credentials (they must not leak to storage
    hosts), following redirects; downloads are checked for truncation and written atomically.
    `http_transport` replaces httpx's network transport (tests give an `httpx.MockTransport`)."""

    def __init__(self, *, timeout: float = 60.0,
                 http_transport: httpx.AsyncBaseTransport | None = None) -> None:
        try:  # the loop this client will work on; known at the latest at the first download
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=10.0), follow_redirects=True,
            headers={"User-Agent": USER_AGENT}, transport=http_transport,
        )

    def __repr__(self) -> str:
        return "<Storage>"

    async def _stream_to(self, media: Media, sink: Any) -> int:
        self.loop = self.loop or asyncio.get_running_loop()
        what = f"Download of {media.filename}"
        with retries_of(what):
            async for attempt in stamina.retry_context(
                on=retry_hook(True), attempts=5, timeout=120.0, wait_initial=0.3, wait_max=10.0,
            ):
                with attempt:
                    size = await self._stream_once(media, sink)
                    answered(what)
                    return size
        raise AssertionError("unreachable")  # pragma: no cover

    async def _stream_once(self, media: Media, sink: Any) -> int:
        sink.seek(0)
        sink.truncate()
        async with self._client.stream("GET", media.url) as response:
            if response.status_code >= 400:
                await response.aread()
                raise api_error(response.status_code, parse_body(response), response.headers,
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
