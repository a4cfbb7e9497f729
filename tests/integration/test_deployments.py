"""The serverless client against the emulator on real sockets."""

from __future__ import annotations

import io
from pathlib import Path

import av
import httpx
import pytest
from PIL import Image

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.events import Finished, Output, Started
from runcomfy_nb.http_policy import retry_hook
from runcomfy_nb.status import Status

from ..helpers import TOKEN, downloaded, posts, until, wait_for

FLUX, VIDEO, LORA = "dep-flux-kontext", "dep-animate", "dep-lora-portrait"
LORA_INPUTS = {"prompt": "warm cinematic light", "seed": 42, "width": 512, "height": 512}


async def test_overrides_run_to_images_text_and_files(client: rc.AsyncRunComfy, fresh: Emulator,
                                                      tmp_path: Path) -> None:
    job = await client.deployments.submit(FLUX, {31: {"seed": 42}, "6": {"inputs": {"text": "a city"}}})
    result = await job.result(timeout=30)
    assert job.status is Status.SUCCEEDED
    assert len(result.images) == 2 and result.text == ["a caption of: a city"]
    kinds = [type(e) for e in job.history]
    assert Started in kinds and kinds[-1] is Finished and kinds.count(Output) == len(result.media)
    paths = await result.save(tmp_path)
    assert [p.name for p in paths] == [m.filename for m in result.media]
    assert Image.open(paths[0]).format == "PNG"
    assert not list(tmp_path.glob(".*part"))
    again = await (await client.deployments.submit(FLUX, {"31": {"inputs": {"seed": 42}},
                                                          "6": {"inputs": {"text": "a city"}}})).result(30)
    other = await (await client.deployments.submit(FLUX, {"31": {"inputs": {"seed": 43}}})).result(30)
    assert await again.media[0].read() == downloaded(paths[0])
    assert await other.media[0].read() != downloaded(paths[0])
    downloads = [r for r in fresh.log if "/storage/" in r.path]
    assert downloads and not any(r.has_authorization for r in downloads)
    assert fresh.leaks == []


def test_output_urls_do_reject_authorization(fresh: Emulator) -> None:
    """The check above could fail: the emulator refuses output fetches that carry a token."""
    run = httpx.post(f"{fresh.url}/prod/v1/deployments/{FLUX}/inference", json={"overrides": {}},
                     headers={"Authorization": f"Bearer {TOKEN}"}).json()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    wait_for(lambda: httpx.get(run["status_url"], headers=auth).json()["status"] == "completed")
    result = httpx.get(run["result_url"], headers=auth).json()
    url = next(iter(result["outputs"].values()))["images"][0]["url"]
    assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 403
    assert fresh.leaks
    assert httpx.get(url).status_code == 200


async def test_video_and_lora(client: rc.AsyncRunComfy) -> None:
    video = await (await client.deployments.submit(VIDEO, {})).result(30)
    assert [m.kind for m in video.media] == ["video"] and video.media[0].filename.endswith(".mp4")
    data = await video.media[0].read()
    assert data[4:8] == b"ftyp"  # a real MP4, as the VHS nodes write: more than one frame in it
    with av.open(io.BytesIO(data)) as container:
        assert sum(1 for _ in container.decode(video=0)) > 1
    lora = await (await client.deployments.submit(LORA, inputs=LORA_INPUTS)).result(30)
    assert len(lora.images) == 2 and lora.raw.get("output")


async def test_inline_workflow_and_v2(fresh: Emulator) -> None:
    workflow = fresh.saved_workflow(FLUX)
    async with rc.AsyncRunComfy(token=TOKEN, base_url=fresh.url, serverless_version="v2") as c:
        result = await (await c.deployments.submit(FLUX, workflow=workflow)).result(30)
    assert result.images
    assert any(r.path.startswith("/prod/v2/") for r in fresh.log)


async def test_ui_format_and_both_bodies_rejected_before_sending(client: rc.AsyncRunComfy,
                                                                 fresh: Emulator) -> None:
    before = posts(fresh, FLUX)
    with pytest.raises(rc.ValidationError, match="Export"):
        await client.deployments.submit(FLUX, workflow={"nodes": [], "links": []})
    with pytest.raises(rc.ValidationError, match="not both"):
        await client.deployments.submit(FLUX, {"31": {"seed": 1}}, workflow=fresh.saved_workflow(FLUX))
    assert posts(fresh, FLUX) == before


async def test_server_side_validation_message(client: rc.AsyncRunComfy) -> None:
    with pytest.raises(rc.BadRequest, match="sede"):
        await client.deployments.submit(FLUX, {"31": {"sede": 1}}, validate=False)  # the server's own check
    with pytest.raises(rc.BadRequest):
        await client.deployments.submit(LORA, inputs={"seed": "not a number"})


async def test_auth_errors(fresh: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    async with rc.AsyncRunComfy(token="wrong-token", base_url=fresh.url) as c:
        with pytest.raises(rc.AuthError, match="RUNCOMFY_TOKEN") as caught:
            await c.deployments.submit(FLUX, {})
    assert "wrong-token" not in str(caught.value)
    monkeypatch.delenv("RUNCOMFY_TOKEN", raising=False)
    monkeypatch.delenv("RUNCOMFY_API_KEY", raising=False)
    with pytest.raises(rc.MissingCredentials, match="RUNCOMFY_TOKEN"):
        rc.AsyncRunComfy(base_url=fresh.url).deployments  # noqa: B018


async def test_unknown_deployment(client: rc.AsyncRunComfy) -> None:
    with pytest.raises(rc.NotFound, match="Check the id"):
        await client.deployments.submit("dep-nope", {})


async def test_payment_required_is_not_retried(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.set_fault(FLUX, "http_error", status=402, error_code=402001, message="Insufficient balance")
    before = posts(fresh, FLUX)
    with pytest.raises(rc.PaymentRequired, match="Top up"):
        await client.deployments.submit(FLUX, {})
    assert posts(fresh, FLUX) == before + 1


async def test_body_level_error_with_http_200(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.set_fault(FLUX, "body_error", error_code=10001)
    with pytest.raises(rc.PaymentRequired):
        await client.deployments.submit(FLUX, {})


async def test_rate_limit_retried_then_budget_spent(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.set_fault(FLUX, "rate_limit", count=1, on="submit", retry_after=0)
    before = posts(fresh, FLUX)
    job = await client.deployments.submit(FLUX, {})
    assert posts(fresh, FLUX) == before + 2  # the 429 was not accepted, so one resend
    assert len([r for r in fresh.requests_for(FLUX) if r.id == job.id]) == 1
    await job.result(30)
    fresh.set_fault(FLUX, "rate_limit", count=-1, on="submit", retry_after=0)
    with pytest.raises(rc.RateLimited, match="rate limiting"):
        await client.deployments.submit(FLUX, {})


async def test_read_timeout_never_resubmits(fresh: Emulator) -> None:
    fresh.set_fault(FLUX, "delay", on="submit", seconds=1.5)
    before_posts, before_jobs = posts(fresh, FLUX), len(fresh.requests_for(FLUX))
    async with rc.AsyncRunComfy(token=TOKEN, base_url=fresh.url, timeout=0.4) as c:
        with pytest.raises(rc.SubmitUncertain, match="NOT sent again"):
            await c.deployments.submit(FLUX, {})
    assert posts(fresh, FLUX) == before_posts + 1
    assert len(fresh.requests_for(FLUX)) == before_jobs + 1


async def test_dropped_connection_never_resubmits(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.set_fault(FLUX, "drop", on="submit")
    before = posts(fresh, FLUX)
    with pytest.raises(rc.SubmitUncertain):
        await client.deployments.submit(FLUX, {})
    assert posts(fresh, FLUX) == before + 1


def test_retry_rule() -> None:
    paid, idempotent = retry_hook(False), retry_hook(True)
    assert paid(httpx.ConnectError("refused")) and idempotent(httpx.ReadTimeout("slow"))
    assert not paid(httpx.ReadTimeout("slow")) and not paid(httpx.RemoteProtocolError("dropped"))
    assert paid(rc.RateLimited("429", retry_after=1)) == 1
    assert not paid(rc.RateLimited("429", retry_after=3600))


async def test_connection_refused_is_clear() -> None:
    async with rc.AsyncRunComfy(token=TOKEN, base_url="http://127.0.0.1:9") as c:
        with pytest.raises(rc.TransportError, match="Could not connect"):
            await c.deployments.submit(FLUX, {})


async def test_polling_survives_server_errors(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.set_fault(FLUX, "server_error", count=2, on="status")
    assert (await (await client.deployments.submit(FLUX, {})).result(30)).images


async def test_failed_job_shows_server_error(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.set_fault(FLUX, "job_fails", message="CUDA out of memory. Tried to allocate 2.00 GiB")
    job = await client.deployments.submit(FLUX, {})
    with pytest.raises(rc.JobFailed, match="CUDA out of memory"):
        await job.result(30)
    assert job.status is Status.FAILED


async def test_timeout_cancels_remote_job(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.set_fault(FLUX, "slow_queue", seconds=200)
    job = await client.deployments.submit(FLUX, {})
    with pytest.raises(rc.JobTimeout, match="cancelled it"):
        await job.result(timeout=0.3)
    remote = next(r for r in fresh.requests_for(FLUX) if r.id == job.id)
    assert remote.status in ("cancelled", "canceled")


async def test_cancel_queued_job(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.set_fault(FLUX, "slow_queue", seconds=40)
    first = await client.deployments.submit(FLUX, {})
    second = await client.deployments.submit(FLUX, {})
    assert await second.cancel() is True
    with pytest.raises(rc.JobCancelled):
        await second.result(5)
    assert second.status is Status.CANCELLED
    assert await first.cancel() is True


async def test_lora_running_job_is_not_cancellable(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    job = await client.deployments.submit(LORA, inputs=LORA_INPUTS)
    async def left_the_queue() -> bool:
        return (await client.deployments.status(LORA, job.id)).status is not Status.QUEUED

    await until(left_the_queue, what="the job out of the queue")
    assert await job.cancel() is False
    assert (await job.result(30)).images


async def test_live_status_spellings(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.add_deployment({**fresh.deployment_config(FLUX), "id": "dep-live", "status_style": "live"})
    assert (await (await client.deployments.submit("dep-live", {})).result(30)).images
    fresh.set_fault("dep-live", "slow_queue", seconds=40)
    job = await client.deployments.submit("dep-live", {})
    assert await job.cancel() is True
    assert job.status is Status.CANCELLED


async def test_truncated_download(client: rc.AsyncRunComfy, fresh: Emulator, tmp_path: Path) -> None:
    result = await (await client.deployments.submit(FLUX, {})).result(30)
    fresh.set_fault("*", "truncate", count=-1)
    with pytest.raises(rc.TransportError, match="truncated"):
        await result.media[0].save(tmp_path)
    assert list(tmp_path.iterdir()) == []
    fresh.clear_faults()
    fresh.set_fault("*", "truncate", count=1)  # one truncated answer: the retry gets it whole
    path = await result.media[0].save(tmp_path)
    assert Image.open(path).size[0] > 0


def test_emulator_command_line() -> None:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "runcomfy_nb.emulator", "--port", "0",
                                "--token", TOKEN], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        url = line.rsplit(" ", 1)[-1].strip()
        assert line.startswith("runcomfy emulator listening on http://127.0.0.1:")
        assert httpx.post(f"{url}/prod/v1/deployments/{FLUX}/inference", json={}).status_code == 401
    finally:
        process.terminate()
        process.wait(10)
