"""`Gallery`: a job's outputs as a grid of thumbnails with a lightbox, plus any text outputs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import anywidget
import traitlets as t

from ..loops import behind, on_loop_thread, spawn, submit
from ..media import ANIMATED_EXT, Media
from .assets import css, esm
from .fallback import FONT, Snapshots, error_text, esc
from .images import data_url, downscale, downscale_animation, frame_count

log = logging.getLogger("runcomfy_nb")

THUMB_PX = 384
ANIMATION_PX = 192
READ_TIMEOUT = 60.0
READ_CONCURRENCY = 4
MAX_INLINE_BYTES = 256 * 1024 * 1024  # the most we pass to the browser for a full-size view

_cache: OrderedDict[tuple[str, str], tuple[str, bool]] = OrderedDict()
_cache_lock = threading.Lock()
_CACHE_SIZE = 256


def _cached(media: Media) -> tuple[str, bool] | None:
    with _cache_lock:
        thumb = _cache.get((media.url, media.filename))
        if thumb is not None:
            _cache.move_to_end((media.url, media.filename))
        return thumb


def _remember(media: Media, thumb: tuple[str, bool]) -> None:
    with _cache_lock:
        _cache[(media.url, media.filename)] = thumb
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)


def thumbnail(data: bytes) -> tuple[str, bool]:
    """A data URL and whether it moves: a still ≤ 384 px (JPEG, PNG with alpha), or for an
    animation an animated WebP ≤ 192 px that keeps its frames."""
    if frame_count(data) > 1:
        return data_url(downscale_animation(data, ANIMATION_PX), "image/webp"), True
    return data_url(*downscale(data, THUMB_PX)), False


def _wants_thumbnail(media: Media) -> bool:
    # real video and audio files are never downloaded for a tile: the browser plays them
    ext = PurePosixPath(media.filename.lower()).suffix
    return media.kind == "image" or (media.kind == "video" and ext in ANIMATED_EXT)


def _browser_url(media: Media) -> str:
    """The URL the browser may load by itself. Only a fetcher that vouches for a URL
    (`public_url(media)`, e.g. public storage) gives one: a machine's or a cloud's URL is a secret
    or needs our key, so those files reach the browser through the kernel instead."""
    vouch = getattr(media._fetcher, "public_url", None)
    if not callable(vouch):
        return ""
    try:
        url = vouch(media) or ""
    except Exception:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.username or parts.password:
        return ""
    return url


class Gallery(Snapshots, anywidget.AnyWidget):
    """Media outputs as a grid of thumbnails (click for the full file), plus text outputs.

    `labels`, one per media item, are shown under the file names (a sweep's parameters).
    A file that cannot be read shows as a tile with the reason instead of raising.
    """

    _esm = esm("gallery.js")
    _css = css("gallery.css")

    items = t.List(t.Dict()).tag(sync=True)
    texts = t.List(t.Unicode()).tag(sync=True)
    loading = t.Bool(False).tag(sync=True)

    def __init__(self, media: Iterable[Media] | Media = (), text: Iterable[str] = (),
                 labels: Sequence[str] | None = None, **kwargs: Any) -> None:
        given = behind(media)
        items = [given] if isinstance(given, Media) else [behind(m) for m in given]
        if labels is not None and len(labels) != len(items):
            raise ValueError(f"Gallery got {len(labels)} labels for {len(items)} media items; "
                             "give one label per item.")
        texts = [text] if isinstance(text, str) else [str(x) for x in text]
        super().__init__(texts=texts, **kwargs)
        self.media = items
        self._tasks: set[asyncio.Task[Any]] = set()
        self.on_msg(self._on_msg)
        self._load([str(x) for x in labels] if labels is not None else [""] * len(items))

    # -- thumbnails --
    def _load(self, labels: list[str]) -> None:
        items = [
            {"filename": m.filename, "kind": m.kind, "mime": m.mime, "thumb": "", "url": _browser_url(m),
             "label": label, "error": "", "animated": False}
            for m, label in zip(self.media, labels, strict=True)
        ]
        groups: dict[asyncio.AbstractEventLoop, list[int]] = {}
        for index, media in enumerate(self.media):
            if not _wants_thumbnail(media):
                continue
            cached = _cached(media)
            loop = getattr(media._fetcher, "loop", None)
            if cached is not None:
                items[index].update(thumb=cached[0], animated=cached[1])
            elif media._fetcher is None:
                items[index]["error"] = "no client to download it with"
            elif not isinstance(loop, asyncio.AbstractEventLoop) or loop.is_closed() or (
                    not loop.is_running()):
                items[index]["error"] = "cannot download: its client's event loop has stopped"
            else:
                groups.setdefault(loop, []).append(index)

        waiting = []
        for loop, indices in groups.items():
            if on_loop_thread(loop):
                # async code on the fetcher's own loop: it cannot block, so fill in later
                task = loop.create_task(self._fill_later(indices))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                waiting.append((indices, submit(loop, self._read(indices))))
        for indices, future in waiting:
            try:
                results = future.result(READ_TIMEOUT)
            except concurrent.futures.TimeoutError:
                future.cancel()
                results = [TimeoutError(f"no reply within {READ_TIMEOUT:g} s")] * len(indices)
            self._merge(items, self._thumbnails(indices, results))
        self.items = items
        self.loading = bool(self._tasks)

    async def _read(self, indices: list[int]) -> list[bytes | BaseException]:
        limit = asyncio.Semaphore(READ_CONCURRENCY)

        async def one(index: int) -> bytes:
            async with limit:
                return await self.media[index].read()

        return await asyncio.gather(*(one(i) for i in indices), return_exceptions=True)

    def _thumbnails(self, indices: list[int],
                    results: list[bytes | BaseException]) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        for index, result in zip(indices, results, strict=True):
            if isinstance(result, BaseException):
                found[index] = {"error": f"could not load: {error_text(result, 300)}"}
                continue
            try:
                thumb = thumbnail(result)
            except Exception as exc:
                log.debug("no thumbnail for %s", self.media[index].filename, exc_info=True)
                found[index] = {"error": f"no preview: {error_text(exc, 300)}"}
                continue
            _remember(self.media[index], thumb)
            found[index] = {"thumb": thumb[0], "animated": thumb[1]}
        return found

    @staticmethod
    def _merge(items: list[dict[str, Any]], found: dict[int, dict[str, Any]]) -> None:
        for index, values in found.items():
            items[index].update(values)

    async def _fill_later(self, indices: list[int]) -> None:
        try:
            results = await self._read(indices)
            found = await asyncio.to_thread(self._thumbnails, indices, results)
        except Exception as exc:
            found = {i: {"error": f"could not load: {error_text(exc, 300)}"} for i in indices}
        items = [dict(item) for item in self.items]
        self._merge(items, found)
        self._apply_changes({"items": items, "loading": len(self._tasks) > 1}, settled=True)

    # -- full-size files for the lightbox, through the kernel --
    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or content.get("type") != "fetch":
            return
        index = content.get("index")
        if not isinstance(index, int) or not 0 <= index < len(self.media):
            return
        media = self.media[index]
        loop = getattr(media._fetcher, "loop", None)
        if media._fetcher is None or not isinstance(loop, asyncio.AbstractEventLoop) or (
                loop.is_closed() or not loop.is_running()):
            self.send({"type": "file", "index": index, "error": "the file's client is not available"})
            return

        def reply(future: Any) -> None:
            if future.cancelled():
                error = "cancelled"
            elif future.exception() is not None:
                error = error_text(future.exception(), 300)
            elif len(future.result()) > MAX_INLINE_BYTES:
                error = "too large to show here; save it instead"
            else:
                self.send({"type": "file", "index": index, "mime": media.mime}, [future.result()])
                return
            self.send({"type": "file", "index": index, "error": error})

        started = spawn(loop, media.read())
        if isinstance(started, asyncio.Task):
            self._tasks.add(started)
            started.add_done_callback(self._tasks.discard)
        started.add_done_callback(reply)

    # -- fallbacks --
    def __repr__(self) -> str:
        lines = [f"<Gallery: {len(self.items)} file{'s' if len(self.items) != 1 else ''}"
                 + (f", {len(self.texts)} text{'s' if len(self.texts) != 1 else ''}" if self.texts else "")
                 + ">"]
        for item in self.items:
            label = f"  ({item['label']})" if item["label"] else ""
            error = f"  [{item['error']}]" if item["error"] else ""
            lines.append(f"  {item['filename']}{label}{error}")
        for text in self.texts:
            lines.append(f'  "{text if len(text) <= 200 else text[:199] + "…"}"')
        return "\n".join(lines)

    def _html(self) -> str:
        tiles = []
        for item in self.items:
            if item["thumb"]:
                visual = (f'<img src="{item["thumb"]}" alt="{esc(item["filename"])}" '
                          'style="display:block;max-width:192px;max-height:192px;border-radius:4px">')
            else:
                icon = {"video": "▶ video", "audio": "♪ audio", "image": "image"}.get(item["kind"], "file")
                visual = ('<div style="width:192px;height:108px;display:flex;align-items:center;'
                          'justify-content:center;background:#374151;color:#f9fafb;border-radius:4px">'
                          f"{icon}</div>")
            caption = f'<div style="word-break:break-all">{esc(item["filename"])}</div>'
            if item["label"]:
                caption += f'<div style="color:#6b7280">{esc(item["label"])}</div>'
            if item["error"]:
                caption += f'<div style="color:#dc2626">{esc(item["error"])}</div>'
            tiles.append(f'<figure style="margin:0;width:192px">{visual}'
                         f'<figcaption style="font-size:12px">{caption}</figcaption></figure>')
        parts = [f'<div class="runcomfy-gallery" style="{FONT}">']
        if tiles:
            parts.append(f'<div style="display:flex;flex-wrap:wrap;gap:8px">{"".join(tiles)}</div>')
        if self.texts:
            quoted = "".join(f'<li style="white-space:pre-wrap">“{esc(x)}”</li>' for x in self.texts)
            parts.append(f'<ul style="padding-left:18px">{quoted}</ul>')
        parts.append("</div>")
        return "".join(parts)
