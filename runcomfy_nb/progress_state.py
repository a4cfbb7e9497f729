"""`ProgressState`: what one job's progress is, from its events, with no display code — shared
by the `JobProgress` widget, the text view (`console`) and tests.

One fraction per job that never moves backwards: nodes done (executed and cached) plus the
running node's step share, over the graph's node count; a job whose graph is unknown shows its
steps alone. Rate and ETA follow tqdm: shown once two samples make them estimable."""

from __future__ import annotations

from typing import Any

from .errors import JobCancelled
from .events import Event, Failed, Finished, NodeStarted, Output, Progress, Queued, Started
from .timefmt import format_duration

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, ..."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def position_text(position: int | None) -> str:
    """A queue position (0 = next, as the APIs count) as people count it."""
    if position is None:
        return "waiting in queue"
    if position <= 0:
        return "next in queue"
    return f"{ordinal(position + 1)} in queue"


def rate_text(per_second: float | None) -> str:
    """tqdm's rate: `2.50 it/s`, or `4.00 s/it` below one iteration a second."""
    if not per_second or per_second <= 0:
        return ""
    return f"{per_second:.2f} it/s" if per_second >= 1 else f"{1 / per_second:.2f} s/it"


class ProgressState:
    """A job's progress, fed its events in order (`feed`); every field is plain data."""

    def __init__(self, *, kind: str = "", submitted_at: float = 0.0, nodes_total: int | None = None) -> None:
        self.kind = kind
        self.status = "queued"
        self.phase = ""  # e.g. "cold start", when the backend tells it (Started.phase)
        self.position: int | None = None
        self.node = ""
        self.node_title = ""
        self.step: float | None = None
        self.steps: float | None = None
        self.nodes_done = 0
        self.nodes_total = nodes_total
        self.outputs = 0
        self.error: BaseException | None = None
        self.submitted_at = submitted_at
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._seen: list[str] = []
        self._best = 0.0  # the fraction shown so far: it never goes back
        self._first: tuple[float, float] | None = None  # (at, fraction) of the first progress
        self._last_at: float | None = None
        self._step0: tuple[float, float] | None = None  # (at, step) of the running node's first step
        self._step_rate: float | None = None

    # -- events --
    def feed(self, event: Event, job: Any = None) -> bool:
        """Take one event (`job`: its Job, read for the graph's node count); True when the status
        changed (a lifecycle step, which views show at once)."""
        before = self.status
        total = getattr(job, "nodes_total", None)
        if isinstance(total, int) and total > 0:
            self.nodes_total = total
        match event:
            case Queued(position=position):
                self.status, self.position = "queued", position
            case Started():
                self._start(event)
            case NodeStarted():
                self._node(event.node, event.title or event.node, event.done, event.total)
            case Progress(value=value, max=maximum, node=node):
                self._progress(event.at, node, float(value), float(maximum))
            case Output():
                self.outputs += 1
            case Finished(result=result):
                self.status, self.finished_at, self.position = "succeeded", event.at, None
                self.outputs = max(self.outputs, len(result.media))
                self.nodes_done = self.nodes_total or max(self.nodes_done, len(self._seen))
                self._best = 1.0
            case Failed(error=error):
                cancelled = isinstance(error, JobCancelled)
                self.status = "cancelled" if cancelled else "failed"
                self.finished_at, self.position = event.at, None
                self.error = None if cancelled else error
        if self.status == "queued" and isinstance(event, (NodeStarted, Progress, Output)):
            self._start(Started(at=event.at))  # as Job.emit does: work means it runs
        self._observe(event.at)
        return self.status != before

    def _start(self, event: Started) -> None:
        self.status, self.position = "running", None
        self.started_at = self.started_at or event.at
        self.phase = getattr(event, "phase", "") or ""

    def _node(self, node: str, title: str, done: int | None, total: int | None) -> None:
        if node not in self._seen:
            self._seen.append(node)
        self.phase = ""
        self.node, self.node_title = node, title
        self.step = self.steps = None
        self._step0, self._step_rate = None, None
        if isinstance(total, int) and total > 0:
            self.nodes_total = total
        counted = done if isinstance(done, int) else len(self._seen) - 1
        self.nodes_done = max(self.nodes_done, counted)  # cached nodes arrive counted in `done`

    def _progress(self, at: float, node: str | None, value: float, maximum: float) -> None:
        if node and node != self.node:
            self._node(node, node, None, None)
        self.phase = ""
        if self._step0 is None or value < self._step0[1]:
            self._step0 = (at, value)
        elif at > self._step0[0] and value > self._step0[1]:
            self._step_rate = (value - self._step0[1]) / (at - self._step0[0])
        self.step, self.steps = value, maximum

    def _observe(self, at: float) -> None:
        raw = self._raw()
        if raw is None:
            return
        self._best = max(self._best, min(1.0, raw))
        if self._best > 0 and self._first is None:
            self._first = (at, self._best)
        self._last_at = at

    def _raw(self) -> float | None:
        share = self.step / self.steps if self.steps and self.step is not None else None
        if self.nodes_total:
            running = (share or 0.0) if self.status == "running" else 0.0
            return (min(self.nodes_done, self.nodes_total) + running) / self.nodes_total
        return share

    # -- what views show --
    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def fraction(self) -> float | None:
        """The job's share done, 0..1, never lower than before; None while nothing tells it."""
        if self.status == "succeeded":
            return 1.0
        if self._first is None and self._raw() is None:
            return None
        return self._best

    @property
    def rate(self) -> float | None:
        """The running node's steps per second, once two steps have been seen."""
        return self._step_rate if self.status == "running" else None

    def eta(self) -> float | None:
        """Seconds left, from how fast the fraction grew since it was first seen (None until estimable)."""
        if self.status != "running" or self._first is None or self._last_at is None:
            return None
        at0, f0 = self._first
        grown, spent = self._best - f0, self._last_at - at0
        if grown <= 0 or spent <= 0:
            return None
        return spent * (1.0 - self._best) / grown

    def elapsed(self, now: float) -> float:
        end = self.finished_at if self.finished_at is not None else now
        return max(0.0, end - self.submitted_at)

    def details(self) -> list[str]:
        """The parts of the status line after the status: queue, node, step x/y, nodes, rate, ETA."""
        parts: list[str] = []
        if self.status == "queued":
            parts.append(position_text(self.position))
        if self.status == "running":
            if self.phase:
                parts.append(self.phase)
            if self.node_title:
                parts.append(self.node_title)
            if self.steps:
                parts.append(f"step {self.step or 0:g}/{self.steps:g}")
        if self.nodes_total and self.status in ("running", "succeeded"):
            parts.append(f"nodes {self.nodes_done}/{self.nodes_total}")
        if rate := rate_text(self.rate):
            parts.append(rate)
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return parts

    def summary(self, now: float) -> str:
        """`running 42% for 3.1 s`, `queued (next in queue) for 0.4 s`, `succeeded in 9.0 s`."""
        elapsed = format_duration(self.elapsed(now))
        if self.status == "queued":
            return f"queued ({position_text(self.position)}) for {elapsed}"
        if self.status == "running":
            fraction = self.fraction
            share = f" {fraction:.0%}" if fraction is not None else ""
            return f"running{share} for {elapsed}"
        if self.status == "succeeded":
            return f"succeeded in {elapsed}"
        return f"{self.status} after {elapsed}"
