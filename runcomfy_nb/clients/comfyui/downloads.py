"""How a ComfyUI job's outputs are read and saved: from `/view`, or from the bytes a socket sent."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from ...media import Media, claim
from ...storage import Storage


class ViewFetcher:
    """Downloads outputs from `/view` (streamed, atomic) through the shared Storage. It has no
    `public_url` on purpose: the URL holds the machine's secret and must not reach the page."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def __repr__(self) -> str:
        return "<ComfyUI outputs>"

    @property
    def loop(self) -> Any:
        return self._storage.loop

    async def read(self, media: Media) -> bytes:
        return await self._storage.read(media)

    async def save(self, media: Media, path: Path) -> Path:
        return await self._storage.save(media, path)


class HeldBytes:
    """An output that exists only as a WebSocket frame (`SaveImageWebsocket`): its bytes are here,
    so `read()` and `save()` need no download. The bytes stay out of the repr."""

    def __init__(self, data: bytes, storage: Storage) -> None:
        self._data = data
        self._storage = storage

    def __repr__(self) -> str:
        return f"<{len(self._data)} bytes from the WebSocket>"

    @property
    def loop(self) -> Any:
        return self._storage.loop

    async def read(self, media: Media) -> bytes:
        return self._data

    async def save(self, media: Media, path: Path) -> Path:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:60]}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as sink:
                sink.write(self._data)
            return claim(Path(tmp), path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
