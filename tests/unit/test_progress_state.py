"""The one fraction per job (never backwards, cached nodes counted), queue wording, rate and ETA,
as `ProgressState` computes them for the widget and the text view (issue 16, point 2)."""

from __future__ import annotations

import itertools

import pytest

from runcomfy_nb.errors import JobFailed
from runcomfy_nb.events import Event, Failed, Finished, JobResult, NodeStarted, Progress, Queued, Started
from runcomfy_nb.jobs import Job
from runcomfy_nb.progress_state import ProgressState, ordinal, position_text, rate_text
from runcomfy_nb.widgets import JobProgress

from .test_widgets import Script


def fed(*events: Event, nodes_total: int | None = None) -> tuple[ProgressState, list[float | None]]:
    state = ProgressState(submitted_at=0.0, nodes_total=nodes_total)
    seen = []
    for event in events:
        state.feed(event)
        seen.append(state.fraction)
    return state, seen


def nodes(n: int, at: float = 1.0) -> list[Event]:
    return [NodeStarted(str(i), f"node {i}", at=at + i) for i in range(n)]


def test_steps_after_nodes_do_not_go_back() -> None:
    # the issue: 62.5 % "nodes 5/8", then the sampler's "step 3/20" showed 15 %
    state, seen = fed(Started(at=0.5), *nodes(6), Progress(3, 20, "5", at=8.0), nodes_total=8)
    assert state.nodes_done == 5 and seen[-2] == pytest.approx(5 / 8)
    assert seen[-1] == pytest.approx((5 + 3 / 20) / 8)
    assert all(b >= a for a, b in itertools.pairwise(seen) if a is not None and b is not None)


def test_a_second_sampler_never_moves_the_bar_back() -> None:
    state, seen = fed(Started(at=0.0), Progress(18, 20, at=1.0), Progress(2, 20, at=2.0))
    assert seen == [None, pytest.approx(0.9), pytest.approx(0.9)]
    assert state.step == 2  # the step itself is told as it is


def test_cached_nodes_count_as_done() -> None:
    # the issue: "step 27/30 · nodes 1/7" when 5 of 7 nodes were cached
    state, _ = fed(Started(at=0.0), NodeStarted("3", "KSampler", done=5, total=7, at=1.0),
                   Progress(27, 30, "3", at=2.0))
    assert "nodes 5/7" in state.details() and "step 27/30" in state.details()
    assert state.fraction == pytest.approx((5 + 0.9) / 7)


async def test_comfyui_frames_count_cached_nodes_in_node_started() -> None:
    from runcomfy_nb.clients.comfyui.frames import Frames

    class Source:
        dialect = None

    graph = {str(i): {"class_type": "X"} for i in range(1, 8)}
    job = Job(Script(), kind="comfyui", id="p1")
    events: list[Event] = []
    job.subscribe(lambda _job, event: events.append(event), replay=False)
    frames = Frames(Source(), graph)  # type: ignore[arg-type]
    frames.bind(job, "p1")
    frames.take({"type": "execution_start", "data": {"prompt_id": "p1"}})
    frames.take({"type": "execution_cached", "data": {"prompt_id": "p1", "nodes": ["1", "2", "4", "5", "6"]}})
    frames.take({"type": "executing", "data": {"prompt_id": "p1", "node": "3"}})
    started = [e for e in events if isinstance(e, NodeStarted)]
    assert (started[-1].done, started[-1].total) == (5, 7)


def test_success_is_whole_and_failure_keeps_its_share() -> None:
    state, seen = fed(Started(at=0.0), Progress(10, 20, at=1.0),
                      Finished(JobResult("j"), at=2.0))
    assert seen[-1] == 1.0 and state.status == "succeeded"
    state, seen = fed(Started(at=0.0), Progress(10, 20, at=1.0),
                      Failed(JobFailed("boom", job_id="j"), at=2.0))
    assert seen[-1] == pytest.approx(0.5) and state.status == "failed" and state.error is not None


@pytest.mark.parametrize(("position", "text"), [
    (0, "next in queue"), (1, "2nd in queue"), (2, "3rd in queue"), (3, "4th in queue"),
    (10, "11th in queue"), (11, "12th in queue"), (12, "13th in queue"), (20, "21st in queue"),
    (21, "22nd in queue"), (None, "waiting in queue"),
])
def test_queue_position_as_people_count(position: int | None, text: str) -> None:
    assert position_text(position) == text
    state, _ = fed(Queued(position))
    assert text in state.summary(now=1.0) and "position 0" not in state.summary(now=1.0)


def test_ordinals() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 111, 112, 113, 101, 102)] == [
        "1st", "2nd", "3rd", "4th", "111th", "112th", "113th", "101st", "102nd"]


def test_rate_and_eta_like_tqdm() -> None:
    state, _ = fed(Started(at=0.0), Progress(1, 20, "3", at=10.0))
    assert state.rate is None and state.eta() is None  # one sample: not estimable yet
    state.feed(Progress(5, 20, "3", at=12.0))
    assert state.rate == pytest.approx(2.0) and "2.00 it/s" in state.details()
    # the fraction went 0.05 → 0.25 in 2 s: 0.75 left takes 7.5 s
    assert state.eta() == pytest.approx(7.5)
    assert "ETA 7.5 s" in state.details()
    slow, _ = fed(Started(at=0.0), Progress(1, 10, at=1.0), Progress(2, 10, at=5.0))
    assert rate_text(slow.rate) == "4.00 s/it"
    slow.feed(Finished(JobResult("j"), at=6.0))
    assert slow.rate is None and slow.eta() is None


def test_phase_from_the_backend() -> None:
    state, _ = fed(Started(phase="cold start", at=1.0))
    assert state.details() == ["cold start"]
    state.feed(NodeStarted("1", "Load", at=2.0))
    assert "cold start" not in state.details()


async def test_widget_fraction_never_goes_back() -> None:
    # reproduce: the widget showed 62.5 % then 15 % ("step 3/20" alone)
    import asyncio

    from ..helpers import until

    gate = asyncio.Event()
    job = Job(Script(Started(), *nodes(6), Progress(3, 20, "5"), gate), kind="comfyui", id="p8")
    job.nodes_total = 8
    widget = JobProgress(job)
    await until(lambda: widget.step == 3)
    assert widget._fraction() == pytest.approx((5 + 3 / 20) / 8)
    assert widget.nodes_done == 5
    gate.set()
    await job.wait(5)
    assert widget.fraction == 1.0
