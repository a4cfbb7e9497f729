"""A token bucket that paces one account's calls, shared by its async and blocking clients."""

from __future__ import annotations

import asyncio
import threading
import time


class RateLimiter:
    """A token bucket: `rate` requests per second, `burst` at once. Thread-safe and loop-agnostic,
    so one limiter can serve every client of an account (async and blocking alike)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def _reserve(self) -> float:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate) - 1
            self._stamp = now
            return max(0.0, -self._tokens / self.rate)

    async def acquire(self) -> None:
        """Wait for this call's turn."""
        delay = self._reserve()
        if delay:
            await asyncio.sleep(delay)
