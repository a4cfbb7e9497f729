"""AsyncComfyUI against an independent ComfyUI double (tests/doubles), on real sockets."""

from __future__ import annotations

import copy
import io
import logging
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import runcomfy_nb as rc
from runcomfy_nb.clients.comfyui import AsyncComfyUI, SocketRun, UploadedFile
from runcomfy_nb.errors import JobCancelled, JobFailed, NotFound, TransportError, ValidationError
from runcomfy_nb.events import Event, Finished, NodeStarted, Output, Preview, Progress, Queued, Started
from runcomfy_nb.jobs import Job
from runcomfy_nb.media import Media
from runcomfy_nb.status import Status

from ..doubles.comfyui_double import ComfyDouble
from ..helpers import downloaded, until

SECRET = "secret-abc123"
WORKFLOW: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"},
          "_meta": {"title": "Load Checkpoint"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]},
          "_meta": {"title": "Positive Prompt"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]},
          "_meta": {"title": "Negative Prompt"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 7, "steps": 4, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]},
          "_meta": {"title": "Decode"}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "nb", "images": ["8", 0]},
          "_meta": {"title": "Save"}},
}
RUN_ORDER = [("4", "Load Checkpoint"), ("6", "Positive Prompt"), ("7", "Negative Prompt"),
             ("5", "EmptyLatentImage"), ("3", "KSampler"), ("8", "Decode"), ("9", "Save")]


def workflow(**ksampler: Any) -> rc.Workflow:
    return rc.Workflow(WORKFLOW).override(KSampler=ksampler) if ksampler else rc.Workflow(WORKFLOW)


@pytest.fixture(autouse=True)
def _quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SocketRun, "IDLE_CHECK", 2.0)
    monkeypatch.setattr(SocketRun, "POLL_INTERVAL", 0.3)


@pytest.fixture
async def double() -> AsyncIterator[ComfyDouble]:
    async with ComfyDouble(prefix=f"/{SECRET}") as d:
        yield d


@pytest.fixture
async def comfy(double: ComfyDouble) -> AsyncIterator[AsyncComfyUI]:
    assert SECRET in double.url
    async with AsyncComfyUI(double.url) as client:
        yield client


Seen = list[tuple[Event, int, int]]


def record(job: Job) -> Seen:
    """Every event with the job's node counts at the moment it was emitted."""
    seen: Seen = []
    job.subscribe(lambda j, e: seen.append((e, j.nodes_done, j.nodes_total)))  # type: ignore[attr-defined]
    return seen


def of(seen: Seen, kind: type) -> list[Any]:
    return [e for e, _, _ in seen if isinstance(e, kind)]


# --- a run, live ---------------------------------------------------------------------------------


async def test_events_in_order_with_titles_and_node_counts(comfy: AsyncComfyUI, double: ComfyDouble) -> None:
    job = await comfy.queue(workflow())
    seen = record(job)
    assert (job.kind, job.nodes_done, job.nodes_total) == ("comfyui", 0, 7)  # type: ignore[attr-defined]
    result = await job.result(timeout=10)
    assert job.status is Status.SUCCEEDED
    events = [e for e, _, _ in seen]
    assert isinstance(events[-1], Finished) and events[-1].result is result
    started = [(e.node, e.title) for e in of(seen, NodeStarted)]
    assert started == RUN_ORDER
    # Started comes first; each node's count shows the ones before it done; 7/7 at the end.
    first_node = next(i for i, e in enumerate(events) if isinstance(e, NodeStarted))
    assert any(isinstance(e, Started) for e in events[:first_node])
    counts = [(e.node, done) for e, done, _ in seen if isinstance(e, NodeStarted)]
    assert counts == [(node, i) for i, (node, _) in enumerate(RUN_ORDER)]
    assert seen[-1][1:] == (7, 7)
    # Progress and previews of the sampler sit between its start and the next node's.
    k_start = events.index(next(e for e in events if isinstance(e, NodeStarted) and e.node == "3"))
    k_end = events.index(next(e for e in events if isinstance(e, NodeStarted) and e.node == "8"))
    progress = of(seen, Progress)
    assert [(p.node, p.value, p.max) for p in progress] == [("3", s, 4) for s in range(1, 5)]
    assert all(k_start < events.index(p) < k_end for p in progress)
    previews = of(seen, Preview)
    assert len(previews) == 4 and all(p.mime == "image/jpeg" and p.data[:2] == b"\xff\xd8" for p in previews)
    assert double.flagged  # type 4 previews were asked for before anything else
    assert double.requests.index(("GET", "/ws")) < double.requests.index(("POST", "/prompt"))
    outputs = of(seen, Output)
    assert [o.media for o in outputs] == result.media
    media = result.media[0]
    assert (media.filename, media.kind, media.node, media.type) == ("nb_00001_.png", "image", "9", "output")
    assert events.index(outputs[0]) < len(events) - 1

    # Same workflow, new seed: loader, prompts and latent are cached and count as done.
    again = await comfy.queue(workflow(seed=8))
    seen2 = record(again)
    await again.result(timeout=10)
    assert [(e.node, done) for e, done, _ in seen2 if isinstance(e, NodeStarted)] == [
        ("3", 4), ("8", 5), ("9", 6)]
    assert seen2[-1][1:] == (7, 7)
    assert again.result and (await again.result()).media[0].filename == "nb_00002_.png"


async def test_type1_previews_are_attributed_to_the_running_prompt(comfy: AsyncComfyUI,
                                                                   double: ComfyDouble) -> None:
    double.metadata_previews = False  # an older server: type 1 frames, no prompt id in them
    job = await comfy.queue(workflow(steps=3))
    seen = record(job)
    await job.result(timeout=10)
    previews = of(seen, Preview)
    assert len(previews) == 3 and {p.mime for p in previews} == {"image/jpeg"}


async def test_outputs_download_via_view(comfy: AsyncComfyUI, double: ComfyDouble, tmp_path: Path) -> None:
    result = await (await comfy.queue(workflow())).result(timeout=10)
    media = result.media[0]
    stored = double.files[("output", "", "nb_00001_.png")]
    assert await media.read() == stored
    path = await media.save(tmp_path)
    assert path == tmp_path / "nb_00001_.png" and downloaded(path) == stored
    assert Image.open(io.BytesIO(stored)).format == "PNG"
    assert double.count("GET", "/view") == 2
    assert not list(tmp_path.glob(".*part"))
    missing = Media(url=comfy._link.view_url("gone.png"), filename="gone.png", kind="image",
                    _fetcher=media._fetcher)
    with pytest.raises(NotFound):
        await missing.read()


async def test_upload_renames_on_a_clash(comfy: AsyncComfyUI, double: ComfyDouble, tmp_path: Path) -> None:
    first = await comfy.upload(b"one", filename="cat.png")
    assert first == UploadedFile("cat.png", "", "input") and str(first) == "cat.png"
    assert await comfy.upload(b"one", filename="cat.png") == first  # same content, same name
    second = await comfy.upload(b"two", filename="cat.png")
    assert second.name == "cat (1).png"
    third = await comfy.upload(b"three", filename="cat.png")
    assert third.name == "cat (2).png"
    replaced = await comfy.upload(b"four", filename="cat.png", overwrite=True)
    assert replaced.name == "cat.png" and double.files[("input", "", "cat.png")] == b"four"
    source = tmp_path / "dog.png"
    source.write_bytes(b"dog")
    nested = await comfy.upload(source, subfolder="pets")
    assert (nested.name, nested.subfolder, nested.ref) == ("dog.png", "pets", "pets/dog.png")
    with pytest.raises(ValidationError, match="filename"):
        await comfy.upload(b"x")
    with pytest.raises(ValidationError, match="No file"):
        await comfy.upload(tmp_path / "nope.png")
    with pytest.raises(rc.BadRequest, match="subfolder") as info:
        await comfy.upload(b"x", filename="x.png", subfolder="../etc")
    assert SECRET not in str(info.value)


# --- refusals and failures -----------------------------------------------------------------------


async def test_rejected_prompt_is_one_readable_message(comfy: AsyncComfyUI, double: ComfyDouble) -> None:
    bad = copy.deepcopy(WORKFLOW)
    bad["3"]["inputs"].update(sampler_name="eulr", steps=0)
    bad["4"]["inputs"]["ckpt_name"] = "nope.safetensors"
    with pytest.raises(ValidationError) as info:
        await comfy.queue(bad, validate=False)  # the server's own refusal
    text = str(info.value)
    lines = [line for line in text.splitlines() if line.startswith("  - ")]
    assert text.startswith("The ComfyUI server rejected the prompt (Prompt outputs failed validation)")
    assert len(lines) == 3
    assert any("node 3 (KSampler), input 'sampler_name': Value not in list" in line and "'eulr'" in line
               for line in lines)
    assert any("node 3 (KSampler), input 'steps': Value 0 smaller than min of 1" in line for line in lines)
    assert any('node 4 "Load Checkpoint" (CheckpointLoaderSimple), input \'ckpt_name\'' in line
               for line in lines)
    assert not double.pending and not double.history
    await until(lambda: not double.sockets)  # the socket opened for it was closed

    unknown = {"1": {"class_type": "NopeNode", "inputs": {}}}
    with pytest.raises(ValidationError, match=r"node NopeNode does not exist.*Node ID '#1'"):
        await comfy.queue(unknown, validate=False)
    posted = double.count("POST", "/prompt")
    with pytest.raises(ValidationError, match="API format"):
        await comfy.queue({"nodes": [], "links": [], "last_node_id": 0})
    assert double.count("POST", "/prompt") == posted  # caught before anything was sent


async def test_execution_error_fails_the_job(comfy: AsyncComfyUI, double: ComfyDouble) -> None:
    double.fail_node = "8"
    job = await comfy.queue(workflow())
    with pytest.raises(JobFailed) as info:
        await job.result(timeout=10)
    text = str(info.value)
    assert 'node 8 "Decode" (VAEDecode)' in text
    assert "torch.OutOfMemoryError: Allocation on device failed" in text
    assert job.status is Status.FAILED and info.value.job_id == job.id
    assert info.value.detail["traceback"]


async def test_a_lost_submit_reply_is_found_not_resent(comfy: AsyncComfyUI, double: ComfyDouble) -> None:
    double.lose_prompt_reply = True
    job = await comfy.queue(workflow())
    result = await job.result(timeout=10)
    assert [m.filename for m in result.media] == ["nb_00001_.png"]
    assert double.count("POST", "/prompt") == 1 and len(double.history) == 1


# --- dropped sockets -----------------------------------------------------------------------------


async def test_socket_drop_reconnects_and_goes_on(comfy: AsyncComfyUI, double: ComfyDouble) -> None:
    double.step_delay, double.drop_at_step = 0.02, 2
    job = await comfy.queue(workflow(steps=6))
    seen = record(job)
    result = await job.result(timeout=10)
    assert [m.filename for m in result.media] == ["nb_00001_.png"]
    ours = [sid for sid in double.ws_connects if sid.startswith("rcnb-")]
    assert len(ours) >= 2 and len(set(ours)) == 1  # reconnected with the same client id
    assert [p.value for p in of(seen, Progress)][-1] == 6  # live events came back
    assert seen[-1][1:] == (7, 7)


async def test_socket_drop_without_reconnect_is_reconciled_from_history(
        comfy: AsyncComfyUI, double: ComfyDouble) -> None:
    double.step_delay, double.drop_at_step, double.refuse_ws_for = 0.02, 2, 30.0
    job = await comfy.queue(workflow(steps=6))
    seen = record(job)
    result = await job.result(timeout=10)
    assert job.status is Status.SUCCEEDED
    assert [m.filename for m in result.media] == ["nb_00001_.png"]
    assert await result.media[0].read() == double.files[("output", "", "nb_00001_.png")]
    assert [o.media for o in of(seen, Output)] == result.media  # emitted although never sent live
    assert max(p.value for p in of(seen, Progress)) < 6
    assert seen[-1][1:] == (7, 7)


async def test_socket_drop_then_error_is_reconciled_from_history(
        comfy: AsyncComfyUI, double: ComfyDouble) -> None:
    double.step_delay, double.drop_at_step, double.refuse_ws_for = 0.02, 2, 30.0
    double.fail_node = "8"
    job = await comfy.queue(workflow(steps=4))
    with pytest.raises(JobFailed, match=r'node 8 "Decode" \(VAEDecode\): torch.OutOfMemoryError'):
        await job.result(timeout=10)


# --- cancel ---------------------------------------------------------------------------------------


async def test_cancel_pending_deletes_it_from_the_queue(comfy: AsyncComfyUI, double: ComfyDouble) -> None:
    double.paused = True
    first = await comfy.queue(workflow())
    second = await comfy.queue(workflow(seed=2))
    await until(lambda: first.position == 0 and second.position == 1)
    assert isinstance(second.history[0], Queued)
    status = await comfy.queue_status()
    assert status.pending == (first.id, second.id) and status.running == ()
    assert await second.cancel() is True
    assert second.status is Status.CANCELLED and isinstance(second.error, JobCancelled)
    assert [p.prompt_id for p in double.pending] == [first.id]
    assert double.count("POST", "/queue") == 1 and second.id not in double.history
    with pytest.raises(JobCancelled):
        await second.result()
    double.paused = False
    assert (await first.result(timeout=10)).media


async def test_cancel_running_interrupts_it(comfy: AsyncComfyUI, double: ComfyDouble) -> None:
    double.step_delay = 0.1
    job = await comfy.queue(workflow(steps=40))
    seen = record(job)
    await until(lambda: bool(of(seen, Progress)))
    assert job.status is Status.RUNNING
    assert await job.cancel() is True
    assert job.status is Status.CANCELLED
    assert double.count("POST", "/interrupt") == 1 and double.count("POST", "/queue") == 0
    entry = await comfy.history(job.id)
    assert entry is not None and entry.status is Status.CANCELLED
    assert await job.cancel() is True  # already cancelled: nothing more is sent
    assert double.count("POST", "/interrupt") == 1


# --- the URL is a secret ---------------------------------------------------------------------------


async def test_base_url_never_in_reprs_messages_or_logs(comfy: AsyncComfyUI, double: ComfyDouble,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    shown: list[str] = [repr(comfy), str(comfy)]
    errors: list[BaseException] = []

    job = await comfy.queue(workflow())
    result = await job.result(timeout=10)
    shown += [repr(job), repr(result), repr(result.media[0]), *map(repr, job.history),
              repr(await comfy.history(job.id)), repr(await comfy.queue_status()),
              repr(await comfy.system_stats()), repr(result.media[0]._fetcher)]

    bad = copy.deepcopy(WORKFLOW)
    bad["3"]["inputs"]["sampler_name"] = "eulr"
    with pytest.raises(ValidationError) as rejected:
        await comfy.queue(bad)
    errors.append(rejected.value)
    double.fail_node = "8"
    failed = await comfy.queue(workflow(seed=3))
    with pytest.raises(JobFailed) as failure:
        await failed.result(timeout=10)
    errors.append(failure.value)
    with pytest.raises(ValidationError) as unknown_class:
        await comfy.object_info("NoSuchNode")
    errors.append(unknown_class.value)
    missing = Media(url=comfy._link.view_url("gone.png"), filename="gone.png", kind="image",
                    _fetcher=result.media[0]._fetcher)
    with pytest.raises(NotFound) as not_found:
        await missing.read()
    errors.append(not_found.value)
    with pytest.raises(NotFound) as no_prompt:
        await comfy.attach("no-such-prompt")
    errors.append(no_prompt.value)

    # A server that is gone: WebSocket and HTTP both fail.
    dead_url = double.url.replace(double.url.split("/")[2], "127.0.0.1:9")
    async with AsyncComfyUI(dead_url) as dead:
        shown.append(repr(dead))
        with pytest.raises(TransportError) as unreachable:
            await dead.queue(workflow())
        errors.append(unreachable.value)
    with pytest.raises(ValidationError) as not_a_url:
        AsyncComfyUI(f"ftp://host/{SECRET}/")
    errors.append(not_a_url.value)

    for error in errors:
        shown += [str(error), repr(error), "".join(traceback.format_exception(error))]
    leaks = [text for text in shown if SECRET in text]
    assert leaks == []
    # httpx logs each request's URL at INFO (the transport's concern); aiohttp is the double.
    logged = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore", "aiohttp"))]
    assert any(r.name == "runcomfy_nb" for r in logged)  # the polling fallback was logged...
    assert [r.getMessage() for r in logged if SECRET in r.getMessage()] == []  # ...without the URL


# --- plain calls ------------------------------------------------------------------------------------


async def test_info_queue_and_control_calls(comfy: AsyncComfyUI, double: ComfyDouble) -> None:
    stats = await comfy.system_stats()
    assert stats.comfyui_version == "0.3.64" and stats.devices[0].type == "cuda"
    info = await comfy.object_info()
    assert "KSampler" in info and await comfy.object_info() is info
    assert (await comfy.object_info("KSampler"))["input"]["required"]["sampler_name"][0][0] == "euler"
    assert double.count("GET", "/object_info") == 1 and double.count("GET", "/object_info/KSampler") == 0
    async with AsyncComfyUI(double.url.replace("127.0.0.1", "localhost")) as other:  # another cache key
        assert "seed" in (await other.object_info("KSampler"))["input"]["required"]
        assert double.count("GET", "/object_info/KSampler") == 1
        with pytest.raises(ValidationError, match="no node class 'Nope'"):
            await other.object_info("Nope")

    double.paused = True
    jobs = [await comfy.queue(workflow(seed=s)) for s in (1, 2, 3)]
    status = await comfy.queue_status()
    assert status.pending == tuple(j.id for j in jobs)  # sorted, though the server lists heap order
    assert status.position(jobs[2].id) == 2 and jobs[0].id in status
    await comfy.delete_pending([jobs[1].id])
    assert [p.prompt_id for p in double.pending] == [jobs[0].id, jobs[2].id]
    await until(lambda: jobs[1].done)
    assert jobs[1].status is Status.CANCELLED  # gone from the queue, absent from history
    await comfy.interrupt()
    await comfy.free()
    assert double.count("POST", "/interrupt") == 1 and double.count("POST", "/free") == 1
    double.paused = False
    for job in (jobs[0], jobs[2]):
        await job.result(timeout=10)
    entries = await comfy.history()
    assert [e.prompt_id for e in entries] == [jobs[0].id, jobs[2].id]
    assert all(e.status is Status.SUCCEEDED and e.media for e in entries)
    assert await comfy.history("unknown") is None


async def test_attach_follows_a_prompt_queued_earlier(comfy: AsyncComfyUI, double: ComfyDouble) -> None:
    double.paused = True
    job = await comfy.queue(workflow())
    job.detach()  # as after a kernel restart: the prompt waits on the server
    attached = await comfy.attach(job.id)
    seen = record(attached)
    double.paused = False
    result = await attached.result(timeout=10)
    assert [m.filename for m in result.media] == ["nb_00001_.png"]
    assert [e.title for e in of(seen, NodeStarted)][:2] == ["Load Checkpoint", "Positive Prompt"]
    assert double.ws_connects.count(double.ws_connects[-1]) == 2  # took over its own client id
    finished = await comfy.attach(job.id)  # already done: straight from the history
    assert (await finished.result(timeout=5)).media == result.media


def test_http_library_logs_carry_no_url(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import runcomfy_nb.transport  # noqa: F401  (installs the filters)

    with caplog.at_level(logging.DEBUG):
        logging.getLogger("httpx").info("HTTP Request: GET http://127.0.0.1:9/secret-xyz/queue")
        logging.getLogger("httpcore.connection").debug(
            "connect_tcp.started host='secret-xyz-comfyui.runcomfy.com' port=443")
    assert caplog.records and "secret-xyz" not in caplog.text
