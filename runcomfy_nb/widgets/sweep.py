"""`SweepView`: one sweep's progress — counts, ETA, one Cancel for the whole sweep — and its grid of
results labelled by the parameters (rows × columns for two axes, a list for one, rows for more),
filled as jobs finish; a failed cell shows its message."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

import anywidget
import traitlets as t

from ..loops import behind, call, spawn
from ..sweep import Cell, Sweep, shown_value
from ..timefmt import format_duration
from .assets import css, esm
from .fallback import FONT, Snapshots, error_text, esc
from .gallery import _cached, _remember, _wants_thumbnail, thumbnail
from .throttle import Throttle

log = logging.getLogger("runcomfy_nb")

THUMBS_AT_ONCE = 4
_COLORS = {"succeeded": "#16a34a", "failed": "#dc2626", "cancelled": "#9ca3af", "running": "#2563eb"}


def layout(sweep: Sweep) -> str:
    """"grid" (rows × columns) for two crossed axes, "list" for one axis or a zip, else "rows"."""
    if sweep.zipped or len(sweep.axes) == 1:
        return "list"
    return "grid" if len(sweep.axes) == 2 else "rows"


class SweepView(Snapshots, anywidget.AnyWidget):
    """Live view of a `Sweep`: counts queued/running/done/failed/cancelled, ETA, a Cancel button
    that cancels the whole sweep, and one tile per combination (its first image once it finished,
    its message if it failed). Updates are batched: at most ~4 syncs per second, fewer for
    sweeps of over 500 jobs (each sync sends every cell)."""

    _esm = esm("sweep.js")
    _css = css("sweep.css")

    total = t.Int(0).tag(sync=True)
    counts = t.Dict().tag(sync=True)
    eta = t.Float(None, allow_none=True).tag(sync=True)
    started_at = t.Float(0.0).tag(sync=True)
    # not `layout`: DOMWidget's Layout model has that name, and ipywidgets makes a view of it
    arrangement = t.Unicode("list").tag(sync=True)
    axes = t.List(t.Dict()).tag(sync=True)  # [{"name": key, "values": [shown, ...]}, ...]
    cells = t.List(t.Dict()).tag(sync=True)  # [{"coords", "label", "state", "error", "thumb", "filename"}]
    cancelling = t.Bool(False).tag(sync=True)
    notice = t.Unicode("").tag(sync=True)

    def __init__(self, sweep: Sweep, **kwargs: Any) -> None:
        sweep = behind(sweep)
        axes = [{"name": k, "values": [shown_value(v) for v in vs]} for k, vs in sweep.axes.items()]
        super().__init__(total=len(sweep.cells), started_at=sweep.started_at, arrangement=layout(sweep),
                         axes=axes, **kwargs)
        self.sweep = sweep
        self._cells = [self._entry(cell) for cell in sweep.cells]
        self._thumbs = asyncio.Semaphore(THUMBS_AT_ONCE)
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancel: concurrent.futures.Future[Any] | asyncio.Future[Any] | None = None
        # every sync sends all cells: a large sweep syncs less often
        self._throttle = Throttle(self._apply, sweep.loop, interval=max(0.25, len(sweep.cells) / 2000))
        self.on_msg(self._on_msg)
        self._undo = [call(self._attach, sweep.loop), self._throttle.close]

    def _attach(self) -> Any:
        for cell in self.sweep.cells:
            if cell.state == "succeeded":
                self._load_thumb(cell)
        self._throttle.update(self._summary_changes(), now=True)
        return self.sweep.subscribe(self._on_cell)

    def close(self) -> None:
        for undo in getattr(self, "_undo", ()):  # the subscription, the throttle's timer
            undo()
        self._undo = []
        super().close()

    @staticmethod
    def _entry(cell: Cell) -> dict[str, Any]:
        return {"coords": list(cell.coords), "label": cell.label, "state": cell.state,
                "error": cell.error, "thumb": "", "filename": ""}

    def _summary_changes(self) -> dict[str, Any]:
        return {"counts": self.sweep.counts, "eta": self.sweep.eta, "cells": [dict(c) for c in self._cells]}

    def _on_cell(self, _sweep: Sweep, cell: Cell) -> None:
        self._cells[cell.index].update(state=cell.state, error=cell.error)
        if cell.state == "succeeded":
            self._load_thumb(cell)
        self._throttle.update(self._summary_changes(), now=self.sweep.done)

    # -- thumbnails of finished cells --
    def _load_thumb(self, cell: Cell) -> None:
        media = next((m for m in (cell.result.media if cell.result else []) if _wants_thumbnail(m)), None)
        if media is None:
            return
        self._cells[cell.index]["filename"] = media.filename
        cached = _cached(media)
        if cached is not None:
            self._cells[cell.index]["thumb"] = cached[0]
            return
        task = self.sweep.loop.create_task(self._thumb(cell.index, media))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _thumb(self, index: int, media: Any) -> None:
        try:
            async with self._thumbs:
                data = await media.read()
                thumb = await asyncio.to_thread(thumbnail, data)
        except Exception as exc:
            self._cells[index]["error"] = f"no preview: {error_text(exc, 300)}"
        else:
            _remember(media, thumb)
            self._cells[index]["thumb"] = thumb[0]
        self._throttle.update(self._summary_changes())

    def _apply(self, changes: dict[str, Any]) -> None:
        self._apply_changes(changes, settled=self.sweep.done and not self._tasks)

    # -- cancel --
    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "cancel":
            self.request_cancel()

    def request_cancel(self) -> None:
        """Cancel the whole sweep (what the Cancel button does)."""
        loop = self.sweep.loop
        if self.sweep.done or self._cancel is not None:
            return
        if loop.is_closed() or not loop.is_running():
            self._throttle.update({"notice": "cannot cancel: the sweep's event loop has stopped"}, now=True)
            return
        self._throttle.update({"cancelling": True, "notice": ""}, now=True)
        self._cancel = spawn(loop, self.sweep.cancel())
        self._cancel.add_done_callback(self._cancel_done)

    def _cancel_done(self, future: Any) -> None:
        notice = ""
        if future.cancelled():
            notice = "the cancel was interrupted"
        elif future.exception() is not None:
            notice = f"cancel failed: {error_text(future.exception())}"
        self._throttle.update({"cancelling": False, "notice": notice, **self._summary_changes()}, now=True)

    # -- fallbacks --
    def _final(self) -> bool:
        """The sweep ended and every finished cell's thumbnail is in: the static view is kept."""
        return self.sweep.done and not self._tasks

    def _status_line(self) -> str:
        counts = self.counts or dict.fromkeys(("succeeded",), 0)
        done = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
        parts = [f"{done}/{self.total} done"]
        parts += [f"{n} {s}" for s, n in counts.items() if n and s not in ("succeeded",)]
        if self.eta:
            parts.append(f"about {format_duration(self.eta)} left")
        return ", ".join(parts)

    def __repr__(self) -> str:
        lines = [f"<SweepView {self._status_line()}>"]
        lines += [f"  {c['label']}: {c['state']}" + (f" [{c['error']}]" if c["error"] else "")
                  for c in self.cells]
        return "\n".join(lines)

    def _tile(self, cell: dict[str, Any]) -> str:
        color = _COLORS.get(cell["state"], "#6b7280")
        visual = (f'<img src="{cell["thumb"]}" alt="{esc(cell["label"])}" style="display:block;'
                  'max-width:160px;max-height:160px;border-radius:4px">' if cell["thumb"] else
                  f'<div style="width:160px;height:90px;display:flex;align-items:center;justify-content:'
                  f'center;background:#e5e7eb;color:{color};border-radius:4px">{esc(cell["state"])}</div>')
        error = f'<div style="color:#dc2626">{esc(cell["error"])}</div>' if cell["error"] else ""
        return (f'<td style="vertical-align:top;padding:4px"><figure style="margin:0;width:160px">{visual}'
                f'<figcaption style="font-size:12px">{esc(cell["label"])}{error}</figcaption></figure></td>')

    def _html(self) -> str:
        rows: list[list[dict[str, Any]]] = []
        if self.arrangement == "grid":
            width = len(self.axes[1]["values"])
            rows = [self.cells[i:i + width] for i in range(0, len(self.cells), width)]
        else:
            rows = [self.cells[i:i + 6] for i in range(0, len(self.cells), 6)]
        body = "".join(f"<tr>{''.join(self._tile(c) for c in row)}</tr>" for row in rows)
        return (f'<div class="runcomfy-sweep" style="{FONT}"><div><strong>sweep</strong> '
                f'{esc(self._status_line())}</div>'
                f'<table style="border-collapse:collapse">{body}</table></div>')


__all__ = ["SweepView"]
