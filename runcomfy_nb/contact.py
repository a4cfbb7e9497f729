"""When a job's server last answered, and how long a job may go without an answer before it is
given up here (`RUNCOMFY_CONTACT_TIMEOUT`)."""

from __future__ import annotations

import os
import time

from .errors import ContactLost

CONTACT_TIMEOUT = 60.0


def contact_timeout() -> float:
    """Seconds a job may go without any answer from its server before it is given up here:
    `RUNCOMFY_CONTACT_TIMEOUT` (read at each call), else 60."""
    try:
        value = float(os.environ.get("RUNCOMFY_CONTACT_TIMEOUT", "") or CONTACT_TIMEOUT)
    except ValueError:
        return CONTACT_TIMEOUT
    return value if value > 0 else CONTACT_TIMEOUT


class Contact:
    """When a job's server last answered. A backend calls `answered()` on every reply (a status,
    a WebSocket frame) and `check()` after every failed attempt: once `limit` seconds passed
    without an answer, `check()` raises ContactLost, which ends the job here (not there)."""

    def __init__(self, service: str, job_id: str, reattach: str, limit: float | None = None) -> None:
        self.service, self.job_id, self.reattach = service, job_id, reattach
        self.limit = contact_timeout() if limit is None else limit
        self.last = time.time()

    def answered(self) -> None:
        self.last = time.time()

    @property
    def silent(self) -> float:
        return time.time() - self.last

    def check(self) -> None:
        if self.silent > self.limit:
            since = time.strftime("%H:%M:%S", time.localtime(self.last))
            raise ContactLost(
                f"Lost contact with the {self.service} since {since} (no answer for "
                f"{self.silent:.0f} s); job {self.job_id} may still be running there: re-attach "
                f"with {self.reattach} once it answers again.", job_id=self.job_id)
