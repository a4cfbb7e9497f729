"""Sweeps against the emulator: 12 jobs with concurrency 4 (never more in flight on the server),
the grid of the view filling as jobs finish, a failure in one cell, Cancel leaving nothing queued
or running, outputs saved labelled and without collisions; the ComfyUI sweep by a direct call."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.app import load_config
from runcomfy_nb.sweep import COMFYUI_CONCURRENCY, cloud_concurrency, workflow_sweep
from runcomfy_nb.widgets import SweepView

from ..helpers import TOKEN, image_workflow, posts, until

SEEDS = list(range(1, 7))
PROMPTS = ["a red fox", "a blue owl"]


def sweep_deployment(emu: Emulator, **config: object) -> str:
    deployment = f"dep-test-sweep-{uuid.uuid4().hex[:6]}"
    emu.add_deployment({"id": deployment, "preset": "image", "run_seconds": 6, "instances": 8, **config})
    return deployment


def peak_in_flight(emu: Emulator, deployment: str) -> int:
    """The most requests the emulator held at once (submitted and not yet ended), by its records."""
    records = emu.requests_for(deployment)
    edges = sorted([(r.created, 1) for r in records]
                   + [(r.finished_wall or float("inf"), -1) for r in records])  # an end before a start
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


async def test_twelve_jobs_four_at_a_time_fill_the_grid(client: rc.AsyncRunComfy, fresh: Emulator,
                                                        tmp_path: Path) -> None:
    deployment = sweep_deployment(fresh)
    fresh.set_fault(deployment, "job_fails", count=1, message="CUDA out of memory")
    sweep = await client.sweep(deployment, {"KSampler": {"steps": 3}},
                               {"seed": SEEDS, "CLIP Text Encode (Positive Prompt).text": PROMPTS},
                               concurrency=4)
    view = SweepView(sweep)
    assert view.arrangement == "grid" and view.total == 12
    assert [a["values"] for a in view.axes] == [[str(s) for s in SEEDS], PROMPTS]
    seen_on_server = 0

    async def watch() -> None:
        nonlocal seen_on_server
        while True:
            seen_on_server = max(seen_on_server, sum(not r.done for r in fresh.requests_for(deployment)))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    filled = await until(lambda: [c["state"] for c in view.cells if c["thumb"]], timeout=30,
                         what="a first finished tile")
    assert 0 < len(filled) < 12  # the grid fills while the rest still run
    cells = await sweep.result()
    watcher.cancel()
    assert seen_on_server <= 4 and peak_in_flight(fresh, deployment) == 4
    assert len(fresh.requests_for(deployment)) == 12  # each combination submitted once
    assert sweep.counts["succeeded"] == 11 and sweep.counts["failed"] == 1
    failed = next(c for c in cells if c.state == "failed")
    assert failed.index == 0 and "CUDA out of memory" in failed.error
    await until(lambda: sum(bool(c["thumb"]) for c in view.cells) == 11, what="every finished tile")
    assert "CUDA out of memory" in view.cells[0]["error"] and view.counts["failed"] == 1
    bodies = [r.body["overrides"] for r in fresh.requests_for(deployment)]
    assert bodies[1] == {"31": {"inputs": {"steps": 3, "seed": 1}}, "6": {"inputs": {"text": "a blue owl"}}}
    assert "seed=1 text=a blue owl" in repr(view) and "<table" in view._html()

    paths = await sweep.save(tmp_path)
    names = sorted(p.name for p in paths)
    assert len(names) == len(set(names)) == 22  # two images a job
    assert all(p.parent == tmp_path and p.stat().st_size > 0 for p in paths)
    assert any(n.startswith("seed=1 text=a blue owl_".replace("=", "_")) for n in names)


async def test_cancel_leaves_nothing_queued_or_running(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    deployment = sweep_deployment(fresh, run_seconds=400, instances=2, queue_size=1)
    sweep = await client.sweep(deployment, None, {"seed": SEEDS, "31.cfg": [4.0, 7.0]})
    assert sweep.concurrency == 4  # two instances, and one waiting for each
    view = SweepView(sweep)
    await until(lambda: sum(r.status == "in_progress" for r in fresh.requests_for(deployment)) == 2)
    await until(lambda: len(fresh.requests_for(deployment)) == 4)
    view.request_cancel()
    await until(lambda: sweep.done, what="the cancelled sweep to end")
    records = fresh.requests_for(deployment)
    assert len(records) == 4 and {r.status for r in records} == {"cancelled"}
    assert sweep.counts["cancelled"] == 12
    await until(lambda: view.counts.get("cancelled") == 12 and not view.cancelling)


async def test_a_bare_name_two_nodes_share_is_refused_before_any_submit(client: rc.AsyncRunComfy,
                                                                       fresh: Emulator) -> None:
    deployment = sweep_deployment(fresh)
    try:
        await client.sweep(deployment, None, {"text": PROMPTS})
    except rc.ValidationError as exc:
        assert "2 nodes have it" in str(exc) and "(node 6)" in str(exc) and "(node 7)" in str(exc)
    else:
        raise AssertionError("an ambiguous axis was accepted")
    assert fresh.requests_for(deployment) == []


async def test_comfyui_and_cloud_sweeps_through_their_queues(fresh: Emulator) -> None:
    version = next(w["version_id"] for w in load_config(None)["workflows"] if w["preset"] == "image")
    async with rc.AsyncRunComfy(token=TOKEN, base_url=fresh.url, user_id=fresh.user_id) as client:
        machine = await client.machines.launch(version, server_type="large", duration="1h")
        try:
            await machine.wait_ready(timeout=30, poll=0.05)
            async with machine.comfyui() as comfy:
                sweep = workflow_sweep(comfy.queue, image_workflow(), {"seed": [11, 12, 13]},
                                       concurrency=COMFYUI_CONCURRENCY)
                cells = await sweep.result()
        finally:
            await machine.stop()
    assert [c.state for c in cells] == ["succeeded"] * 3 and all(c.result and c.result.images for c in cells)
    async with rc.AsyncComfyCloud(fresh.comfy_api_key, base_url=fresh.cloud_url) as cloud:
        sweep = workflow_sweep(cloud.queue, image_workflow(), {"seed": [1, 2]},
                               concurrency=cloud_concurrency())
        assert [c.state for c in await sweep.result()] == ["succeeded"] * 2


def test_run_sweep_of_a_magic_with_the_blocking_client(fresh: Emulator,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from runcomfy_nb.magics.sweeps import run_sweep, take_sweeps

    deployment = sweep_deployment(fresh)
    magics = SimpleNamespace(shell=SimpleNamespace(user_ns={}), auto_cancel=True)
    line, options = take_sweeps(f'{deployment} --sweep seed=1..3 --sweep "KSampler.cfg"=4,7.5 '
                                "--concurrency 3")
    assert line == deployment and options is not None
    with rc.RunComfy(token=TOKEN, base_url=fresh.url) as client:
        assert run_sweep(magics, lambda axes, **kw: client.sweep(deployment, None, axes, **kw), options,
                         out="grid") is None
        sweep = magics.shell.user_ns["grid"]
        assert sweep.counts["succeeded"] == 6 and sweep.concurrency == 3
        assert [c.label for c in sweep.cells][:2] == ["seed=1 cfg=4", "seed=1 cfg=7.5"]
    assert "SweepView" in capsys.readouterr().out


async def test_a_value_the_checks_refuse_stops_the_sweep_before_any_submit(client: rc.AsyncRunComfy,
                                                                          fresh: Emulator) -> None:
    deployment = sweep_deployment(fresh)
    with pytest.raises(rc.ValidationError, match=r"seed=2\.5: .*integer.*Nothing was sent"):
        await client.sweep(deployment, None, {"seed": [1, 2.5, 3]}, concurrency=3)
    assert posts(fresh, deployment) == 0  # every value is checked before the first submit
    sweep = await client.sweep(deployment, None, {"seed": [1, 2.5, 3]}, concurrency=3, validate=False)
    assert [c.state for c in await sweep.result()] == ["succeeded", "succeeded", "succeeded"]
