"""Adaptive polling for APIs without push events (serverless deployments, the Model API).

Each deployment (or model) keeps a `DurationModel` of how long its recent jobs took, read from
the server's own `created_at`/`finished_at`. A job that has not been seen waiting in a queue
is first polled when the fastest recent job would have been done for `gap` seconds, then every
`gap` seconds until the slowest recent one would have been, then with growing pauses. With no
history, polls start fast and back off. While a job waits in a queue, pauses grow too. So the
result arrives within about `gap` seconds of completion at a fraction of fixed-interval calls.
The backend that follows a request with this plan is `polled.PolledRun`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class DurationModel:
    """Recent run times (seconds) of one deployment or model."""

    samples: deque[float] = field(default_factory=lambda: deque(maxlen=20))

    def record(self, seconds: float) -> None:
        if 0 < seconds < 24 * 3600:
            self.samples.append(seconds)

    def bounds(self) -> tuple[float, float] | None:
        """(low, high) run time to plan polls with; `low` is widened while samples are few."""
        if not self.samples:
            return None
        margin = 0.35 / len(self.samples) ** 0.5
        return min(self.samples) * (1 - margin), max(self.samples)


class PollPlan:
    """The pauses between status calls for one job. `t` counts seconds from submit."""

    def __init__(self, model: DurationModel, *, gap: float = 0.5, first: float = 0.5,
                 growth: float = 1.5, max_pause: float = 10.0) -> None:
        self.model = model
        self.gap, self.first, self.growth, self.max_pause = gap, first, growth, max_pause
        self.origin = 0.0  # when the run started, as far as we know
        self.queued_seen = False
        self._pause = 0.0

    def _backoff(self) -> float:
        self._pause = min(self.max_pause, self._pause * self.growth if self._pause else self.first)
        return self._pause

    def observe(self, t: float, queued: bool, previous_t: float) -> None:
        """Tell the plan what a status call at `t` showed."""
        if queued:
            self.queued_seen = True
        elif self.queued_seen and self.origin == 0.0:
            self.origin = (t + previous_t) / 2  # started between the last two calls
            self._pause = 0.0

    def next_pause(self, t: float, queued: bool) -> float:
        """How long to wait after a call at `t` (0 = the submit) before the next one."""
        if queued:
            return self._backoff()
        bounds = self.model.bounds()
        if bounds is None:
            return self._backoff()
        low, high = bounds
        due = self.origin + low + self.gap
        if t < due - 0.05:  # timers may wake a little early: never poll twice in a row for that
            return due - t
        if t <= self.origin + high + self.gap:
            return self.gap
        return self._backoff()
