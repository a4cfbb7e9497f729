"""What the widgets share: the update throttle, loop hand-offs, image
downscaling and the pieces of the static HTML fallback."""

from __future__ import annotations

import asyncio
import base64
import html
import io
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..loops import soon

T = TypeVar("T")

class Throttle:
    """Batches trait changes so a widget syncs at most once per `interval` seconds.

    `update(changes)` merges into a pending dict. The first update after a quiet spell is
    applied at once (so a lone change is never late); later ones wait for a timer on `loop`
    that fires `interval` after the previous flush. `update(..., now=True)` flushes at once
    (lifecycle changes, terminal events). All flushes run on `loop`'s thread, one at a time;
    `flushes` counts them.
    """

    def __init__(self, apply: Callable[[dict[str, Any]], None], loop: asyncio.AbstractEventLoop,
                 interval: float = 0.1) -> None:
        self._apply = apply
        self._loop = loop
        self.interval = interval
        self.flushes = 0
        self._pending: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.RLock()
        self._timer: asyncio.TimerHandle | None = None
        self._last = -math.inf
        self.hold = False  # while True, updates only collect (used while replaying history)

    @property
    def pending(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._pending)

    def update(self, changes: dict[str, Any], *, now: bool = False) -> None:
        with self._lock:
            self._pending.update(changes)
        if self.hold:
            return
        soon(self._loop, self.flush if now else self._schedule)

    def _schedule(self) -> None:
        if self._timer is not None:
            return
        wait = self._last + self.interval - time.monotonic()
        if wait <= 0 or not self._loop.is_running():
            self.flush()
        else:
            self._timer = self._loop.call_later(wait, self.flush)

    def flush(self) -> None:
        with self._flush_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return
            self._last = time.monotonic()
            self.flushes += 1
            self._apply(pending)

    def close(self) -> None:
        soon(self._loop, self._cancel_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def split_bundle(bundle: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """anywidget returns (data, metadata); older versions a dict or None."""
    if isinstance(bundle, tuple):
        data, meta = bundle
        return dict(data or {}), dict(meta or {})
    return dict(bundle or {}), {}


class Snapshots:
    """Keeps the static fallback of displayed widgets current.

    A notebook saves the text/html a widget had when it was displayed; for a job that was
    "queued". Displaying with a display id lets us re-send the bundle when the state settles
    (`_refresh_displays`), so nbclient-executed and saved notebooks show the outcome. Only in a
    kernel: a terminal IPython would print the update as a stray line.
    """

    _display_ids: list[str]

    def _html(self) -> str:
        raise NotImplementedError

    def _text(self) -> str:
        return repr(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any) -> Any:
        """The widget, plus the static fallbacks (`_text`, `_html`) nbconvert and GitHub show."""
        data, meta = split_bundle(super()._repr_mimebundle_(**kwargs))  # type: ignore[misc]
        data["text/plain"] = self._text()
        data["text/html"] = self._html()
        return data, meta

    def _apply_changes(self, changes: dict[str, Any], *, settled: bool) -> None:
        """Set the traits in one sync; once the state settled, re-send the displayed fallbacks."""
        with self.hold_sync():  # type: ignore[attr-defined]
            for name, value in changes.items():
                setattr(self, name, value)
        if settled:
            self._refresh_displays()

    def _ipython_display_(self) -> None:
        from uuid import uuid4

        from IPython.core.interactiveshell import InteractiveShell
        from IPython.display import display

        display_id = uuid4().hex
        data, meta = self._repr_mimebundle_()  # type: ignore[attr-defined]
        if not InteractiveShell.initialized():  # plain Python: IPython would print the dict
            print(data["text/plain"])
            return
        self._display_ids = [*getattr(self, "_display_ids", []), display_id]
        display(data, metadata=meta, raw=True, display_id=display_id)

    def _refresh_displays(self) -> None:
        if not getattr(self, "_display_ids", None):
            return
        try:
            from IPython.core.interactiveshell import InteractiveShell

            shell = InteractiveShell.instance() if InteractiveShell.initialized() else None
            if getattr(shell, "kernel", None) is None:
                return
            from IPython.display import update_display

            data, meta = self._repr_mimebundle_()  # type: ignore[attr-defined]
            for display_id in self._display_ids:
                update_display(data, metadata=meta, raw=True, display_id=display_id)
        except Exception:  # a cosmetic refresh must never break the job
            logging.getLogger("runcomfy_nb").debug("could not refresh a display", exc_info=True)


# --- images ------------------------------------------------------------------------------------


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


_KEEP_AS_IS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


def downscale(data: bytes, max_px: int, *, keep_small: int = 48_000, quality: int = 82) -> tuple[bytes, str]:
    """A still image no larger than `max_px` on its long side: JPEG, or PNG when it has alpha
    (WebP if that PNG would be big). A small file the browser can show is kept as it is."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as opened:
        if (opened.format in _KEEP_AS_IS and max(opened.size) <= max_px and len(data) <= keep_small
                and getattr(opened, "n_frames", 1) == 1):
            return data, _KEEP_AS_IS[opened.format]
        image = ImageOps.exif_transpose(opened)
        alpha = image.mode in ("RGBA", "LA", "PA") or (
            image.mode == "P" and "transparency" in image.info)
        image = image.convert("RGBA" if alpha else "RGB")
    # an alpha channel that is opaque everywhere (common in generated PNGs) is no alpha
    alpha = alpha and image.getchannel("A").getextrema()[0] < 255
    image = image.convert("RGBA" if alpha else "RGB")
    image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if not alpha:
        image.save(out, "JPEG", quality=quality, optimize=True)
        return out.getvalue(), "image/jpeg"
    image.save(out, "PNG", optimize=True)
    if out.tell() <= 2 * keep_small:
        return out.getvalue(), "image/png"
    out = io.BytesIO()
    image.save(out, "WEBP", quality=quality)
    return out.getvalue(), "image/webp"


def frame_count(data: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return getattr(image, "n_frames", 1)


def downscale_animation(data: bytes, max_px: int, *, max_frames: int = 60, quality: int = 60) -> bytes:
    """An animated WebP no larger than `max_px`, keeping the motion: every frame up to
    `max_frames`, beyond that every n-th frame with the skipped frames' time added to it."""
    from PIL import Image, ImageSequence

    frames: list[Any] = []
    durations: list[int] = []
    with Image.open(io.BytesIO(data)) as image:
        count = getattr(image, "n_frames", 1)
        step = max(1, math.ceil(count / max_frames))
        for index, frame in enumerate(ImageSequence.Iterator(image)):
            duration = int(frame.info.get("duration") or image.info.get("duration") or 100)
            if index % step:
                durations[-1] += duration
                continue
            small = frame.convert("RGBA")
            small.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
            frames.append(small)
            durations.append(duration)
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], duration=durations, loop=0,
                   quality=quality)
    return out.getvalue()


# --- static HTML -------------------------------------------------------------------------------


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


def error_text(error: BaseException, limit: int = 2000) -> str:
    """An error as one readable text. Our own errors promise no secrets; any other error's text
    may name a URL (a machine's, a signed one), so URLs are cut out of it."""
    from ..errors import RunComfyError

    text = str(error).strip()
    if not isinstance(error, RunComfyError):
        text = _URL.sub("<url>", text)
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text[:limit]


def short_id(value: str, keep: int = 8) -> str:
    return value if len(value) <= keep + 2 else f"{value[:keep]}…"


FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:13px;line-height:1.4"
