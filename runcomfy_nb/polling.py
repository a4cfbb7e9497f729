"""Adaptive polling for APIs without push events (serverless deployments, the Model API).

Each deployment (or model) keeps a `DurationModel` of how long its recent runs took, learnt from
every job: the server's `created_at`→`finished_at` less the time the job was seen waiting in the
queue. A running job is first polled when the fastest recent run would have been done for `gap`
seconds, then every `gap` seconds until the slowest would have been, then with growing pauses.
With no history, polls start fast and back off. A queued job is polled with growing pauses too,
but when another job of its deployment finishes (`other_finished`, told by the shared status loop)
and the queue position says it was next, it is planned as started at that moment. So the result
arrives within about `gap` seconds of completion, queued or not, at a fraction of fixed-interval
calls. The backend that follows a request with this plan is `polled.PolledRun`.
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
    """The pauses between status calls for one job; times are seconds on one clock (`start`: the
    submit)."""

    def __init__(self, model: DurationModel, start: float = 0.0, *, gap: float = 0.5,
                 first: float = 0.5, growth: float = 1.5, max_pause: float = 10.0,
                 max_queued_pause: float = 10.0) -> None:
        self.model = model
        self.gap, self.first, self.growth = gap, first, growth
        self.max_pause, self.max_queued_pause = max_pause, max_queued_pause
        self.start = self.origin = self.last = start  # origin: when the run started, as far as known
        self.queued_seen = self.waiting = self.guessed = False
        self.position: int | None = None
        self._pause = 0.0

    def _backoff(self, cap: float) -> float:
        self._pause = min(cap, self._pause * self.growth if self._pause else self.first)
        return self._pause

    def observe(self, t: float, queued: bool, position: int | None = None) -> None:
        """Tell the plan what a status call at `t` showed (`position`: the queue position)."""
        if queued:
            self.queued_seen = self.waiting = True
            self.guessed = False
            self.position = position
        elif self.waiting:
            self.waiting = False
            if not (self.guessed and self.last <= self.origin <= t):
                self.origin = (t + self.last) / 2  # started between the last two calls
            self._pause = 0.0
        self.last = t

    def other_finished(self, t: float) -> bool:
        """Another job of the deployment finished about `t`: if this one waited next in the queue
        (position 0, or unknown), plan it as started then (and say so)."""
        if not self.waiting or self.guessed:
            return False
        if self.position:
            self.position -= 1
            return False
        self.origin, self.guessed, self._pause = max(t, self.last), True, 0.0
        return True

    def queue_wait(self) -> float:
        """Seconds from the submit to the (estimated) start of the run."""
        return max(0.0, self.origin - self.start)

    def next_pause(self, t: float, queued: bool | None = None) -> float:
        """How long to wait after a call at `t` before the next one (`queued`: what that call
        showed, if not told to `observe`)."""
        if queued if queued is not None else (self.waiting and not self.guessed):
            return self._backoff(self.max_queued_pause)
        bounds = self.model.bounds()
        if bounds is None:
            return self._backoff(self.max_pause)
        low, high = bounds
        due = self.origin + low + self.gap
        if t < due - 0.05:  # timers may wake a little early: never poll twice in a row for that
            return due - t
        if t <= self.origin + high + self.gap:
            return self.gap
        return self._backoff(self.max_pause)
