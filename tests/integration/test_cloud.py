"""AsyncComfyCloud against the emulated Comfy Cloud (emulator/cloud.py), on real sockets."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import io
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import runcomfy_nb as rc
from runcomfy_nb.clients.cloud import AsyncComfyCloud
from runcomfy_nb.clients.comfyui import SocketRun
from runcomfy_nb.clients.comfyui import client as comfyui_client
from runcomfy_nb.config import Config
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.cloud import CLOUD_ERRORS, PARTNER_NODE
from runcomfy_nb.errors import (
    AuthError,
    BadRequest,
    JobCancelled,
    JobFailed,
    MissingCredentials,
    NotFound,
    PaymentRequired,
    RateLimited,
    ServerError,
    SubscriptionInactive,
    ValidationError,
)
from runcomfy_nb.events import Event, NodeStarted, Output, Preview, Progress, Queued
from runcomfy_nb.jobs import Job
from runcomfy_nb.media import Media
from runcomfy_nb.status import Status

from ..helpers import TOKEN, downloaded, partner_workflow, until, wait_for
from ..helpers import image_workflow as workflow

KEY = "comfyui-client-key-SENTINEL-4e8a21"
SPEED = 50.0  # a sampler step (0.5 virtual s) takes 10 ms


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(speed=SPEED, token=TOKEN, comfy_api_key=KEY) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def _idle_account(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Quick checks, default settings, no faults; afterwards nothing left queued or running."""
    monkeypatch.setattr(SocketRun, "IDLE_CHECK", 2.0)
    monkeypatch.setattr(SocketRun, "POLL_INTERVAL", 0.2)
    emu.clear_faults()
    yield
    emu.clear_faults()
    emu.cloud_account(tier="creator", active=True, credits=1000)
    emu.cloud_settings(status_vocabulary="guide", url_seconds=3600)
    headers = {"X-API-Key": KEY}
    httpx.post(f"{emu.cloud_url}/api/queue", json={"clear": True}, headers=headers)
    httpx.post(f"{emu.cloud_url}/api/interrupt", headers=headers)

    def unfinished() -> list[Any]:
        reply = httpx.get(f"{emu.cloud_url}/api/jobs", params={"status": "pending,in_progress"},
                          headers=headers)
        return reply.json()["jobs"]

    wait_for(lambda: not unfinished(), what="the account to go idle")


@pytest.fixture
async def cloud(emu: Emulator) -> AsyncIterator[AsyncComfyCloud]:
    async with AsyncComfyCloud(KEY, base_url=emu.cloud_url) as client:
        yield client


def renumber(wf: dict[str, Any], offset: int) -> dict[str, Any]:
    """The same graph under node ids shifted by `offset` (links included)."""
    def shift(node_id: str) -> str:
        return str(int(node_id) + offset)

    out = {}
    for node_id, node in copy.deepcopy(wf).items():
        node["inputs"] = {name: [shift(v[0]), v[1]] if isinstance(v, list) else v
                          for name, v in node["inputs"].items()}
        out[shift(node_id)] = node
    return out


def png(color: tuple[int, ...], size: tuple[int, int] = (16, 16), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, "PNG")
    return out.getvalue()


def of(job: Job, kind: type) -> list[Any]:
    return [e for e in job.history if isinstance(e, kind)]


def requests(emu: Emulator, mark: int, method: str, path: str) -> list[Any]:
    return [r for r in emu.log[mark:] if r.method == method and r.path == path]


def prompt_bodies(cloud: AsyncComfyCloud, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The bodies of POST /api/prompt this client sends, as sent."""
    sent: list[dict[str, Any]] = []
    original = cloud._http.request

    async def spy(method: str, path: str, **kw: Any) -> Any:
        if path == "/prompt":
            sent.append(copy.deepcopy(kw["json"]))
        return await original(method, path, **kw)

    monkeypatch.setattr(cloud._http, "request", spy)
    return sent


# --- set-up, account, nodes, files ---------------------------------------------------------------


async def test_key_and_url_from_argument_environment_or_config(emu: Emulator,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFY_CLOUD_API_KEY", KEY)
    monkeypatch.setenv("COMFY_CLOUD_URL", emu.cloud_url)
    async with AsyncComfyCloud() as from_env:
        assert (await from_env.user()).active
        assert repr(from_env) == f"<AsyncComfyCloud {emu.cloud_url.split('://')[1]}>"
    async with AsyncComfyCloud(config=Config(comfy_api_key=KEY, comfy_cloud_url=emu.cloud_url)) as configured:
        assert (await configured.user()).status == "active"
    monkeypatch.delenv("COMFY_CLOUD_API_KEY")
    for missing in (None, "  "):
        with pytest.raises(MissingCredentials, match="COMFY_CLOUD_API_KEY") as info:
            AsyncComfyCloud(missing)
        assert "platform.comfy.org" in str(info.value)


async def test_object_info_user_and_system_stats(cloud: AsyncComfyCloud, emu: Emulator) -> None:
    info = await cloud.object_info()
    assert {"KSampler", "SaveImage", "LoadImage", PARTNER_NODE} <= set(info)
    assert info[PARTNER_NODE]["api_node"] is True
    assert (await cloud.object_info("KSampler"))["name"] == "KSampler"
    user = await cloud.user()
    assert user.active and user.id
    assert (await cloud.system_stats()).devices[0].type == "cuda"
    emu.cloud_account(active=False)
    assert (await cloud.user()).status == "waitlisted"


async def test_upload_image_and_mask_subfolder_ignored(cloud: AsyncComfyCloud, emu: Emulator,
                                                       tmp_path: Path) -> None:
    red = png((255, 0, 0))
    first = await cloud.upload(red, filename="red.png", subfolder="pets")
    assert (first.name, first.subfolder) == (f"{hashlib.sha256(red).hexdigest()}.png", "")
    assert first.ref == first.name  # what LoadImage takes
    source = tmp_path / "again.png"
    source.write_bytes(red)
    assert (await cloud.upload(source, overwrite=True)).name == first.name  # content-addressed
    masked = await cloud.upload(png((0, 0, 0, 77), mode="RGBA"), filename="m.png", mask=True,
                                original_ref=first)
    assert masked.name != first.name
    loads = {"1": {"class_type": "LoadImage", "inputs": {"image": masked.ref}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "copy"}}}
    result = await (await cloud.queue(loads)).result(timeout=30)
    assert [m.filename[:4] for m in result.media] == ["copy"]
    with pytest.raises(BadRequest, match="16384 px per edge") as info:
        await cloud.upload(png((1, 2, 3), size=(16385, 1)), filename="wide.png")
    assert info.value.status == 400 and "exceeds" in str(info.value)


# --- jobs, live ----------------------------------------------------------------------------------


async def test_two_jobs_at_once_each_job_and_widget_get_only_their_own_events(
        cloud: AsyncComfyCloud, emu: Emulator) -> None:
    mark = len(emu.log)
    # long enough (0.3 s, 0.5 s) for the widgets' batched updates (≤ 10/s) to catch the sampler
    alpha, beta = workflow(steps=30, prefix="alpha"), renumber(workflow(steps=50, prefix="beta"), 100)
    a, b = await asyncio.gather(cloud.queue(alpha), cloud.queue(beta))
    widgets = {job.id: rc.JobProgress(job) for job in (a, b)}
    shown: dict[str, set[Any]] = {job.id: set() for job in (a, b)}  # each widget's nodes and step counts
    for job_id, widget in widgets.items():
        widget.observe(lambda change, job_id=job_id: shown[job_id].add((change["name"], change["new"])),
                       names=["node", "steps"])
    results = await asyncio.gather(a.result(timeout=30), b.result(timeout=30))
    for job, wf, steps in ((a, alpha, 30), (b, beta, 50)):
        widget = widgets[job.id]
        await until(lambda widget=widget: widget.status == "succeeded", what="the widget to end")
        nodes = {value for name, value in shown[job.id] if name == "node"}
        counts = {value for name, value in shown[job.id] if name == "steps"} - {None}
        assert nodes and nodes <= set(wf) and counts <= {steps}  # never the other job's node or steps
        assert (widget.outputs, widget.nodes_done, widget.nodes_total) == (2, len(wf), len(wf))
    runs = ((a, alpha, 30, "alpha", results[0]), (b, beta, 50, "beta", results[1]))
    for job, wf, steps, prefix, result in runs:
        sampler, save = (("31", "9") if wf is alpha else ("131", "109"))
        assert job.kind == "cloud" and job.status is Status.SUCCEEDED
        started = [e.node for e in of(job, NodeStarted)]
        assert sorted(started) == sorted(wf) and len(started) == len(wf)
        assert [(p.node, p.value, p.max) for p in of(job, Progress)] == [
            (sampler, step, steps) for step in range(1, steps + 1)]
        previews = of(job, Preview)
        assert job.previews_seen == steps and [p.node for p in previews] == [sampler]  # the latest kept
        assert previews[0].data[:2] == b"\xff\xd8"
        media = [e.media for e in of(job, Output)]
        assert media == result.media and len(media) == 2
        assert all(m.filename.startswith(prefix) and m.node == save for m in media)
        assert (job.nodes_done, job.nodes_total) == (len(wf), len(wf))
    assert a.started_at and b.started_at and a.finished_at and b.finished_at
    assert a.started_at < b.finished_at and b.started_at < a.finished_at  # they ran at the same time
    sockets = [r for r in requests(emu, mark, "GET", "/cloud/ws") if r.status == 101]
    assert len(sockets) == 1 and sockets[0].query["token"] == "<redacted>"  # one socket, keyed


async def test_type1_previews_go_to_a_job_only_while_it_is_the_only_one_running(
        cloud: AsyncComfyCloud, emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    async def without_feature_flags(client_id: str) -> Any:
        from websockets.asyncio.client import connect

        return await connect(cloud._cloud.ws_url(cloud._base.get(), client_id))

    monkeypatch.setattr(cloud._link, "open_socket", without_feature_flags)  # type 1 frames: no prompt id
    long = await cloud.queue(workflow(steps=400))
    await until(lambda: of(long, Preview), what="a preview of the long job")
    short = await cloud.queue(renumber(workflow(steps=3), 100))
    await short.result(timeout=30)
    assert len(of(short, Progress)) == 3 and of(short, Preview) == []  # it never ran alone
    seen = long.previews_seen
    await until(lambda: long.previews_seen > seen, what="a preview once the long job runs alone again")
    assert await long.cancel() is True  # the sole running job: interrupted
    assert long.status is Status.CANCELLED
    assert len(of(long, Progress)) - long.previews_seen >= 3  # those beside `short` were dropped
    assert {p.node for p in of(long, Preview)} == {"31"}


async def test_a_dropped_socket_is_reopened_once_for_all_jobs(cloud: AsyncComfyCloud, emu: Emulator) -> None:
    emu.set_fault("cloud", "ws_drop", at_step=3)
    mark = len(emu.log)
    a, b = await asyncio.gather(cloud.queue(workflow(steps=8)), cloud.queue(renumber(workflow(steps=8), 100)))
    results = await asyncio.gather(a.result(timeout=30), b.result(timeout=30))
    assert [len(r.images) for r in results] == [2, 2]
    assert {m.node for m in results[1].media} == {"109"}
    assert len([r for r in requests(emu, mark, "GET", "/cloud/ws") if r.status == 101]) == 2


async def test_a_429_on_the_websocket_handshake_is_retried(cloud: AsyncComfyCloud, emu: Emulator) -> None:
    emu.set_fault("cloud", "ws_refused", count=2, retry_after=0)
    mark = len(emu.log)
    job = await cloud.queue(workflow(steps=4))
    await job.result(timeout=30)
    assert [r.status for r in requests(emu, mark, "GET", "/cloud/ws")] == [429, 429, 101]
    assert [p.value for p in of(job, Progress) if p.max == 4] == [1, 2, 3, 4]


@pytest.mark.parametrize("vocabulary", ["guide", "openapi", "newer"])
async def test_without_a_socket_jobs_are_followed_by_their_status(
        cloud: AsyncComfyCloud, emu: Emulator, monkeypatch: pytest.MonkeyPatch, vocabulary: str) -> None:
    spelling = {"guide": ("pending", "completed", "failed"), "openapi": ("waiting_to_dispatch", "completed",
                "error"), "newer": ("queued_waiting", "success", "error")}[vocabulary]
    emu.cloud_settings(status_vocabulary=vocabulary)
    emu.cloud_account(tier="standard")

    async def refused(client_id: str) -> Any:
        raise OSError("no socket today")

    monkeypatch.setattr(cloud._link, "open_socket", refused)
    mark = len(emu.log)
    done = await cloud.queue(workflow(steps=3))
    waiting = await cloud.queue(workflow(steps=3))
    assert (await cloud.job_status(waiting.id)).raw_status == spelling[0]
    assert (await cloud.job_status(waiting.id)).status is Status.QUEUED
    result = await done.result(timeout=30)
    assert done.status is Status.SUCCEEDED and len(result.images) == 2
    assert await result.images[0].read()
    finished = await cloud.job_status(done.id)
    assert (finished.status, finished.raw_status) == (Status.SUCCEEDED, spelling[1])
    assert requests(emu, mark, "GET", f"/cloud/api/job/{done.id}/status")
    assert requests(emu, mark, "GET", f"/cloud/api/jobs/{done.id}")
    await waiting.result(timeout=30)

    emu.set_fault("cloud", "node_raises", exception_type="OOMError", at_step=2)
    failing = await cloud.queue(workflow(steps=3))
    with pytest.raises(JobFailed, match="GPU ran out of memory") as info:
        await failing.result(timeout=30)
    assert info.value.detail["exception_type"] == "OOMError"
    failed = await cloud.job_status(failing.id)
    assert (failed.status, failed.raw_status) == (Status.FAILED, spelling[2])
    assert failed.error and "Out of GPU memory" in failed.error


@pytest.mark.parametrize(("raw", "status"), [
    ("pending", Status.QUEUED), ("in_progress", Status.RUNNING), ("completed", Status.SUCCEEDED),
    ("failed", Status.FAILED), ("cancelled", Status.CANCELLED), ("waiting_to_dispatch", Status.QUEUED),
    ("error", Status.FAILED), ("success", Status.SUCCEEDED), ("non_retryable_error", Status.FAILED),
    ("lost", Status.FAILED), ("submitted", Status.QUEUED), ("queued_waiting", Status.QUEUED),
    ("preparing", Status.RUNNING), ("executing", Status.RUNNING), ("cancel_requested", Status.RUNNING),
])
async def test_every_documented_status_spelling(cloud: AsyncComfyCloud, raw: str, status: Status) -> None:
    job = cloud._cloud.read_job(cloud._link, {"id": "j1", "status": raw, "error_message": "worker lost"}, {})
    assert (job.id, job.status, job.raw_status) == ("j1", status, raw)
    assert (job.error is not None) is (status is Status.FAILED)


# --- partner nodes -------------------------------------------------------------------------------


async def test_partner_nodes_get_the_key_only_when_needed(cloud: AsyncComfyCloud,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sent = prompt_bodies(cloud, monkeypatch)
    refused = await cloud.queue(partner_workflow(), partner_key=False)
    with pytest.raises(JobFailed) as info:
        await refused.result(timeout=30)
    message = info.value.message
    assert "Unauthorized" in message and "partner_key=True" in message and PARTNER_NODE in message
    assert "extra_data" not in sent[-1]

    paid = await cloud.queue(partner_workflow())  # the default: object_info marks it an API node
    result = await paid.result(timeout=30)
    assert sent[-1]["extra_data"] == {"api_key_comfy_org": KEY} and len(result.images) == 1
    plain = await cloud.queue(workflow(steps=2), extra_data={"note": "x"})
    await plain.result(timeout=30)
    assert sent[-1]["extra_data"] == {"note": "x"}  # no partner node: no key
    other = await cloud.queue(partner_workflow(), partner_key="comfyui-someone-else")
    with pytest.raises(JobFailed, match="partner_key"):
        await other.result(timeout=30)
    assert sent[-1]["extra_data"] == {"api_key_comfy_org": "comfyui-someone-else"}
    with pytest.raises(ValidationError, match="partner_key"):
        await cloud.queue(partner_workflow(), partner_key="")
    shown = [repr(paid), repr(result), repr(paid.history), repr(cloud), str(info.value),
             repr(info.value.detail), repr(paid._backend), repr(result.raw)]
    assert not any(KEY in text for text in shown)


async def test_partner_key_is_sent_when_the_node_list_cannot_be_read(
        cloud: AsyncComfyCloud, emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(comfyui_client, "_OBJECT_INFO", {})
    sent = prompt_bodies(cloud, monkeypatch)
    emu.set_fault("cloud", "server_error", count=-1, on="status")
    job = await cloud.queue(partner_workflow())
    emu.clear_faults()
    assert sent[-1]["extra_data"] == {"api_key_comfy_org": KEY}
    assert len((await job.result(timeout=30)).images) == 1


# --- outputs -------------------------------------------------------------------------------------


async def test_outputs_download_via_the_signed_redirect_without_the_key(
        cloud: AsyncComfyCloud, emu: Emulator, tmp_path: Path) -> None:
    result = await (await cloud.queue(workflow(steps=2))).result(timeout=30)
    media = result.media[0]
    mark, leaks = len(emu.log), len(emu.leaks)
    data = await media.read()
    assert Image.open(io.BytesIO(data)).format == "PNG"
    path = await media.save(tmp_path)
    assert path == tmp_path / media.filename and downloaded(path) == data
    assert [r.status for r in requests(emu, mark, "GET", "/cloud/api/view")] == [302, 302]
    storage = [r for r in emu.log[mark:] if r.path.startswith("/cloud-storage/")]
    assert [r.status for r in storage] == [200, 200] and not any(r.has_authorization for r in storage)
    assert emu.leaks[leaks:] == []
    # what the care prevents: httpx forwards X-API-Key along a redirect
    naive = httpx.get(media.url, headers={"X-API-Key": KEY}, follow_redirects=True)
    assert naive.status_code == 403 and len(emu.leaks) == leaks + 1

    gone = Media(url=cloud._link.view_url("gone.png"), filename="gone.png", kind="image",
                 _fetcher=media._fetcher)
    with pytest.raises(NotFound):
        await gone.read()
    foreign = Media(url="https://example.com/x.png", filename="x.png", kind="image", _fetcher=media._fetcher)
    with pytest.raises(ValidationError, match="not an output"):
        await foreign.read()
    emu.cloud_settings(url_seconds=-1)
    with pytest.raises(AuthError, match="expired") as info:
        await media.read()
    assert "Signature" not in str(info.value)


# --- queue, cancel, attach -----------------------------------------------------------------------


async def test_cancel_deletes_a_pending_job_and_interrupts_a_sole_running_one(
        cloud: AsyncComfyCloud, emu: Emulator) -> None:
    emu.cloud_account(tier="standard")
    running = await cloud.queue(workflow(steps=400))
    await until(lambda: running.status is Status.RUNNING, what="the first job to run")
    waiting = await cloud.queue(workflow(steps=2))
    await until(lambda: of(waiting, Queued), what="the second job's queue position")
    assert of(waiting, Queued)[-1].position == 1
    mark = len(emu.log)
    assert await waiting.cancel() is True
    assert waiting.status is Status.CANCELLED and isinstance(waiting.error, JobCancelled)
    assert [r.path for r in emu.log[mark:] if r.method == "POST"] == ["/cloud/api/queue"]
    assert running.status is Status.RUNNING
    assert await running.cancel() is True
    assert running.status is Status.CANCELLED
    assert requests(emu, mark, "POST", "/cloud/api/interrupt")


async def test_cancel_never_interrupts_a_job_running_beside_others(
        cloud: AsyncComfyCloud, emu: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    a, b = await asyncio.gather(cloud.queue(workflow(steps=400)), cloud.queue(workflow(steps=400)))
    await until(lambda: a.status is b.status is Status.RUNNING, what="both jobs to run")
    mark = len(emu.log)
    assert await a.cancel() is False
    assert "interrupt all running jobs" in caplog.text and "interrupt() stops them all" in caplog.text
    with pytest.raises(ValidationError, match="running beside others"):
        await cloud.interrupt(a.id)
    assert requests(emu, mark, "POST", "/cloud/api/interrupt") == []
    assert a.status is b.status is Status.RUNNING
    await cloud.interrupt()
    assert await a.wait(10) is Status.CANCELLED and await b.wait(10) is Status.CANCELLED


async def test_queue_jobs_history_and_attach(cloud: AsyncComfyCloud, emu: Emulator) -> None:
    emu.cloud_account(tier="standard")
    first = await cloud.queue(workflow(steps=400))
    second = await cloud.queue(workflow(steps=2))
    await until(lambda: first.status is Status.RUNNING, what="the first job to run")
    status = await cloud.queue_status()
    assert (status.running, status.pending, status.position(second.id)) == ((first.id,), (second.id,), 1)
    listed = await cloud.jobs(status=["pending", "in_progress"])
    assert {j.id: j.status for j in listed} == {first.id: Status.RUNNING, second.id: Status.QUEUED}
    assert all(j.created for j in listed)
    async with AsyncComfyCloud(KEY, base_url=emu.cloud_url) as other:
        followed = await other.attach(first.id)
        await until(lambda: of(followed, Progress), what="progress of the attached job")
        assert followed.kind == "cloud" and followed.nodes_total == 7
        await other.interrupt(first.id)  # the only one running
        assert await followed.wait(10) is Status.CANCELLED
    assert await first.wait(10) is Status.CANCELLED
    result = await second.result(timeout=30)
    entry = await cloud.history(second.id)
    assert entry is not None and entry.status is Status.SUCCEEDED and entry.media == result.media
    assert (await cloud.history(first.id)).status is Status.CANCELLED
    recent = await cloud.history(max_items=50)
    assert [e.prompt_id for e in recent][-2:] == [first.id, second.id]  # oldest first
    assert [e.prompt_id for e in await cloud.history(max_items=1)] == [second.id]  # the latest
    job = await cloud.job(second.id)
    assert (job.status, job.media, job.error) == (Status.SUCCEEDED, result.media, None)
    again = await cloud.attach(second.id)
    assert (await again.result(timeout=10)).media == result.media
    with pytest.raises(NotFound):
        await cloud.attach(str(uuid.uuid4()))


def test_blocking_facade(emu: Emulator) -> None:
    with rc.ComfyCloud(KEY, base_url=emu.cloud_url) as cloud:
        job = cloud.queue(workflow(steps=2))
        result = job.result(timeout=30)
        assert job.kind == "cloud" and len(result.images) == 2
        assert cloud.user().active


# --- errors --------------------------------------------------------------------------------------


async def test_inactive_subscription_429_is_not_retried(cloud: AsyncComfyCloud, emu: Emulator) -> None:
    emu.cloud_account(active=False)
    mark = len(emu.log)
    with pytest.raises(SubscriptionInactive) as info:
        await cloud.queue(workflow())
    assert len(requests(emu, mark, "POST", "/cloud/api/prompt")) == 1
    error = info.value
    assert isinstance(error, PaymentRequired) and not isinstance(error, RateLimited)
    assert error.status == 429 and error.code == "subscription_inactive"
    assert "subscription is not active" in error.message and "cloud.comfy.org" in error.message
    # a true rate limit (it says when to come back) is retried: the server refused before taking it
    emu.cloud_account(active=True)
    emu.set_fault("cloud", "rate_limit", on="submit", retry_after=0)
    mark = len(emu.log)
    await (await cloud.queue(workflow(steps=2))).result(timeout=30)
    assert [r.status for r in requests(emu, mark, "POST", "/cloud/api/prompt")] == [429, 200]


async def test_http_errors_say_what_to_do(cloud: AsyncComfyCloud, emu: Emulator) -> None:
    async with AsyncComfyCloud("comfyui-wrong-key", base_url=emu.cloud_url) as wrong:
        with pytest.raises(AuthError, match="COMFY_CLOUD_API_KEY") as unauthorized:
            await wrong.queue(workflow(), partner_key=False)
    assert unauthorized.value.status == 401 and "platform.comfy.org" in unauthorized.value.message

    emu.cloud_account(credits=0)
    with pytest.raises(PaymentRequired, match="insufficient credits") as broke:
        await cloud.queue(workflow())
    assert broke.value.status == 402 and not isinstance(broke.value, SubscriptionInactive)
    assert "Add credits" in broke.value.message
    emu.cloud_account(credits=1000)

    bad = workflow()
    bad["31"]["inputs"]["sampler_name"] = "eulr"
    with pytest.raises(ValidationError, match="sampler_name") as invalid:
        await cloud.queue(bad, validate=False)  # the server's own refusal
    assert str(invalid.value).startswith("The Comfy Cloud service rejected the prompt")
    assert "node 31" in str(invalid.value)

    emu.set_fault("cloud", "http_error", on="submit", status=400, code="invalid_request",
                  message="The body must be an object")
    with pytest.raises(BadRequest, match="The body must be an object"):
        await cloud.queue(workflow())

    emu.set_fault("cloud", "server_error", on="submit")
    mark = len(emu.log)
    with pytest.raises(ServerError, match="Try again"):
        await cloud.queue(workflow())
    assert len(requests(emu, mark, "POST", "/cloud/api/prompt")) == 1  # a paid POST: never resent

    emu.set_fault("cloud", "server_error", on="status")
    mark = len(emu.log)
    assert (await cloud.queue_status()).running == ()  # a read is retried
    assert [r.status for r in requests(emu, mark, "GET", "/cloud/api/queue")] == [500, 200]

    stranger = "comfyui-another-account-key"
    emu.cloud_account(stranger)
    theirs = httpx.post(f"{emu.cloud_url}/api/prompt", json={"prompt": workflow(steps=1)},
                        headers={"X-API-Key": stranger}).json()["prompt_id"]
    with pytest.raises(AuthError, match="another account") as forbidden:
        await cloud.job_status(theirs)
    assert forbidden.value.status == 403
    with pytest.raises(NotFound):
        await cloud.job(str(uuid.uuid4()))
    with pytest.raises(ValidationError, match="manages"):
        await cloud.free()


ADVICE_PHRASES = {
    "ValidationError": "object_info()", "ModelDownloadError": "a model the workflow needs",
    "ImageDownloadError": "upload()", "OOMError": "lower the resolution",
    "InsufficientFundsError": "add credits", "InactiveSubscriptionError": "subscribe to a plan",
    "PanicError": "worker crashed", "ServiceError": "internal error",
    "WebSocketError": "lost its connection", "DispatcherError": "could not hand the job",
}


@pytest.mark.parametrize("exception_type", sorted(CLOUD_ERRORS))
async def test_execution_errors_say_what_to_do(cloud: AsyncComfyCloud, emu: Emulator,
                                               exception_type: str) -> None:
    emu.set_fault("cloud", "node_raises", exception_type=exception_type, at_step=2)
    job = await cloud.queue(workflow(steps=4))
    with pytest.raises(JobFailed) as info:
        await job.result(timeout=30)
    message = info.value.message
    assert message.startswith("The Comfy Cloud run failed at node 31 (KSampler): "
                              f"{exception_type}: {CLOUD_ERRORS[exception_type]}")
    assert ADVICE_PHRASES[exception_type] in message.split("What to do:")[1]
    assert info.value.detail["exception_type"] == exception_type and info.value.job_id == job.id
    assert job.status is Status.FAILED


# --- secrets -------------------------------------------------------------------------------------


async def test_no_key_or_signed_url_in_logs(cloud: AsyncComfyCloud, emu: Emulator,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    job = await cloud.queue(partner_workflow())
    result = await job.result(timeout=30)
    await result.media[0].read()
    emu.cloud_account(active=False)
    with pytest.raises(SubscriptionInactive):
        await cloud.queue(workflow())
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "HTTP Request" in text  # httpx did log its requests, with the URLs redacted
    assert KEY not in text and "Signature=" not in text and "token=" not in text
    events: list[Event] = job.history
    assert not any(KEY in repr(e) for e in events)
