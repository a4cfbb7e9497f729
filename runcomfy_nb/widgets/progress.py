"""`JobProgress`: one job's live state — status, queue position, elapsed time, progress bar,
current node, latest preview, error — with a Cancel button."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any

import anywidget
import traitlets as t

from ..errors import JobCancelled
from ..events import Event, Failed, Finished, NodeStarted, Output, Preview, Progress, Queued, Started
from ..jobs import Job
from ..loops import behind, call, spawn
from ..timefmt import format_duration
from .assets import css, esm
from .fallback import FONT, Snapshots, error_text, esc, short_id
from .images import data_url, downscale
from .throttle import Throttle

log = logging.getLogger("runcomfy_nb")

PREVIEW_PX = 256
_COLORS = {"queued": "#6b7280", "running": "#2563eb", "succeeded": "#16a34a", "failed": "#dc2626",
           "cancelled": "#9ca3af"}
_TERMINAL = {"succeeded", "failed", "cancelled"}


class JobProgress(Snapshots, anywidget.AnyWidget):
    """Live progress of a `Job`: status, queue position, elapsed time, a progress bar, the
    current node and step, the sampler's latest preview, the error, and a Cancel button.

    Updates are batched to at most ~10 syncs per second; lifecycle changes show at once.
    """

    _esm = esm("progress.js")
    _css = css("progress.css")

    kind = t.Unicode("").tag(sync=True)
    job_id = t.Unicode("").tag(sync=True)
    label = t.Unicode("").tag(sync=True)
    status = t.Unicode("queued").tag(sync=True)
    position = t.Int(None, allow_none=True).tag(sync=True)
    step = t.Float(None, allow_none=True).tag(sync=True)
    steps = t.Float(None, allow_none=True).tag(sync=True)
    node = t.Unicode("").tag(sync=True)
    node_title = t.Unicode("").tag(sync=True)
    nodes_done = t.Int(0).tag(sync=True)
    nodes_total = t.Int(None, allow_none=True).tag(sync=True)
    preview = t.Unicode("").tag(sync=True)
    error = t.Unicode("").tag(sync=True)
    outputs = t.Int(0).tag(sync=True)
    submitted_at = t.Float(0.0).tag(sync=True)
    started_at = t.Float(None, allow_none=True).tag(sync=True)
    finished_at = t.Float(None, allow_none=True).tag(sync=True)
    cancelling = t.Bool(False).tag(sync=True)
    notice = t.Unicode("").tag(sync=True)

    def __init__(self, job: Job, **kwargs: Any) -> None:
        job = behind(job)
        super().__init__(kind=job.kind, job_id=job.id, label=job.label, status=job.status.value,
                         submitted_at=job.submitted_at, **kwargs)
        self.job = job
        self._status = job.status.value
        self._nodes: list[str] = []
        self._outputs = 0
        self._cancel: concurrent.futures.Future[bool] | asyncio.Future[bool] | None = None
        self._throttle = Throttle(self._apply, job.loop)
        self.on_msg(self._on_msg)
        self._unsubscribe = call(self._attach, job.loop)

    @property
    def flushes(self) -> int:
        """How many batched syncs were sent (for benchmarks)."""
        return self._throttle.flushes

    def _attach(self) -> Any:
        # on the job's loop: the replay and the live events cannot interleave
        self._throttle.hold = True
        try:
            unsubscribe = self.job.subscribe(self._on_event, replay=True)
        finally:
            self._throttle.hold = False
        self._throttle.flush()
        return unsubscribe

    def close(self) -> None:
        unsubscribe = getattr(self, "_unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe()
            self._throttle.close()
        super().close()

    # -- events → traits --
    def _on_event(self, job: Job, event: Event) -> None:
        changes: dict[str, Any] = {}
        match event:
            case Queued(position=position):
                changes.update(status="queued", position=position)
            case Started():
                changes.update(status="running", position=None, started_at=event.at)
            case NodeStarted(node=node, title=title):
                changes.update(self._node_started(node, title or node))
            case Progress(value=value, max=maximum, node=node):
                if node and (not self._nodes or node != self._nodes[-1]):
                    changes.update(self._node_started(node, node))
                changes.update(step=float(value), steps=float(maximum))
            case Preview(data=data, mime=mime):
                changes["_preview"] = (data, mime)  # decoded at flush: only the latest one
            case Output():
                self._outputs += 1
                changes["outputs"] = self._outputs
            case Finished(result=result):
                total = getattr(job, "nodes_total", None) or self.nodes_total
                changes.update(status="succeeded", finished_at=event.at, cancelling=False,
                               outputs=max(self._outputs, len(result.media)),
                               nodes_done=total or len(self._nodes), position=None)
            case Failed(error=error):
                cancelled = isinstance(error, JobCancelled)
                changes.update(status="cancelled" if cancelled else "failed", finished_at=event.at,
                               error="" if cancelled else error_text(error), cancelling=False,
                               position=None)
        status = changes.get("status", self._status)
        lifecycle = status != self._status
        self._status = status
        self._throttle.update(changes, now=lifecycle or status in _TERMINAL)

    def _node_started(self, node: str, title: str) -> dict[str, Any]:
        if node not in self._nodes:
            self._nodes.append(node)
        changes: dict[str, Any] = {"node": node, "node_title": title, "step": None, "steps": None,
                                   "nodes_done": max(0, len(self._nodes) - 1)}
        total = getattr(self.job, "nodes_total", None)
        if isinstance(total, int):
            changes["nodes_total"] = total
        return changes

    def _apply(self, changes: dict[str, Any]) -> None:
        preview = changes.pop("_preview", None)
        if preview is not None:
            try:
                changes["preview"] = data_url(*downscale(preview[0], PREVIEW_PX, quality=75))
            except Exception:  # a preview Pillow cannot read is not worth an error
                log.debug("could not decode a preview image", exc_info=True)
        self._apply_changes(changes, settled=changes.get("status") in _TERMINAL)

    # -- cancel --
    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "cancel":
            self._request_cancel()

    def _request_cancel(self) -> None:
        job, loop = self.job, self.job.loop
        if job.done or self._cancel is not None:
            return
        if loop.is_closed() or not loop.is_running():
            self._throttle.update({"notice": "cannot cancel: the job's event loop has stopped"}, now=True)
            return
        self._throttle.update({"cancelling": True, "notice": ""}, now=True)
        self._cancel = spawn(loop, job.cancel())
        self._cancel.add_done_callback(self._cancel_done)

    def _cancel_done(self, future: Any) -> None:
        self._cancel = None
        if future.cancelled():
            notice = "the cancel request was interrupted"
        elif future.exception() is not None:
            notice = f"cancel failed: {error_text(future.exception())}"
        elif future.result() or self.job.done:
            return
        else:
            notice = "the server did not confirm the cancel; the job may still be running"
        self._throttle.update({"cancelling": False, "notice": notice}, now=True)

    # -- fallbacks --
    def _elapsed(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.time()
        return end - self.submitted_at

    def _fraction(self) -> float | None:
        if self.status == "succeeded":
            return 1.0
        if self.steps:
            return min(1.0, max(0.0, (self.step or 0.0) / self.steps))
        if self.nodes_total:
            return min(1.0, self.nodes_done / self.nodes_total)
        return None

    def _summary(self) -> str:
        elapsed = format_duration(self._elapsed())
        if self.status == "queued":
            where = f" (position {self.position})" if self.position is not None else ""
            return f"queued{where} for {elapsed}"
        if self.status == "running":
            fraction = self._fraction()
            share = f" {fraction:.0%}" if fraction is not None else ""
            return f"running{share} for {elapsed}"
        if self.status == "succeeded":
            return f"succeeded in {elapsed}"
        return f"{self.status} after {elapsed}"

    def _name(self) -> str:
        name = self.label if self.label and self.label != self.job_id else self.kind
        return f"{name}/{short_id(self.job_id)}"

    def __repr__(self) -> str:
        return f"<JobProgress {self._name()} {self._summary()}>"

    def _html(self) -> str:
        color = _COLORS.get(self.status, "#6b7280")
        fraction = self._fraction()
        width = 0.0 if fraction is None else fraction * 100
        bar_color = color if self.status != "queued" else "#9ca3af"
        details = []
        if self.status == "queued" and self.position is not None:
            details.append(f"queue position {self.position}")
        if self.node_title and self.status == "running":
            step = f" · step {self.step:g}/{self.steps:g}" if self.steps else ""
            details.append(f"{esc(self.node_title)}{step}")
        if self.nodes_total:
            details.append(f"nodes {self.nodes_done}/{self.nodes_total}")
        if self.outputs:
            details.append(f"{self.outputs} output{'s' if self.outputs != 1 else ''}")
        parts = [
            f'<div class="runcomfy-progress" style="{FONT};max-width:560px;padding:6px 0">',
            '<div style="display:flex;gap:8px;align-items:center">',
            f"<strong>{esc(self.label or self.job_id)}</strong>",
            f'<span style="color:#6b7280">{esc(self.kind)}</span>',
            f'<span style="background:{color};color:#fff;border-radius:9px;padding:0 8px;'
            f'font-size:12px">{esc(self.status)}</span>',
            f'<span style="margin-left:auto;color:#6b7280">{format_duration(self._elapsed())}</span>',
            "</div>",
            '<div style="height:6px;background:#e5e7eb;border-radius:3px;margin:4px 0;overflow:hidden">'
            f'<div style="height:6px;width:{width:.1f}%;background:{bar_color}"></div></div>',
        ]
        if details:
            parts.append(f'<div style="color:#6b7280">{" · ".join(details)}</div>')
        if self.error:
            parts.append(f'<div style="color:#dc2626;white-space:pre-wrap">{esc(self.error)}</div>')
        parts.append("</div>")
        return "".join(parts)
