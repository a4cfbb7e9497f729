"""`Throttle`: a widget's trait changes batched into at most one sync per interval, all on the
loop the widget's object lives on."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from ..loops import soon


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
