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

from ..events import Event, Failed, Finished, Preview
from ..jobs import Job
from ..loops import behind, call, spawn
from ..progress_state import TERMINAL as _TERMINAL
from ..progress_state import ProgressState, position_text, rate_text
from ..timefmt import format_duration
from .assets import css, esm
from .fallback import FONT, Snapshots, error_text, esc, short_id
from .images import data_url, downscale
from .throttle import Throttle

log = logging.getLogger("runcomfy_nb")

PREVIEW_PX = 256
_COLORS = {"queued": "#6b7280", "running": "#2563eb", "succeeded": "#16a34a", "failed": "#dc2626",
           "cancelled": "#9ca3af"}


def queue_text(state: ProgressState) -> str:
    """"next in queue", "2nd in queue", ... while queued; else empty."""
    return position_text(state.position) if state.status == "queued" else ""


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
    # the one fraction (never backwards), queue position as people count it, rate, ETA, phase
    fraction = t.Float(None, allow_none=True).tag(sync=True)
    queue_text = t.Unicode("").tag(sync=True)
    rate = t.Unicode("").tag(sync=True)
    eta = t.Float(None, allow_none=True).tag(sync=True)
    phase = t.Unicode("").tag(sync=True)

    def __init__(self, job: Job, **kwargs: Any) -> None:
        job = behind(job)
        super().__init__(kind=job.kind, job_id=job.id, label=job.label, status=job.status.value,
                         submitted_at=job.submitted_at, **kwargs)
        self.job = job
        self._status = job.status.value
        self._state = ProgressState(kind=job.kind, submitted_at=job.submitted_at)
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
        state = self._state
        lifecycle = state.feed(event, job)
        changes: dict[str, Any] = {
            "status": state.status, "position": state.position, "queue_text": queue_text(state),
            "node": state.node, "node_title": state.node_title, "step": state.step, "steps": state.steps,
            "nodes_done": state.nodes_done, "nodes_total": state.nodes_total, "outputs": state.outputs,
            "fraction": state.fraction, "rate": rate_text(state.rate), "eta": state.eta(),
            "phase": state.phase, "started_at": state.started_at, "finished_at": state.finished_at,
        }
        match event:
            case Preview(data=data, mime=mime):
                changes["_preview"] = (data, mime)  # decoded at flush: only the latest one
            case Finished() | Failed():
                changes.update(cancelling=False, error=error_text(state.error) if state.error else "")
        if isinstance(event, Finished):  # the gallery shows the outputs: no last preview above them
            changes["preview"] = ""
        self._status = state.status
        self._throttle.update(changes, now=lifecycle or state.terminal)

    def _apply(self, changes: dict[str, Any]) -> None:
        preview = changes.pop("_preview", None)
        if preview is not None and changes.get("status") != "succeeded":
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
        return 1.0 if self.status == "succeeded" else self.fraction

    def _summary(self) -> str:
        return self._state.summary(time.time())

    def _name(self) -> str:
        if self.label and self.label != self.job_id and self.job_id[:8] in self.label:  # it names the id
            return self.label
        name = self.label if self.label and self.label != self.job_id else self.kind
        return f"{name}/{short_id(self.job_id)}"

    def _left_behind(self) -> str:
        return (f"The kernel ended while this job was {self.status}; the job goes on without it. "
                f"In a new kernel, %runcomfy attach {self.job_id[:8]} follows it again.")

    def __repr__(self) -> str:
        return f"<JobProgress {self._name()} {self._summary()}>"

    def _html(self) -> str:
        color = _COLORS.get(self.status, "#6b7280")
        fraction = self._fraction()
        width = 0.0 if fraction is None else fraction * 100
        bar_color = color if self.status != "queued" else "#9ca3af"
        details = []
        details += [esc(part) for part in self._state.details()]
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
