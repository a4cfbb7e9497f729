"""A failed job's error is told in one place, its progress view, not again by the magic
(issue 16, point 2); the cell still fails, with a one-line pointer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from runcomfy_nb.magics import run as run_module
from runcomfy_nb.magics.session import SESSION

from ..helpers import emulating_shell, run_cell

MESSAGE = "CUDA out of memory (error-once test)"


@pytest.fixture(scope="module")
def ip() -> Iterator[InteractiveShell]:
    with emulating_shell(25) as shell:
        yield shell


@pytest.mark.parametrize("view", ["widget", "text"])
def test_a_failure_is_told_once(ip: InteractiveShell, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch, view: str) -> None:
    shown: list[Any] = []
    monkeypatch.setattr(run_module, "display", shown.append)  # the widget, as a front end gets it
    monkeypatch.setenv("RUNCOMFY_PROGRESS", view)
    SESSION.emulator.set_fault("dep-flux-kontext", "job_fails", message=MESSAGE)
    try:
        result, text = run_cell(ip, "%%runcomfy run dep-flux-kontext\n31.seed = 1\n", capsys)
    finally:
        SESSION.emulator.clear_faults()
    assert not result.success and "Traceback" not in text
    told = text.count(MESSAGE) + sum(MESSAGE in getattr(w, "error", "") for w in shown)
    assert told == 1, (text, shown)
    assert "UsageError" in text and "failed" in text
