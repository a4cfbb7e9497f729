"""`Gallery`: a job's outputs as a grid of thumbnails with a lightbox, inline players for video and
audio, a download button per file and one for all, plus any text outputs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import anywidget
import traitlets as t

from ..loops import behind, on_loop_thread, spawn, submit
from ..media import ANIMATED_EXT, Media
from .assets import css, esm
from .fallback import FONT, Snapshots, error_text, esc
from .files import local_href, write_archive, zipped
from .images import data_url, dimensions, downscale, downscale_animation, frame_count, human_size

log = logging.getLogger("runcomfy_nb")

THUMB_PX = 384
ANIMATION_PX = 192
READ_TIMEOUT = 60.0
READ_CONCURRENCY = 4
MAX_INLINE_BYTES = 256 * 1024 * 1024  # the most we pass to the browser for a full-size view
# a video or audio file up to this size plays at once from a data URL in the widget's state (kept
# when the notebook is saved); a larger one is fetched through the kernel when its play is clicked
PLAY_INLINE_BYTES = 512 * 1024
# the static view (no kernel, no widget) embeds a file for its download link up to this size only,
# so a saved notebook stays small; a larger file links to where it was saved
STATIC_INLINE_BYTES = 32 * 1024

_cache: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
_cache_lock = threading.Lock()
_CACHE_SIZE = 256


def _cached_info(media: Media) -> dict[str, Any] | None:
    """What a tile learnt of the file (see `describe`); may hold only a thumbnail (`_remember`)."""
    with _cache_lock:
        info = _cache.get((media.url, media.filename))
        if info is not None:
            _cache.move_to_end((media.url, media.filename))
        return info


def _remember_info(media: Media, info: dict[str, Any]) -> None:
    with _cache_lock:
        _cache[(media.url, media.filename)] = info
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)


def _cached(media: Media) -> tuple[str, bool] | None:
    """A cached thumbnail and whether it moves (shared with `SweepView`)."""
    info = _cached_info(media)
    return (info["thumb"], bool(info.get("animated"))) if info and info.get("thumb") else None


def _remember(media: Media, thumb: tuple[str, bool]) -> None:
    _remember_info(media, {**(_cached_info(media) or {}), "thumb": thumb[0], "animated": thumb[1]})


def thumbnail(data: bytes) -> tuple[str, bool]:
    """A data URL and whether it moves: a still ≤ 384 px (JPEG, PNG with alpha), or for an
    animation an animated WebP ≤ 192 px that keeps its frames."""
    if frame_count(data) > 1:
        return data_url(downscale_animation(data, ANIMATION_PX), "image/webp"), True
    return data_url(*downscale(data, THUMB_PX)), False


def _wants_thumbnail(media: Media) -> bool:
    # real video and audio files get no thumbnail: the browser plays them
    ext = PurePosixPath(media.filename.lower()).suffix
    return media.kind == "image" or (media.kind == "video" and ext in ANIMATED_EXT)


def describe(media: Media, data: bytes) -> dict[str, Any]:
    """What a tile shows of a file it read: size, width and height (0 when unknown), a thumbnail
    (stills and animations), a playable data URL (small video and audio), and the bytes themselves
    when small enough for the static view's download link (`_small`, never synced)."""
    width, height = dimensions(data)
    info: dict[str, Any] = {"size": len(data), "width": width, "height": height, "thumb": "",
                            "animated": False, "src": "", "error": ""}
    if _wants_thumbnail(media):
        try:
            info["thumb"], info["animated"] = thumbnail(data)
        except Exception as exc:
            log.debug("no thumbnail for %s", media.filename, exc_info=True)
            info["error"] = f"no preview: {error_text(exc, 300)}"
    elif media.kind in ("video", "audio") and len(data) <= PLAY_INLINE_BYTES:
        info["src"] = data_url(data, media.mime)
    if len(data) <= STATIC_INLINE_BYTES:
        info["_small"] = data
    return info


def _synced(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if not k.startswith("_")}


def details(item: dict[str, Any]) -> str:
    """'6.2 KB · 256×256' for a tile's caption ('' when nothing is known yet)."""
    parts = [human_size(item["size"])] if item.get("size") else []
    if item.get("width") and item.get("height"):
        parts.append(f"{item['width']}×{item['height']}")
    return " · ".join(parts)


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

    `labels`, one per media item, are shown under the file names (a sweep's parameters);
    `paths`, one per item, where each was saved: the static view (what a loaded gallery's output
    becomes, and what a kept notebook shows) links to a saved file under the notebook's folder to
    open it full size and download it; `archive`, a ZIP path under that folder, is written with
    every saved file once, for the static view's "download all".
    A file that cannot be read shows as a tile with the reason instead of raising.
    """

    _esm = esm("gallery.js")
    _css = css("gallery.css")

    items = t.List(t.Dict()).tag(sync=True)
    texts = t.List(t.Unicode()).tag(sync=True)
    loading = t.Bool(False).tag(sync=True)

    def __init__(self, media: Iterable[Media] | Media = (), text: Iterable[str] = (),
                 labels: Sequence[str] | None = None, paths: Sequence[str | Path | None] | None = None,
                 archive: str | Path | None = None, **kwargs: Any) -> None:
        given = behind(media)
        items = [given] if isinstance(given, Media) else [behind(m) for m in given]
        if labels is not None and len(labels) != len(items):
            raise ValueError(f"Gallery got {len(labels)} labels for {len(items)} media items; "
                             "give one label per item.")
        if paths is not None and len(paths) != len(items):
            raise ValueError(f"Gallery got {len(paths)} paths for {len(items)} media items; "
                             "give one path (or None) per item.")
        texts = [text] if isinstance(text, str) else [str(x) for x in text]
        super().__init__(texts=texts, **kwargs)
        self.media = items
        self.paths = [str(x) if x else "" for x in paths] if paths is not None else [""] * len(items)
        self.archive = Path(archive) if archive else None
        self._archived: str | None = None  # the archive's link once tried ('': not written)
        self._small: dict[int, bytes] = {}  # index -> bytes of a file small enough to embed
        self._tasks: set[asyncio.Task[Any]] = set()
        self.on_msg(self._on_msg)
        self._load([str(x) for x in labels] if labels is not None else [""] * len(items))

    # -- thumbnails --
    def _load(self, labels: list[str]) -> None:
        items = [
            {"filename": m.filename, "kind": m.kind, "mime": m.mime, "thumb": "", "url": _browser_url(m),
             "label": label, "error": "", "animated": False, "size": 0, "width": 0, "height": 0,
             "src": ""}
            for m, label in zip(self.media, labels, strict=True)
        ]
        groups: dict[asyncio.AbstractEventLoop, list[int]] = {}
        for index, media in enumerate(self.media):
            # every file is read once: its size, dimensions and a preview or player for its tile
            cached = _cached_info(media)
            loop = getattr(media._fetcher, "loop", None)
            if cached is not None and "size" in cached:  # a sweep's cache entry has no size
                self._take(items, {index: cached})
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
            self._take(items, self._thumbnails(indices, results))
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
            found[index] = describe(self.media[index], result)
            if not found[index]["error"]:
                _remember_info(self.media[index], found[index])
        return found

    def _take(self, items: list[dict[str, Any]], found: dict[int, dict[str, Any]]) -> None:
        for index, values in found.items():
            items[index].update(_synced(values))
            if "_small" in values:
                self._small[index] = values["_small"]

    async def _fill_later(self, indices: list[int]) -> None:
        try:
            results = await self._read(indices)
            found = await asyncio.to_thread(self._thumbnails, indices, results)
        except Exception as exc:
            found = {i: {"error": f"could not load: {error_text(exc, 300)}"} for i in indices}
        items = [dict(item) for item in self.items]
        self._take(items, found)
        self._apply_changes({"items": items, "loading": len(self._tasks) > 1}, settled=True)

    # -- full-size files (lightbox, players, downloads), through the kernel --
    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "fetch":
            index = content.get("index")
            if isinstance(index, int) and 0 <= index < len(self.media):
                self._send_file(index)
        elif kind == "fetch_all" and self.media:
            self._send_zip()

    def _client_loop(self, media: Media) -> asyncio.AbstractEventLoop | None:
        loop = getattr(media._fetcher, "loop", None)
        if media._fetcher is None or not isinstance(loop, asyncio.AbstractEventLoop) or (
                loop.is_closed() or not loop.is_running()):
            return None
        return loop

    def _start(self, loop: asyncio.AbstractEventLoop, work: Any, reply: Any) -> None:
        started = spawn(loop, work)
        if isinstance(started, asyncio.Task):
            self._tasks.add(started)
            started.add_done_callback(self._tasks.discard)
        started.add_done_callback(reply)

    @staticmethod
    def _failure(future: Any) -> str:
        if future.cancelled():
            return "cancelled"
        if future.exception() is not None:
            return error_text(future.exception(), 300)
        if len(future.result()) > MAX_INLINE_BYTES:
            return "too large to pass to the browser; save it instead"
        return ""

    def _send_file(self, index: int) -> None:
        media = self.media[index]
        loop = self._client_loop(media)
        if loop is None:
            self.send({"type": "file", "index": index, "error": "the file's client is not available"})
            return

        def reply(future: Any) -> None:
            error = self._failure(future)
            if error:
                self.send({"type": "file", "index": index, "error": error})
                return
            data = future.result()
            self.send({"type": "file", "index": index, "mime": media.mime}, [data])
            self._learn(index, data)

        self._start(loop, media.read(), reply)

    def _learn(self, index: int, data: bytes) -> None:
        # a file read for the browser (a video's play, a download) fills in its tile's size and
        # dimensions, and a small one's player, for the views saved with the notebook
        if index >= len(self.items) or self.items[index].get("size"):
            return
        info = describe(self.media[index], data)
        del info["thumb"], info["animated"]  # the tile's own preview stays
        if not self.items[index]["error"].startswith("could not load"):
            del info["error"]  # a preview's error stays; a failed read is now undone
        items = [dict(item) for item in self.items]
        self._take(items, {index: info})
        self._apply_changes({"items": items}, settled=True)

    def _send_zip(self) -> None:
        loop = self._client_loop(self.media[0])
        if loop is None or any(self._client_loop(m) is not loop for m in self.media):
            self.send({"type": "zip", "error": "the files' client is not available"})
            return

        async def pack() -> bytes:
            contents = await self._read(list(range(len(self.media))))
            for result in contents:
                if isinstance(result, BaseException):
                    raise result
            return await asyncio.to_thread(zipped, [m.filename for m in self.media],
                                           [c for c in contents if isinstance(c, bytes)])

        def reply(future: Any) -> None:
            error = self._failure(future)
            if error:
                self.send({"type": "zip", "error": error})
            else:
                self.send({"type": "zip", "name": "outputs.zip", "mime": "application/zip"},
                          [future.result()])

        self._start(loop, pack(), reply)

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

    def _download_link(self, index: int, item: dict[str, Any], local: str) -> str:
        # a small file is embedded (it downloads anywhere, offline too); a larger one links to
        # where it was saved (`local`), which the Jupyter server serves
        small = self._small.get(index)
        href = data_url(small, item["mime"]) if small is not None else local
        if href:
            return (f'<a download="{esc(item["filename"])}" href="{href}" '
                    'style="color:#2563eb">⬇ download</a>')
        if self.paths[index]:
            return f'<span style="color:#6b7280">saved: {esc(self.paths[index])}</span>'
        return ""

    def _visual(self, item: dict[str, Any], local: str) -> str:
        if item["thumb"]:
            img = (f'<img src="{item["thumb"]}" alt="{esc(item["filename"])}" '
                   'style="display:block;max-width:192px;max-height:192px;border-radius:4px">')
            # the full file, opened by the front end (JupyterLab: its image viewer), is the enlarge
            # a static view can offer without a script
            return f'<a href="{local}" target="_blank" title="open full size">{img}</a>' if local else img
        if item.get("src") and item["size"] <= STATIC_INLINE_BYTES and item["kind"] in ("video", "audio"):
            tag = item["kind"]
            return (f'<{tag} controls preload="metadata" src="{item["src"]}" '
                    f'style="display:block;width:192px"></{tag}>')
        icon = {"video": "▶ video", "audio": "♪ audio", "image": "image"}.get(item["kind"], "file")
        return ('<div style="width:192px;height:108px;display:flex;align-items:center;'
                'justify-content:center;background:#374151;color:#f9fafb;border-radius:4px">'
                f"{icon}</div>")

    def _html(self) -> str:
        tiles = []
        for index, item in enumerate(self.items):
            caption = f'<div style="word-break:break-all">{esc(item["filename"])}</div>'
            if details(item):
                caption += f'<div style="color:#6b7280">{esc(details(item))}</div>'
            if item["label"]:
                caption += f'<div style="color:#6b7280">{esc(item["label"])}</div>'
            if item["error"]:
                caption += f'<div style="color:#dc2626">{esc(item["error"])}</div>'
            local = local_href(self.paths[index])
            link = self._download_link(index, item, local)
            if link:
                caption += f"<div>{link}</div>"
            tiles.append(f'<figure style="margin:0;width:192px">{self._visual(item, local)}'
                         f'<figcaption style="font-size:12px">{caption}</figcaption></figure>')
        parts = [f'<div class="runcomfy-gallery" style="{FONT}">']
        everything = self._archive_href()
        if everything:
            total = human_size(sum(item.get("size") or 0 for item in self.items))
            name = esc(self.archive.name if self.archive else "")
            parts.append(f'<div style="margin-bottom:6px"><a download="{name}" '
                         f'href="{everything}" style="color:#2563eb">⬇ download all '
                         f'({len(self.items)} files, {total})</a></div>')
        if tiles:
            parts.append(f'<div style="display:flex;flex-wrap:wrap;gap:8px">{"".join(tiles)}</div>')
        if self.texts:
            quoted = "".join(f'<li style="white-space:pre-wrap">“{esc(x)}”</li>' for x in self.texts)
            parts.append(f'<ul style="padding-left:18px">{quoted}</ul>')
        parts.append("</div>")
        return "".join(parts)

    def _archive_href(self) -> str:
        """The link to `archive`, written once (see `write_archive`); '' when not asked for."""
        if self._archived is None and self.archive is not None and self.media:
            self._archived = write_archive(self.archive, self.paths)
        return self._archived or ""
