"""The text view's rules: live rewrites at most 10 a second, one line per state change off a
TTY, one final line; where it is used (scripts, IPython without a widget front end)."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

import pytest

from runcomfy_nb import console
from runcomfy_nb.errors import JobFailed
from runcomfy_nb.events import NodeStarted, Progress, Queued, Started
from runcomfy_nb.jobs import Job

from ..helpers import until
from .test_widgets import Script


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_live_rewrites_are_throttled_to_ten_a_second() -> None:
    gate = asyncio.Event()
    job = Job(Script(Started(), NodeStarted("3", "KSampler"), gate), kind="deployment", id="abcdef123456")
    clock, out = Clock(), io.StringIO()
    view = console.TextProgress(job, out, live=True, clock=clock)
    await until(lambda: "KSampler" in out.getvalue())
    before = out.getvalue().count("\r")
    for i in range(50):  # 50 steps in the same instant: at most one more rewrite now
        job.emit(Progress(i, 50, "3"))
    assert out.getvalue().count("\r") - before <= 1
    await until(lambda: "step 49/50" in out.getvalue())  # the skipped ones show once, later
    gate.set()
    await job.wait(5)
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1 and "succeeded in" in text.rsplit("\r", 1)[-1]
    assert view.ended


async def test_one_line_per_state_change_and_the_error_once() -> None:
    steps = [Queued(2), Queued(0), Started(), NodeStarted("1", "Load"), Progress(1, 2, "1"),
             Progress(2, 2, "1"), NodeStarted("2", "KSampler"), JobFailed("CUDA oom", job_id="j")]
    job = Job(Script(*steps), kind="deployment", id="j1")
    out = io.StringIO()
    console.TextProgress(job, out, live=False)
    with pytest.raises(JobFailed):
        await job.result(5)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [("3rd in queue" in lines[0]), ("next in queue" in lines[1])] == [True, True]
    assert any("Load" in line for line in lines) and any("KSampler" in line for line in lines)
    assert not any("step 2/2" in line for line in lines)  # steps are not state changes
    assert out.getvalue().count("CUDA oom") == 1 and "failed after" in lines[-1]


def test_script_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    tty, pipe = SimpleNamespace(isatty=lambda: True), io.StringIO()
    monkeypatch.delenv("RUNCOMFY_PROGRESS", raising=False)
    assert console.script_wants_progress(tty) and not console.script_wants_progress(pipe)
    monkeypatch.setenv("RUNCOMFY_PROGRESS", "on")
    assert console.script_wants_progress(pipe)
    monkeypatch.setenv("RUNCOMFY_PROGRESS", "off")
    assert not console.script_wants_progress(tty)


def test_front_end_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNCOMFY_PROGRESS", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "google.colab", raising=False)
    terminal, kernel = SimpleNamespace(), SimpleNamespace(kernel=object())
    assert console.wants_text_view(terminal) and not console.wants_text_view(kernel)
    monkeypatch.setitem(__import__("sys").modules, "google.colab", SimpleNamespace())
    assert console.wants_text_view(kernel)
    monkeypatch.setenv("RUNCOMFY_PROGRESS", "widget")
    assert not console.wants_text_view(kernel)
    monkeypatch.setenv("RUNCOMFY_PROGRESS", "text")
    assert console.wants_text_view(SimpleNamespace(kernel=object()))


@pytest.mark.parametrize("live", [True, False])
async def test_a_job_that_already_ended_gets_its_final_line_once(live: bool) -> None:
    job = Job(Script(Started(), NodeStarted("3", "KSampler")), kind="deployment", id="done-before")
    await job.wait(5)  # e.g. `%runcomfy attach` of a finished job: the replay holds the end
    out = io.StringIO()
    view = console.TextProgress(job, out, live=live)
    assert view.ended and out.getvalue().count("succeeded in") == 1 and out.getvalue().endswith("\n")
    view.close()
