"""A job's unified `Status`, and how the servers' own words read: `parse_status` (every API's
spelling of a status) and `failure_message` (an error body of any shape as one text)."""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any

log = logging.getLogger("runcomfy_nb")


class Status(str, Enum):
    """Where a job is in its lifecycle: queued → running → succeeded | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)


_RAW_STATUS = {
    "in_queue": Status.QUEUED, "queued": Status.QUEUED, "pending": Status.QUEUED,
    "waiting_to_dispatch": Status.QUEUED, "submitted": Status.QUEUED,
    "queued_waiting": Status.QUEUED,
    "in_progress": Status.RUNNING, "running": Status.RUNNING, "preparing": Status.RUNNING,
    "executing": Status.RUNNING, "cancel_requested": Status.RUNNING,
    "cancellation_requested": Status.RUNNING,
    "succeeded": Status.SUCCEEDED, "success": Status.SUCCEEDED,
    "failed": Status.FAILED, "error": Status.FAILED, "non_retryable_error": Status.FAILED,
    "lost": Status.FAILED,
    "cancelled": Status.CANCELLED, "canceled": Status.CANCELLED,
}
_unknown_logged: set[str] = set()


def parse_status(raw: Any, *, completed: Status | None = None) -> Status | None:
    """The unified status of a raw API spelling (case-insensitive). `completed` is what the API
    means by "completed" (None: finished, outcome unknown). Unknown spellings count as running."""
    text = str(raw or "").strip().lower()
    if text == "completed":
        return completed
    if text in _RAW_STATUS:
        return _RAW_STATUS[text]
    if text not in _unknown_logged:
        _unknown_logged.add(text)
        log.warning("unknown job status %r, treated as running", text)
    return Status.RUNNING


def failure_message(error: Any) -> str:
    """Readable text of an error body that may be an object, a list or a string."""
    if error is None:
        return "no error details were given"
    if isinstance(error, str):
        return error
    if isinstance(error, list):
        return "; ".join(failure_message(e) for e in error) or "no error details were given"
    if isinstance(error, dict):
        message = next(
            (error[k] for k in ("message", "error_message", "exception_message", "error") if error.get(k)),
            None,
        )
        kind = error.get("type") or error.get("exception_type") or error.get("errorCode")
        text = failure_message(message) if message is not None else str(error)
        return f"{kind}: {text}" if kind and str(kind) not in text else text
    return str(error)
