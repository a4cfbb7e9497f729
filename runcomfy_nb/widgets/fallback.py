"""What a widget shows where widgets cannot render (nbconvert, GitHub, a terminal, a notebook
reopened without its kernel): `Snapshots` keeps the static text/plain and text/html of a displayed
widget current and, once the widget's state is final, replaces the displayed widget by that static
view; plus the pieces of that HTML (escaping, the font, short ids, error text without URLs)."""

from __future__ import annotations

import base64
import html
import logging
import re
import weakref
from functools import lru_cache
from typing import Any


def split_bundle(bundle: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """anywidget returns (data, metadata); older versions a dict or None."""
    if isinstance(bundle, tuple):
        data, meta = bundle
        return dict(data or {}), dict(meta or {})
    return dict(bundle or {}), {}


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# the most one image may take in a kept notebook (its base64 text, as saved)
KEPT_IMAGE_BYTES = 30 * 1024
_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class Snapshots:
    """Keeps the static view of displayed widgets current, and makes it what the notebook keeps.

    A displayed widget's output is the widget view plus text/plain and text/html fallbacks. Every
    widget front end prefers the widget view, so a notebook reopened without its kernel (and
    without saved widget state) reads "Error displaying widget: model not found", and nbconvert
    with stored widget state renders it through an online widget manager: offline, nothing.
    So each widget is displayed with a display id, and when its state settles (`_apply_changes`)
    the output is re-sent (`update_display`): once the state is final (`_final`: a job or sweep
    that ended, a gallery with all its thumbnails, a panel whose machines all stopped) as the
    static view alone, which every front end renders without a kernel; before that (and again,
    should a final state change, e.g. a panel seeing a new machine) as the live widget. Only in
    a kernel: a terminal IPython would print the update as a stray line.

    When the kernel ends (`exit`, a restart from a cell or a shutdown request: IPython's
    `exit_now`) while a widget is not final, its outputs get the static view with `_left_behind`
    said under it: no update can reach them from a new kernel, and a widget view would read
    "model not found" once the notebook is reopened.
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

    def _final(self) -> bool:
        """Whether what the widget shows can no longer change (a widget may override this)."""
        status = getattr(self, "status", None)
        if isinstance(status, str):  # JobProgress: the job ended
            return status in _TERMINAL
        rows = getattr(self, "rows", None)
        if isinstance(rows, list):  # MachinePanel: every machine stopping or stopped (a failed one may bill)
            return bool(rows) and all(row.get("state") in ("stopping", "stopped") for row in rows)
        loading = getattr(self, "loading", None)
        if isinstance(loading, bool):  # Gallery: every thumbnail is in
            return not loading
        return False

    def _left_behind(self) -> str:
        """What the static view says when the kernel ended before this widget was final."""
        return "The kernel ended before this did: this is the last state it showed."

    def static_bundle(self, note: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
        """The static view alone (text/plain, text/html; no widget view), each inline image at
        most `KEPT_IMAGE_BYTES`, with `note` under it: what a front end without the kernel renders."""
        text, markup = self._text(), fit_images(self._html())
        if note:
            text += f"\n{note}"
            markup += f'<div style="{FONT};color:#6b7280">{esc(note)}</div>'
        return {"text/plain": text, "text/html": markup}, {}

    def kept_bundle(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What an output should hold now: the static view once the state is final, else the
        live widget with its fallbacks."""
        if self._final():
            return self.static_bundle()
        return split_bundle(self._repr_mimebundle_())

    def _apply_changes(self, changes: dict[str, Any], *, settled: bool) -> None:
        """Set the traits in one sync; once the state settled, re-send the displayed outputs."""
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
        data, meta = self.kept_bundle()
        if not InteractiveShell.initialized():  # plain Python: IPython would print the dict
            print(data["text/plain"])
            return
        self._display_ids = [*getattr(self, "_display_ids", []), display_id]
        display(data, metadata=meta, raw=True, display_id=display_id)
        _watch_kernel_exit(InteractiveShell.instance(), self)

    def _refresh_displays(self, bundle: tuple[dict[str, Any], dict[str, Any]] | None = None) -> None:
        if not getattr(self, "_display_ids", None) or (_EXITING and bundle is None):
            return
        try:
            from IPython.core.interactiveshell import InteractiveShell

            shell = InteractiveShell.instance() if InteractiveShell.initialized() else None
            if getattr(shell, "kernel", None) is None:
                return
            from IPython.display import update_display

            data, meta = bundle or self.kept_bundle()
            for display_id in self._display_ids:
                update_display(data, metadata=meta, raw=True, display_id=display_id)
        except Exception:  # a cosmetic refresh must never break the job
            logging.getLogger("runcomfy_nb").debug("could not refresh a display", exc_info=True)


_SHOWN: weakref.WeakSet[Snapshots] = weakref.WeakSet()  # displayed in this kernel
_WATCHED: list[Any] = []  # the shell whose exit is watched
_EXITING = False  # the kernel is ending: the left-behind views are final, no refresh undoes them


def _watch_kernel_exit(shell: Any, widget: Snapshots) -> None:
    _SHOWN.add(widget)
    observe = getattr(shell, "observe", None)
    if getattr(shell, "kernel", None) is None or observe is None or any(s is shell for s in _WATCHED):
        return
    _WATCHED.append(shell)
    observe(_kernel_exiting, names=["exit_now"])


def _kernel_exiting(change: Any) -> None:
    """The kernel ends: every displayed widget that is not final gets its static view, said as
    left behind (the update still reaches the outputs while this kernel's session lasts)."""
    global _EXITING
    if not change["new"] or _EXITING:
        return
    _EXITING = True
    for widget in list(_SHOWN):
        try:
            if not widget._final():
                widget._refresh_displays(widget.static_bundle(widget._left_behind()))
        except Exception:  # one widget must not keep the others live
            logging.getLogger("runcomfy_nb").debug("could not keep a display", exc_info=True)


_INLINE_IMAGE = re.compile(r'(<img\b[^>]*?\bsrc=")data:(image/[a-z0-9.+-]+);base64,([A-Za-z0-9+/=]+)(")')


def fit_images(markup: str, limit: int = KEPT_IMAGE_BYTES) -> str:
    """`markup` with every inline `<img>` whose base64 text is over `limit` re-encoded smaller
    (fewer pixels; an animation keeps moving), so a kept notebook stays small."""
    return _INLINE_IMAGE.sub(lambda m: m[1] + _fit(m[2], m[3], limit) + m[4], markup)


@lru_cache(maxsize=64)  # the same thumbnails are re-sent at every refresh
def _fit(mime: str, payload: str, limit: int) -> str:
    if len(payload) <= limit:
        return f"data:{mime};base64,{payload}"
    from .images import data_url, downscale, downscale_animation, frame_count

    data = base64.b64decode(payload)
    try:
        animated = frame_count(data) > 1
        for px in (256, 192, 144, 96, 64):
            if animated:
                url = data_url(downscale_animation(data, px, max_frames=24, quality=50), "image/webp")
            else:
                url = data_url(*downscale(data, px, keep_small=0, quality=70))
            if len(url) - url.index(",") - 1 <= limit:
                return url
    except Exception:  # not an image Pillow reads: leave it out rather than keep it whole
        logging.getLogger("runcomfy_nb").debug("could not shrink an inline image", exc_info=True)
    return _PLACEHOLDER


# a 1×1 transparent GIF: an image too large to keep (and that would not shrink) shows as nothing
_PLACEHOLDER = "data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw=="


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
