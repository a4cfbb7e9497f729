"""What a widget shows where widgets cannot render (nbconvert, GitHub, a terminal): `Snapshots`
keeps the static text/plain and text/html of a displayed widget current, and the pieces of that
HTML (escaping, the font, short ids, error text without URLs)."""

from __future__ import annotations

import html
import logging
import re
from typing import Any


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
