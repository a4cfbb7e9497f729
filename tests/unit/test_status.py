"""Job status: the servers' spellings of a status, failure text, timestamps, and the poll plan that
learns how long a run takes."""

from __future__ import annotations

import pytest

from runcomfy_nb.polling import DurationModel, PollPlan
from runcomfy_nb.status import Status, failure_message, parse_status
from runcomfy_nb.timefmt import parse_timestamp


def test_status_spellings() -> None:
    assert parse_status("IN_QUEUE") is Status.QUEUED
    assert parse_status("canceled") is parse_status("cancelled") is Status.CANCELLED
    assert parse_status("completed") is None
    assert parse_status("completed", completed=Status.SUCCEEDED) is Status.SUCCEEDED
    assert parse_status("mystery") is Status.RUNNING
    assert failure_message([{"errorCode": 500, "error": "boom"}]) == "500: boom"
    assert failure_message({"type": "execution_error", "message": "OOM"}) == "execution_error: OOM"


def test_timestamps() -> None:
    a = parse_timestamp("2025-07-22T13:05:16.143086")
    assert a == parse_timestamp("2025-07-22T13:05:16.143086Z")
    assert a == parse_timestamp("2025-07-22T15:05:16.143086+02:00")
    assert parse_timestamp("2025-07-22T13:05:16.1") == pytest.approx(a - 0.043086)
    assert parse_timestamp("garbage") is None


def test_poll_plan_learns_run_time() -> None:
    model = DurationModel()
    cold = PollPlan(model)
    pauses = [cold.next_pause(0, False) for _ in range(4)]
    assert pauses[0] == 0.5 and pauses == sorted(pauses)  # fast at first, then backing off
    for seconds in (2.4, 3.0, 3.6):
        model.record(seconds)
    warm = PollPlan(model)
    first = warm.next_pause(0.0, False)
    assert first == pytest.approx(2.4 * (1 - 0.35 / 3**0.5) + 0.5)  # few samples: a wider margin
    assert warm.next_pause(first - 0.01, False) == 0.5  # woke a hair early: no second call at once
    assert warm.next_pause(first, False) == 0.5  # then every gap until the slowest would be done
    assert warm.next_pause(5.0, False) == 0.5  # past it: backing off from the start
    queued = PollPlan(model)
    assert queued.next_pause(0.5, True) == 0.5 and queued.next_pause(1, True) == 0.75
