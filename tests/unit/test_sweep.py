"""The sweep core with jobs of a stand-in backend: axes, combinations, bounded concurrency, one
submit per combination, failures in their cell, cancel, ETA and saved names."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from runcomfy_nb.errors import JobCancelled, JobFailed, ValidationError
from runcomfy_nb.events import JobResult
from runcomfy_nb.jobs import Job
from runcomfy_nb.media import Media
from runcomfy_nb.sweep import (
    Sweep,
    cloud_concurrency,
    combinations,
    deployment_concurrency,
    resolve_axis,
    short_label,
    start_sweep,
    workflow_sweep,
)
from runcomfy_nb.workflow import Workflow

from ..helpers import until

WORKFLOW = Workflow({
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat"}, "_meta": {"title": "Positive Prompt"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": ""}, "_meta": {"title": "Negative Prompt"}},
    "31": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20}},
})


class Backend:
    """Runs until `release` is set (or at once), then succeeds, or fails when `fail`."""

    def __init__(self, server: Server, overrides: dict[str, Any]) -> None:
        self.server, self.overrides = server, overrides
        self.release = asyncio.Event()
        self.cancelled = self.expedited = False

    async def run(self, job: Job) -> JobResult:
        self.server.running += 1
        self.server.peak = max(self.server.peak, self.server.running)
        try:
            if not self.server.instant:
                await self.release.wait()
            if self.cancelled:
                raise JobCancelled(f"{job.id} cancelled")
            if self.overrides.get("31", {}).get("inputs", {}).get("seed") in self.server.failing:
                raise JobFailed("out of memory")
            return JobResult(job.id, media=[Media(url="u", filename="ComfyUI_00001_.png", kind="image",
                                                  _fetcher=self.server)])
        finally:
            self.server.running -= 1

    async def cancel(self) -> bool:
        self.cancelled = True
        self.release.set()
        return True

    def expedite(self) -> None:
        self.expedited = True


class Server:
    """Submits Jobs of `Backend`, counts them; also the Fetcher of their outputs."""

    def __init__(self, *, instant: bool = True, failing: tuple[Any, ...] = ()) -> None:
        self.instant, self.failing = instant, failing
        self.running = self.peak = 0
        self.submitted: list[dict[str, Any]] = []
        self.backends: list[Backend] = []
        self.refuse: set[int] = set()
        self.invalid: set[int] = set()
        self.loop = None

    async def submit(self, overrides: dict[str, Any]) -> Job:
        self.submitted.append(overrides)
        if len(self.submitted) in self.refuse:
            raise ConnectionError("the reply was lost")
        if len(self.submitted) in self.invalid:
            raise ValidationError("Node 31 (KSampler): 'seed' must be an INT")
        backend = Backend(self, overrides)
        self.backends.append(backend)
        return Job(backend, kind="test", id=f"job-{len(self.submitted)}")

    async def read(self, media: Media) -> bytes:
        return b"png"

    async def save(self, media: Media, path: Path) -> Path:
        from runcomfy_nb.media import claim

        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(b"png")
        return claim(tmp, path)


def test_axis_keys_resolve_by_node_or_by_a_unique_input_name() -> None:
    assert resolve_axis("seed", WORKFLOW) == ("31", "seed")
    assert resolve_axis("Positive Prompt.text", WORKFLOW) == ("6", "text")
    assert resolve_axis("KSampler.steps", WORKFLOW) == ("31", "steps")
    assert resolve_axis("31.seed", None) == ("31", "seed")
    with pytest.raises(ValidationError, match=r"2 nodes have it.*'Positive Prompt.text' \(node 6\).*"
                                              r"'Negative Prompt.text' \(node 7\)"):
        resolve_axis("text", WORKFLOW)
    with pytest.raises(ValidationError, match="no node of the workflow has an input 'sede'"):
        resolve_axis("sede", WORKFLOW)
    with pytest.raises(ValidationError, match=r"write NODE\.input"):
        resolve_axis("seed", None)


def test_combinations_product_and_zip() -> None:
    assert combinations({"a": [1, 2], "b": ["x", "y", "z"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
        {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"}]
    assert combinations({"a": [1, 2], "b": ["x", "y"]}, zip=True) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    with pytest.raises(ValidationError, match="one length"):
        combinations({"a": [1, 2], "b": ["x"]}, zip=True)
    with pytest.raises(ValidationError, match="non-empty list"):
        combinations({"a": "abc"})
    with pytest.raises(ValidationError, match="at least one axis"):
        combinations({})


def test_default_concurrency_of_each_target() -> None:
    assert deployment_concurrency(3, 1) == 6 and deployment_concurrency(3, 0) == 3
    assert deployment_concurrency(None, None) == 1
    assert cloud_concurrency() == 2 and cloud_concurrency("Pro") == 6


def test_labels_use_input_names_unless_two_share_one() -> None:
    assert short_label({"seed": 1, "Positive Prompt.text": "a"}) == "seed=1 text=a"
    assert short_label({"6.text": "a", "7.text": "b"}) == "6.text=a 7.text=b"
    assert short_label({"text": "x" * 50}) == f"text={'x' * 39}…"


async def test_every_combination_once_over_the_base_with_bounded_concurrency() -> None:
    server = Server(instant=False)
    sweep = start_sweep(server.submit, {"seed": [1, 2, 3], "Positive Prompt.text": ["a", "b"]},
                        base={"KSampler": {"steps": 4}}, workflow=WORKFLOW, concurrency=2)
    await until(lambda: len(server.submitted) == 2)
    await asyncio.sleep(0.01)
    assert len(server.submitted) == 2  # no free slot, no submit
    while not sweep.done:
        for backend in server.backends:
            backend.release.set()
        await asyncio.sleep(0)
    cells = await sweep.result()
    assert server.peak == 2 and len(server.submitted) == 6
    assert server.submitted[0] == {"31": {"inputs": {"steps": 4, "seed": 1}}, "6": {"inputs": {"text": "a"}}}
    assert [c.coords for c in cells] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert sweep.counts["succeeded"] == 6 and sweep.eta == 0.0


async def test_each_cell_has_its_own_place_in_the_grid_even_for_a_repeated_value() -> None:
    server = Server()
    sweep = start_sweep(server.submit, {"seed": [5, 5], "Positive Prompt.text": ["a", "b", "a"]},
                        workflow=WORKFLOW, concurrency=2)
    cells = await sweep.result()
    assert [c.coords for c in cells] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert len(server.submitted) == 6


async def test_once_all_are_submitted_the_jobs_in_flight_are_expedited() -> None:
    server = Server(instant=False)
    sweep = start_sweep(server.submit, {"seed": [1, 2, 3, 4]}, workflow=WORKFLOW, concurrency=2)
    await until(lambda: len(server.backends) == 2)
    server.backends[0].release.set()
    await until(lambda: len(server.backends) == 3)
    assert not any(b.expedited for b in server.backends)  # one combination still to submit
    server.backends[1].release.set()
    await until(lambda: len(server.backends) == 4 and server.backends[3].expedited)
    assert [b.expedited for b in server.backends] == [False, False, True, True]
    for backend in server.backends:
        backend.release.set()
    assert (await sweep.wait(30))["succeeded"] == 4


async def test_a_failed_job_or_submit_fails_its_cell_only_and_is_never_resent() -> None:
    server = Server(failing=(2,))
    server.refuse, server.invalid = {3}, {4}
    sweep = start_sweep(server.submit, {"seed": [1, 2, 3, 4, 5]}, workflow=WORKFLOW, concurrency=2)
    cells = await sweep.result()
    assert [c.state for c in cells] == ["succeeded", "failed", "failed", "failed", "succeeded"]
    assert cells[3].error == "not sent: Node 31 (KSampler): 'seed' must be an INT"
    assert "out of memory" in cells[1].error
    assert "submit failed, not retried" in cells[2].error and "the reply was lost" in cells[2].error
    assert len(server.submitted) == 5


async def test_cancel_stops_pending_and_cancels_running() -> None:
    server = Server(instant=False)
    sweep = start_sweep(server.submit, {"31.seed": list(range(10))}, concurrency=3)
    seen: list[str] = []
    sweep.subscribe(lambda _s, cell: seen.append(cell.state))
    await until(lambda: server.running == 3)
    counts = await sweep.cancel()
    assert counts["cancelled"] == 10 and len(server.submitted) == 3
    assert all(b.cancelled for b in server.backends) and sweep.done
    assert "cancelled" in seen


async def test_an_interrupted_wait_cancels_the_sweep_unless_told_not_to() -> None:
    server = Server(instant=False)
    kept = start_sweep(server.submit, {"31.seed": [1, 2, 3]}, concurrency=1)
    waiting = asyncio.create_task(kept.result(cancel_on_interrupt=False))
    await until(lambda: server.running == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert kept.counts["pending"] == 2 and not server.backends[0].cancelled
    await kept.cancel()

    sweep = start_sweep(server.submit, {"31.seed": [1, 2, 3]}, concurrency=1)
    waiting = asyncio.create_task(sweep.result())
    await until(lambda: server.running == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert sweep.done and sweep.counts["cancelled"] == 3 and server.backends[-1].cancelled


async def test_eta_from_finished_durations() -> None:
    server = Server(instant=False)
    sweep = start_sweep(server.submit, {"31.seed": [1, 2, 3, 4, 5]}, concurrency=1)
    assert sweep.eta is None
    await until(lambda: server.backends)
    server.backends[0].release.set()
    await until(lambda: len(server.backends) == 2)
    assert sweep.eta is not None and sweep.eta >= 0
    await sweep.cancel()


async def test_save_names_outputs_by_their_parameters(tmp_path: Path) -> None:
    server = Server()
    sweep = start_sweep(server.submit, {"seed": [1, 1], "Positive Prompt.text": ["a/b"]},
                        workflow=WORKFLOW, concurrency=4)
    await sweep.wait()
    paths = await sweep.save(tmp_path)
    assert sorted(p.name for p in paths) == ["seed_1 text_a_b_ComfyUI_00001_ (1).png",
                                             "seed_1 text_a_b_ComfyUI_00001_.png"]


class Queuer:
    def __init__(self) -> None:
        self.server = Server()
        self.workflows: list[Workflow] = []

    async def queue(self, workflow: Workflow, **options: Any) -> Job:
        self.workflows.append(workflow)
        self.options = options
        return await self.server.submit({})


async def test_workflow_sweep_queues_the_overridden_workflow() -> None:
    client = Queuer()
    sweep = workflow_sweep(client.queue, WORKFLOW, {"seed": [5, 6]},
                           base={"Positive Prompt": {"text": "dog"}}, options={"partner_key": True})
    await sweep.wait()
    assert client.options == {"validate": True, "partner_key": True}
    assert [w.data["31"]["inputs"]["seed"] for w in client.workflows] == [5, 6]
    assert client.workflows[0].data["6"]["inputs"]["text"] == "dog"
    with pytest.raises(ValidationError, match="has no input 'sede'"):
        workflow_sweep(client.queue, WORKFLOW, {"KSampler.sede": [1]})


def test_sweep_needs_a_positive_concurrency() -> None:
    async def go() -> Sweep:
        return start_sweep(Server().submit, {"31.seed": [1]}, concurrency=0)

    with pytest.raises(ValidationError, match="at least 1"):
        asyncio.run(go())


# --- the magic's --sweep options ------------------------------------------------------------


def test_sweep_options_are_taken_out_of_a_magic_line() -> None:
    from runcomfy_nb.magics.sweeps import take_sweeps

    line = ('dep-1 --sweep seed=1,2,3,4 --out r --sweep "Positive Prompt.text"="a, b","c" --zip '
            "--concurrency 3")
    rest, options = take_sweeps(line)
    assert rest == "dep-1 --out r"
    assert options is not None and options.zip and options.concurrency == 3
    assert options.axes == {"seed": [1, 2, 3, 4], "Positive Prompt.text": ["a, b", "c"]}
    assert take_sweeps("dep-1 --out r") == ("dep-1 --out r", None)


def test_sweep_values_ranges_numbers_json_and_text() -> None:
    from runcomfy_nb.magics.sweeps import parse_sweep

    assert parse_sweep("seed=1..4") == ("seed", [1, 2, 3, 4])
    assert parse_sweep("KSampler.cfg=4.5,7,true,null,[1,2]") == ("KSampler.cfg", [4.5, 7, True, None, [1, 2]])
    assert parse_sweep("sampler_name=euler,'dpm, 2m'") == ("sampler_name", ["euler", "dpm, 2m"])
    assert parse_sweep('text="say \\"hi\\""') == ("text", ['say "hi"'])


@pytest.mark.parametrize("line, message", [
    ("dep --sweep seed", "KEY=VALUE"),
    ("dep --sweep seed=", "KEY=VALUE"),
    ('dep --sweep text="a', "not closed"),
    ("dep --zip", "go with --sweep"),
    ("dep --sweep seed=1 --concurrency 0", "at least 1"),
    ("dep --sweep seed=1 --sweep seed=2", "given twice"),
    ("dep --sweep seed=1..999999", "more than"),
])
def test_bad_sweep_options_are_refused(line: str, message: str) -> None:
    from runcomfy_nb.magics.sweeps import take_sweeps

    with pytest.raises(ValidationError, match=message):
        take_sweeps(line)
