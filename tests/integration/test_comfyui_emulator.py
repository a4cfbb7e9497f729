"""AsyncComfyUI against the emulator's ComfyUI backend behind an emulated RunComfy machine.

One module-wide emulator (fast virtual clock, no Server API rate limit) and one machine, launched
with the real Server API client and waited on until Ready; each test gets its own `AsyncComfyUI`
on the machine's `main_service_url`. Everything runs on real sockets (HTTP and the WebSocket).
"""

from __future__ import annotations

import copy
import io
import logging
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

import runcomfy_nb as rc
from runcomfy_nb.clients.comfyui import AsyncComfyUI, SocketRun, UploadedFile
from runcomfy_nb.clients.machines import Machine
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.app import load_config
from runcomfy_nb.errors import (
    BadRequest,
    JobCancelled,
    JobFailed,
    NotFound,
    RunComfyError,
    TransportError,
    ValidationError,
)
from runcomfy_nb.events import Event, Failed, Finished, NodeStarted, Output, Preview, Progress, Queued
from runcomfy_nb.jobs import Job
from runcomfy_nb.media import Media
from runcomfy_nb.status import Status

from ..helpers import TOKEN, downloaded, until

SPEED = 50.0  # a sampler step (0.5 virtual s) takes 10 ms
LONG = 2000  # steps of a prompt that keeps the machine busy until it is cancelled
# The image preset (deployments.json) runs its nodes in this order; titles from its `_meta`.
RUN_ORDER = [("4", "Load Checkpoint"), ("6", "CLIP Text Encode (Positive Prompt)"),
             ("7", "CLIP Text Encode (Negative Prompt)"), ("5", "Empty Latent Image"),
             ("31", "KSampler"), ("8", "VAE Decode"), ("9", "Save Image")]


# --- the machine ---------------------------------------------------------------------------------


@dataclass
class Launched:
    handle: Machine
    server_id: str
    url: str  # emu.comfy_url(server_id): the secret
    base: dict[str, Any]  # the API-format workflow of its workflow version


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    config = load_config(None)
    config["machines"].update(rate_per_second=0, ready_seconds=1, deleting_seconds=1)
    with Emulator(speed=SPEED, token=TOKEN, config=config) as emulator:
        yield emulator


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def machine(emu: Emulator) -> AsyncIterator[Launched]:
    version = next(w["version_id"] for w in load_config(None)["workflows"] if w["preset"] == "image")
    async with rc.AsyncRunComfy(token=TOKEN, base_url=emu.url, user_id=emu.user_id) as client:
        launched = await client.machines.launch(version, server_type="large", duration="1h")
        info = await launched.wait_ready(timeout=15, poll=0.05)
        assert info.state == "ready" and info.url is not None
        url = emu.comfy_url(launched.id)
        assert url is not None and info.url.get() == url
        yield Launched(launched, launched.id, url, emu.machine_workflow(version))
        await launched.stop()


@pytest.fixture(autouse=True)
def _quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SocketRun, "IDLE_CHECK", 2.0)
    monkeypatch.setattr(SocketRun, "POLL_INTERVAL", 0.2)


async def idle(comfy: AsyncComfyUI, timeout: float = 10.0) -> None:
    async def is_idle() -> bool:
        status = await comfy.queue_status()
        return not status.running and not status.pending

    await until(is_idle, timeout, "the machine to go idle")


@pytest.fixture
async def comfy(emu: Emulator, machine: Launched) -> AsyncIterator[AsyncComfyUI]:
    emu.clear_faults()
    client = machine.handle.comfyui()
    assert isinstance(client, AsyncComfyUI)
    await idle(client)
    try:
        yield client
    finally:
        emu.clear_faults()
        status = await client.queue_status()  # leave the shared machine idle for the next test
        if status.pending:
            await client.delete_pending(status.pending)
        if status.running:
            await client.interrupt()
        await idle(client)
        await client.aclose()


# --- helpers -------------------------------------------------------------------------------------


def prompt(machine: Launched, *, steps: int = 4, seed: int | None = None,
           prefix: str | None = None) -> dict[str, Any]:
    """The machine's workflow with a fresh seed (so the sampler runs) and its own file prefix."""
    wf = copy.deepcopy(machine.base)
    wf["31"]["inputs"].update(steps=steps, seed=seed if seed is not None else uuid.uuid4().int % 10**12)
    wf["9"]["inputs"]["filename_prefix"] = prefix or f"t{uuid.uuid4().hex[:8]}"
    return wf


Seen = list[tuple[Event, int, int]]


def record(job: Job) -> Seen:
    """Every event with the job's node counts at the moment it was emitted."""
    seen: Seen = []
    job.subscribe(lambda j, e: seen.append((e, j.nodes_done, j.nodes_total or 0)))
    return seen


def of(seen: Seen, kind: type) -> list[Any]:
    return [e for e, _, _ in seen if isinstance(e, kind)]


def kinds(seen: Seen) -> list[str]:
    """Event type names, without the Queued ones a prompt may get before it starts."""
    names = [type(e).__name__ for e, _, _ in seen]
    while names and names[0] == "Queued":
        names.pop(0)
    return names


def requests(emu: Emulator, machine: Launched, since: int, method: str, path: str) -> list[Any]:
    """The machine's requests for `path` (e.g. "/ws") received after log index `since`."""
    full = f"/machines/{machine.server_id}{path}"
    return [r for r in emu.log[since:] if r.method == method and r.path == full]


def png(color: tuple[int, int, int], size: int = 16) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, "PNG")
    return out.getvalue()


def expected_files(wf: dict[str, Any]) -> list[str]:
    prefix = wf["9"]["inputs"]["filename_prefix"]
    batch = wf["5"]["inputs"]["batch_size"]
    return [f"{prefix}_{n:05}_.png" for n in range(1, batch + 1)]


# --- a run, live ---------------------------------------------------------------------------------


async def test_events_in_order_titles_progress_previews_and_node_counts(
        comfy: AsyncComfyUI, machine: Launched) -> None:
    await comfy.free()  # nothing cached from earlier tests: every node runs
    steps = 5
    wf = prompt(machine, steps=steps)
    job = await comfy.queue(wf)
    seen = record(job)
    assert (job.kind, job.nodes_done, job.nodes_total) == ("comfyui", 0, 7)
    result = await job.result(timeout=10)
    assert job.status is Status.SUCCEEDED

    assert kinds(seen) == (["Started"] + ["NodeStarted"] * 5 + ["Progress", "Preview"] * steps
                           + ["NodeStarted"] * 2 + ["Output"] * 2 + ["Finished"]), kinds(seen)
    assert [(e.node, e.title) for e in of(seen, NodeStarted)] == RUN_ORDER
    assert [e.title for e in of(seen, NodeStarted)] == [wf[n]["_meta"]["title"] for n, _ in RUN_ORDER]
    # each node starts with the ones before it done; all 7 are done at the end
    counts = [(e.node, done, total) for e, done, total in seen if isinstance(e, NodeStarted)]
    assert counts == [(node, i, 7) for i, (node, _) in enumerate(RUN_ORDER)]
    assert seen[-1][1:] == (7, 7) and (job.nodes_done, job.nodes_total) == (7, 7)
    assert job.progress == (steps, steps)

    progress = of(seen, Progress)
    assert [(p.node, p.value, p.max) for p in progress] == [("31", s, steps) for s in range(1, steps + 1)]
    previews = of(seen, Preview)
    assert len(previews) == steps
    for frame in previews:
        assert frame.mime == "image/jpeg" and frame.data[:2] == b"\xff\xd8"
        assert Image.open(io.BytesIO(frame.data)).format == "JPEG"

    outputs = of(seen, Output)
    assert [o.media for o in outputs] == result.media
    assert [m.filename for m in result.media] == expected_files(wf)
    assert {(m.kind, m.node, m.type, m.subfolder) for m in result.media} == {("image", "9", "output", "")}
    finished = seen[-1][0]
    assert isinstance(finished, Finished) and finished.result is result

    # The identical prompt again: every node is cached (done at once), the outputs are re-sent.
    again = await comfy.queue(wf)
    seen2 = record(again)
    cached = await again.result(timeout=10)
    assert kinds(seen2) == ["Started", "Output", "Output", "Finished"], kinds(seen2)
    assert [(done, total) for e, done, total in seen2 if isinstance(e, Output)] == [(7, 7), (7, 7)]
    assert [m.filename for m in cached.media] == expected_files(wf)
    assert (again.nodes_done, again.nodes_total) == (7, 7)

    # A new seed: loader, prompts and latent are cached and count as done before the sampler runs.
    third = await comfy.queue({**wf, "31": {**wf["31"], "inputs": {**wf["31"]["inputs"], "seed": 1}}})
    seen3 = record(third)
    await third.result(timeout=10)
    assert [(e.node, done) for e, done, _ in seen3 if isinstance(e, NodeStarted)] == [
        ("31", 4), ("8", 5), ("9", 6)]
    assert len(of(seen3, Progress)) == steps and seen3[-1][1:] == (7, 7)


async def test_outputs_download_as_png(comfy: AsyncComfyUI, machine: Launched, emu: Emulator,
                                       tmp_path: Path) -> None:
    wf = prompt(machine, steps=2)
    result = await (await comfy.queue(wf)).result(timeout=10)
    assert len(result.images) == 2
    mark = len(emu.log)
    first, second = result.media
    data = await first.read()
    picture = Image.open(io.BytesIO(data))
    assert picture.format == "PNG" and picture.size == (512, 512)
    path = await first.save(tmp_path)
    assert path == tmp_path / first.filename and downloaded(path) == data
    paths = await result.save(tmp_path / "all")
    assert [p.name for p in paths] == expected_files(wf)
    assert downloaded(paths[0]) == data and downloaded(paths[1]) == await second.read()
    assert downloaded(paths[1]) != data  # the batch's two images differ
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob(".*part"))
    views = requests(emu, machine, mark, "GET", "/view")
    assert len(views) == 5 and all(r.status == 200 and not r.has_authorization for r in views)
    missing = Media(url=comfy._link.view_url("gone.png"), filename="gone.png", kind="image",
                    _fetcher=first._fetcher)
    with pytest.raises(NotFound):
        await missing.read()


async def test_upload_renames_on_a_clash(comfy: AsyncComfyUI, machine: Launched, tmp_path: Path) -> None:
    stem = f"cat-{uuid.uuid4().hex[:6]}"
    name = f"{stem}.png"
    red, green, blue = png((255, 0, 0)), png((0, 255, 0)), png((0, 0, 255))
    first = await comfy.upload(red, filename=name)
    assert first == UploadedFile(name, "", "input") and str(first) == name
    assert await comfy.upload(red, filename=name) == first  # same content: the same file
    second = await comfy.upload(green, filename=name)
    assert second == UploadedFile(f"{stem} (1).png", "", "input") and second.ref == f"{stem} (1).png"
    assert (await comfy.upload(blue, filename=name)).name == f"{stem} (2).png"
    assert (await comfy.upload(green, filename=name)).name == f"{stem} (1).png"  # found again
    assert (await comfy.upload(blue, filename=name, overwrite=True)).name == name

    view = Media(url=comfy._link.view_url(f"{stem} (1).png", type="input"), filename="x.png", kind="image",
                 _fetcher=comfy._fetcher)
    assert await view.read() == green
    replaced = Media(url=comfy._link.view_url(name, type="input"), filename=name, kind="image",
                     _fetcher=comfy._fetcher)
    assert await replaced.read() == blue

    source = tmp_path / f"dog-{stem}.png"
    source.write_bytes(red)
    nested = await comfy.upload(source, subfolder="pets")
    assert (nested.name, nested.subfolder, nested.ref) == (source.name, "pets", f"pets/{source.name}")
    images = (await comfy.object_info("LoadImage", refresh=True))["input"]["required"]["image"][0]
    assert name in images and f"{stem} (1).png" in images and f"{stem} (2).png" in images

    with pytest.raises(ValidationError, match="filename"):
        await comfy.upload(b"x")
    with pytest.raises(BadRequest, match="subfolder") as info:
        await comfy.upload(red, filename="x.png", subfolder="../../etc")
    assert machine.url not in str(info.value)


# --- refusals ------------------------------------------------------------------------------------


async def test_each_prompt_refusal_is_a_validation_error_naming_node_and_input(
        comfy: AsyncComfyUI, machine: Launched, emu: Emulator) -> None:
    before = {e.prompt_id for e in await comfy.history()}
    mark = len(emu.log)

    async def refused(wf: dict[str, Any]) -> str:
        with pytest.raises(ValidationError) as info:
            await comfy.queue(wf, validate=False)  # the server's own refusals
        assert isinstance(info.value.detail, dict)  # type: ignore[attr-defined]
        return str(info.value)

    head = "The ComfyUI server rejected the prompt (Prompt outputs failed validation):\n"
    wf = prompt(machine)
    del wf["31"]["inputs"]["cfg"]
    assert await refused(wf) == head + "  - node 31 (KSampler), input 'cfg': Required input is missing: cfg"

    wf = prompt(machine)
    wf["31"]["inputs"]["sampler_name"] = "eulr"
    text = await refused(wf)
    assert text.startswith(head + "  - node 31 (KSampler), input 'sampler_name': Value not in list: "
                                  "sampler_name: 'eulr' not in"), text

    wf = prompt(machine)
    wf["31"]["inputs"]["steps"] = "twenty"
    text = await refused(wf)
    assert text.startswith(head + "  - node 31 (KSampler), input 'steps': Failed to convert an input "
                                  "value to a INT value: steps, twenty"), text

    wf = prompt(machine)
    wf["4"]["inputs"]["ckpt_name"] = "nope.safetensors"
    wf["31"]["inputs"]["steps"] = 0
    lines = (await refused(wf)).splitlines()[1:]
    assert len(lines) == 2, lines
    assert any(line.startswith("  - node 4 \"Load Checkpoint\" (CheckpointLoaderSimple), input "
                               "'ckpt_name': Value not in list") and "'nope.safetensors'" in line
               for line in lines), lines
    assert "  - node 31 (KSampler), input 'steps': Value 0 smaller than min of 1: steps" in lines

    wf = prompt(machine)
    wf["31"]["class_type"] = "KSamplerTurbo"
    assert await refused(wf) == ("The ComfyUI server rejected the prompt (Cannot execute because node "
                                 "KSamplerTurbo does not exist: Node ID '#31').")

    wf = prompt(machine)
    del wf["9"]
    assert await refused(wf) == "The ComfyUI server rejected the prompt (Prompt has no outputs)."

    posts = requests(emu, machine, mark, "POST", "/prompt")
    assert len(posts) == 6 and {r.status for r in posts} == {400}
    with pytest.raises(ValidationError, match="API format"):  # caught before anything is sent
        await comfy.queue({"nodes": [], "links": [], "last_node_id": 0})
    assert len(requests(emu, machine, mark, "POST", "/prompt")) == 6
    assert {e.prompt_id for e in await comfy.history()} == before  # nothing ran
    assert not comfy._runs  # the sockets opened for the refused prompts were let go


# --- failures ------------------------------------------------------------------------------------


async def test_node_raises_fails_the_job_with_type_and_message(
        comfy: AsyncComfyUI, machine: Launched, emu: Emulator) -> None:
    emu.set_fault(machine.server_id, "node_raises", node="8", exception_type="torch.OutOfMemoryError",
                  message="Allocation on device failed")
    job = await comfy.queue(prompt(machine))
    seen = record(job)
    with pytest.raises(JobFailed) as info:
        await job.result(timeout=10)
    text = str(info.value)
    assert text == ('The ComfyUI run failed at node 8 "VAE Decode" (VAEDecode): '
                    "torch.OutOfMemoryError: Allocation on device failed"), text
    assert job.status is Status.FAILED and info.value.job_id == job.id and job.error is info.value
    assert info.value.detail["traceback"] and info.value.detail["node_id"] == "8"
    assert isinstance(seen[-1][0], Failed) and not of(seen, Output)
    entry = await comfy.history(job.id)
    assert entry is not None and entry.status is Status.FAILED and entry.error == text

    # the default: the sampler raises mid-run
    emu.set_fault(machine.server_id, "node_raises", at_step=2)
    job = await comfy.queue(prompt(machine, steps=6))
    seen = record(job)
    with pytest.raises(JobFailed, match=r"^The ComfyUI run failed at node 31 \(KSampler\): RuntimeError: "
                                        r"mat1 and mat2 shapes cannot be multiplied"):
        await job.result(timeout=10)
    assert [p.value for p in of(seen, Progress)] == [1]


async def test_ws_drop_reconnects_and_the_job_succeeds(
        comfy: AsyncComfyUI, machine: Launched, emu: Emulator) -> None:
    emu.set_fault(machine.server_id, "ws_drop", at_step=3)
    mark = len(emu.log)
    wf = prompt(machine, steps=10)
    job = await comfy.queue(wf)
    seen = record(job)
    result = await job.result(timeout=10)
    assert job.status is Status.SUCCEEDED
    assert [m.filename for m in result.media] == expected_files(wf)
    assert Image.open(io.BytesIO(await result.media[0].read())).format == "PNG"
    assert [o.media for o in of(seen, Output)] == result.media
    assert seen[-1][1:] == (7, 7)
    sockets = [r.query.get("clientId") for r in requests(emu, machine, mark, "GET", "/ws")]
    assert len(sockets) >= 2 and len(set(sockets)) == 1, sockets  # reconnected with its own client id
    values = [p.value for p in of(seen, Progress)]
    assert values == sorted(values) and values[0] == 1 and values[-1] == 10, values  # live again


async def test_ws_drop_without_reconnect_is_reconciled_from_history(
        comfy: AsyncComfyUI, machine: Launched, emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SocketRun, "MAX_DROPS", 0)  # the first drop: follow by polling only
    emu.set_fault(machine.server_id, "ws_drop", at_step=3)
    mark = len(emu.log)
    wf = prompt(machine, steps=10)
    job = await comfy.queue(wf)
    seen = record(job)
    result = await job.result(timeout=10)
    assert job.status is Status.SUCCEEDED
    assert [m.filename for m in result.media] == expected_files(wf)
    assert [o.media for o in of(seen, Output)] == result.media  # emitted though never sent live
    assert max(p.value for p in of(seen, Progress)) < 10
    assert seen[-1][1:] == (7, 7) and isinstance(seen[-1][0], Finished)
    assert len(requests(emu, machine, mark, "GET", "/ws")) == 1
    assert requests(emu, machine, mark, "GET", f"/history/{job.id}")

    # a failure after the drop is read from the history too
    emu.set_fault(machine.server_id, "ws_drop", at_step=2)
    emu.set_fault(machine.server_id, "node_raises", node="8", exception_type="torch.OutOfMemoryError",
                  message="Allocation on device failed")
    failing = await comfy.queue(prompt(machine, steps=6))
    with pytest.raises(JobFailed, match=r'node 8 "VAE Decode" \(VAEDecode\): torch.OutOfMemoryError: '
                                        "Allocation on device failed"):
        await failing.result(timeout=10)


# --- cancel --------------------------------------------------------------------------------------


async def test_ws_handshakes_answered_429_are_retried_and_progress_is_live(
        comfy: AsyncComfyUI, machine: Launched, emu: Emulator) -> None:
    emu.set_fault(machine.server_id, "ws_refused", count=2, retry_after=0)
    mark = len(emu.log)
    job = await comfy.queue(prompt(machine, steps=6))
    seen = record(job)
    await job.result(timeout=10)
    assert [r.status for r in requests(emu, machine, mark, "GET", "/ws")] == [429, 429, 101]
    values = [p.value for p in of(seen, Progress)]
    assert values and values == sorted(values) and values[0] == 1 and values[-1] == 6, values


async def test_cancel_pending_then_running(comfy: AsyncComfyUI, machine: Launched, emu: Emulator) -> None:
    first = await comfy.queue(prompt(machine, steps=LONG))
    seen = record(first)
    await until(lambda: bool(of(seen, Progress)), what="the first prompt sampling")
    second = await comfy.queue(prompt(machine))
    await until(lambda: second.position == 1, what="the second prompt queued behind the first")
    assert isinstance(second.history[0], Queued) and second.status is Status.QUEUED
    status = await comfy.queue_status()
    assert status.running == (first.id,) and status.pending == (second.id,)
    assert status.position(second.id) == 1 and second.id in status

    mark = len(emu.log)
    assert await second.cancel() is True
    assert second.status is Status.CANCELLED and isinstance(second.error, JobCancelled)
    with pytest.raises(JobCancelled):
        await second.result()
    assert len(requests(emu, machine, mark, "POST", "/queue")) == 1
    assert requests(emu, machine, mark, "POST", "/interrupt") == []
    assert second.id not in await comfy.queue_status()
    assert first.status is Status.RUNNING  # untouched

    mark = len(emu.log)
    assert await first.cancel() is True
    assert first.status is Status.CANCELLED and isinstance(first.error, JobCancelled)
    assert len(requests(emu, machine, mark, "POST", "/interrupt")) == 1
    assert requests(emu, machine, mark, "POST", "/queue") == []
    assert 0 < len(of(seen, Progress)) < LONG
    entry = await comfy.history(first.id)
    assert entry is not None and entry.status is Status.CANCELLED and entry.media == []
    assert await comfy.history(second.id) is None  # removed before it ran: never in the history
    assert second.id not in {e.prompt_id for e in await comfy.history()}
    assert await first.cancel() is True  # already cancelled: nothing more is sent
    assert len(requests(emu, machine, mark, "POST", "/interrupt")) == 1


async def test_attach_follows_a_prompt_queued_earlier(
        comfy: AsyncComfyUI, machine: Launched, emu: Emulator) -> None:
    blocker = await comfy.queue(prompt(machine, steps=LONG))
    await until(lambda: blocker.status is Status.RUNNING, what="the blocker running")
    wf = prompt(machine, steps=3)
    job = await comfy.queue(wf)
    await until(lambda: job.position == 1, what="the prompt queued")
    job.detach()  # as after a kernel restart: the prompt waits on the server
    mark = len(emu.log)
    attached = await comfy.attach(job.id)
    seen = record(attached)
    assert attached.id == job.id and attached.nodes_total == 7
    assert await blocker.cancel() is True
    result = await attached.result(timeout=10)
    assert [m.filename for m in result.media] == expected_files(wf)
    titles = [e.title for e in of(seen, NodeStarted)]
    assert titles[-3:] == ["KSampler", "VAE Decode", "Save Image"]  # the titles of the queued workflow
    sockets = [r.query.get("clientId", "") for r in requests(emu, machine, mark, "GET", "/ws")]
    assert len(sockets) == 1 and sockets[0].startswith("rcnb-")  # took over its own client id
    finished = await comfy.attach(job.id)  # already done: straight from the history
    assert (await finished.result(timeout=5)).media == result.media
    with pytest.raises(NotFound):
        await comfy.attach("no-such-prompt")


# --- plain calls ---------------------------------------------------------------------------------


async def test_info_queue_history_and_control_calls(
        comfy: AsyncComfyUI, machine: Launched, emu: Emulator) -> None:
    stats = await comfy.system_stats()
    assert stats.comfyui_version == "0.3.64" and stats.pytorch_version.startswith("2.")
    assert stats.devices[0].type == "cuda" and "A10G" in stats.devices[0].name  # a "large" machine
    assert stats.devices[0].vram_total == 24 * 1024**3

    mark = len(emu.log)
    info = await comfy.object_info(refresh=True)
    assert {"KSampler", "CheckpointLoaderSimple", "SaveImage", "LoadImage"} <= set(info)
    assert await comfy.object_info() is info  # cached per server
    assert "euler" in (await comfy.object_info("KSampler"))["input"]["required"]["sampler_name"][0]
    assert len(requests(emu, machine, mark, "GET", "/object_info")) == 1
    assert requests(emu, machine, mark, "GET", "/object_info/KSampler") == []
    schema = await comfy.object_info("CheckpointLoaderSimple", refresh=True)
    assert "flux1-dev-fp8.safetensors" in schema["input"]["required"]["ckpt_name"][0]
    assert len(requests(emu, machine, mark, "GET", "/object_info/CheckpointLoaderSimple")) == 1
    with pytest.raises(ValidationError, match="no node class 'Nope'"):
        await comfy.object_info("Nope", refresh=True)

    # free: the cache is dropped, so the same prompt runs every node again
    wf = prompt(machine, steps=2)
    done = await comfy.queue(wf)
    await done.result(timeout=10)
    mark = len(emu.log)
    await comfy.free()
    assert [r.status for r in requests(emu, machine, mark, "POST", "/free")] == [200]
    rerun = await comfy.queue(wf)
    seen = record(rerun)
    await rerun.result(timeout=10)
    assert [e.node for e in of(seen, NodeStarted)] == [n for n, _ in RUN_ORDER]

    await comfy.interrupt()  # nothing running: harmless
    await comfy.interrupt("not-running")
    assert [r.status for r in requests(emu, machine, mark, "POST", "/interrupt")] == [200, 200]

    status = await comfy.queue_status()
    assert status.running == () and status.pending == () and status.position(done.id) is None

    entries = await comfy.history()
    ids = [e.prompt_id for e in entries]
    assert ids[-2:] == [done.id, rerun.id]  # oldest first
    assert [e.prompt_id for e in await comfy.history(max_items=1)] == [rerun.id]
    entry = await comfy.history(rerun.id)
    assert entry is not None and entry.status is Status.SUCCEEDED and entry.error is None
    assert [m.filename for m in entry.media] == [m.filename for m in entry.result.media]
    assert entry.workflow["31"]["inputs"]["steps"] == 2 and entry.result.job_id == rerun.id
    assert await comfy.history("unknown") is None


# --- the machine URL is a secret ---------------------------------------------------------------------


async def test_machine_url_never_in_reprs_messages_or_logs(
        comfy: AsyncComfyUI, machine: Launched, emu: Emulator, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = (machine.url, f"machines/{machine.server_id}")
    shown: list[str] = [repr(comfy), str(comfy)]
    errors: list[BaseException] = []

    job = await comfy.queue(prompt(machine, steps=2))
    result = await job.result(timeout=10)
    shown += [repr(job), repr(result), *map(repr, result.media), *map(repr, job.history),
              repr(await comfy.history(job.id)), repr(await comfy.history()),
              repr(await comfy.queue_status()), repr(await comfy.system_stats()),
              repr(result.media[0]._fetcher), repr(machine.handle), repr(machine.handle.info)]

    wf = prompt(machine)
    wf["31"]["inputs"]["sampler_name"] = "eulr"
    with pytest.raises(ValidationError) as rejected:
        await comfy.queue(wf)
    errors.append(rejected.value)

    emu.set_fault(machine.server_id, "node_raises")
    failed = await comfy.queue(prompt(machine))
    with pytest.raises(JobFailed) as failure:
        await failed.result(timeout=10)
    errors.append(failure.value)

    long = await comfy.queue(prompt(machine, steps=LONG))
    await until(lambda: long.status is Status.RUNNING, what="the long prompt running")
    await long.cancel()
    with pytest.raises(JobCancelled) as cancelled:
        await long.result()
    errors.append(cancelled.value)

    monkeypatch.setattr(SocketRun, "MAX_DROPS", 0)  # logs the fallback to polling
    emu.set_fault(machine.server_id, "ws_drop", at_step=1)
    await (await comfy.queue(prompt(machine, steps=3))).result(timeout=10)

    with pytest.raises(ValidationError) as unknown_class:
        await comfy.object_info("NoSuchNode", refresh=True)
    errors.append(unknown_class.value)
    missing = Media(url=comfy._link.view_url("gone.png"), filename="gone.png", kind="image",
                    _fetcher=result.media[0]._fetcher)
    with pytest.raises(NotFound) as not_found:
        await missing.read()
    errors.append(not_found.value)
    with pytest.raises(NotFound) as no_prompt:
        await comfy.attach("no-such-prompt")
    errors.append(no_prompt.value)
    with pytest.raises(BadRequest) as bad_upload:
        await comfy.upload(b"x", filename="x.png", subfolder="../../etc")
    errors.append(bad_upload.value)

    # a machine that is gone (the emulator answers 404), and one whose host does not answer
    gone_url = f"{emu.url}/machines/{machine.server_id}-gone"
    async with AsyncComfyUI(gone_url) as gone:
        shown.append(repr(gone))
        with pytest.raises(RunComfyError) as gone_error:
            await gone.queue(prompt(machine))
        errors.append(gone_error.value)
    async with AsyncComfyUI(f"http://127.0.0.1:9/machines/{machine.server_id}") as dead:
        with pytest.raises(TransportError) as unreachable:
            await dead.system_stats()
        errors.append(unreachable.value)
    with pytest.raises(ValidationError) as not_a_url:
        AsyncComfyUI(f"ftp://127.0.0.1/machines/{machine.server_id}")
    errors.append(not_a_url.value)

    for error in errors:
        shown += [str(error), repr(error), "".join(traceback.format_exception(error))]
    leaks = [text for text in shown if any(s in text for s in secrets)]
    assert leaks == []
    logged = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore", "aiohttp"))]
    assert any(r.name == "runcomfy_nb" and "polling" in r.getMessage() for r in logged)
    assert [r.getMessage() for r in logged if any(s in r.getMessage() for s in secrets)] == []
    assert emu.leaks == []  # no credentials were ever sent to the machine
