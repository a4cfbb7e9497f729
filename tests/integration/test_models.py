"""The Model API: the client against the emulator on real sockets, and the emulator's wire contract."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import runcomfy_nb as rc
from runcomfy_nb.clients.models import Models, check_inputs, check_model_id
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.app import load_config
from runcomfy_nb.events import Finished, Output, Queued, Started
from runcomfy_nb.status import Status

from ..helpers import until, wait_for

TOKEN = "rc_models_token_SENTINEL_83c1a0"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EDIT = "blackforestlabs/flux-1-kontext/pro/edit"  # output: one URL string
T2I = "blackforestlabs/flux-1/dev/text-to-image"  # a list of num_images URLs
VIDEO = "wan-ai/wan-2-2/image-to-video"  # {"video": url}, an animated WebP
BOARD = "runcomfy/storyboard/images-to-video"  # {"image": url, "videos": [url, url]}
SLOW = "emu/slow/one-at-a-time"  # added here: 500 virtual s = 10 real s per run, one worker
IMAGE = "https://example.org/in.webp"
EDIT_INPUTS = {"prompt": "she now holds an orange umbrella", "image_url": IMAGE, "seed": 81030369,
               "aspect_ratio": "16:9"}


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    config = load_config(None)
    config["models"].append({"model_id": SLOW, "run_seconds": 500, "instances": 1})
    with Emulator(speed=50, token=TOKEN, config=config) as emulator:
        yield emulator


@pytest.fixture
def fresh(emu: Emulator) -> Iterator[Emulator]:
    emu.clear_faults()
    yield emu
    emu.clear_faults()


@pytest.fixture
async def client(fresh: Emulator) -> AsyncIterator[rc.AsyncRunComfy]:
    async with rc.AsyncRunComfy(token=TOKEN, base_url="http://127.0.0.1:9", model_api_url=fresh.url) as c:
        yield c


def posts(emu: Emulator, model_id: str | None = None) -> int:
    return sum(1 for r in emu.log if r.method == "POST" and r.path.startswith("/v1/models/")
               and (model_id is None or r.path == f"/v1/models/{model_id}"))


async def until_status(client: rc.AsyncRunComfy, request_id: str, wanted: Status) -> None:
    async def reached() -> bool:
        return (await client.models.status(request_id)).status is wanted

    await until(reached, what=f"{request_id} to become {wanted}")


# --- runs and output shapes --------------------------------------------------------------------


async def test_one_url_string_becomes_one_image(client: rc.AsyncRunComfy, fresh: Emulator,
                                                tmp_path: Path) -> None:
    job = await client.models.submit(EDIT, EDIT_INPUTS)
    assert job.kind == "model" and EDIT in job.label
    assert job.provenance == {"target": EDIT, "kind": "model", "job_id": job.id, "inputs": EDIT_INPUTS,
                              "seeds": {"seed": EDIT_INPUTS["seed"]}}
    result = await job.result(timeout=30)
    assert job.status is Status.SUCCEEDED
    assert isinstance(result.raw["output"], str)
    assert [m.kind for m in result.media] == ["image"]
    kinds = [type(e) for e in job.history]
    assert Started in kinds and kinds.count(Output) == 1 and kinds[-1] is Finished
    [path] = await result.save(tmp_path)
    assert Image.open(path).size == (512, 288)  # aspect_ratio 16:9
    assert not list(tmp_path.glob(".*part"))
    submit = [r for r in fresh.log if r.method == "POST" and r.path.startswith("/v1/models/")][-1]
    assert submit.path == f"/v1/models/{EDIT}"  # the slashes stay in the path
    downloads = [r for r in fresh.log if r.path.startswith("/storage/models/")]
    assert downloads and not any(r.has_authorization for r in downloads)
    assert fresh.leaks == []
    [remote] = [r for r in fresh.model_requests(EDIT) if r.id == job.id]
    assert remote.inputs["seed"] == 81030369 and remote.inputs["safety_tolerance"] == 2  # default


async def test_a_list_and_objects_of_urls_and_lists(client: rc.AsyncRunComfy) -> None:
    listed = await (await client.models.submit(T2I, {"prompt": "a lighthouse", "num_images": 3})).result(30)
    assert isinstance(listed.raw["output"], list) and [m.kind for m in listed.media] == ["image"] * 3
    assert len({await m.read() for m in listed.media}) == 3

    video = await (await client.models.submit(VIDEO, {"prompt": "waves", "image_url": IMAGE})).result(30)
    assert list(video.raw["output"]) == ["video"]
    [clip] = video.videos
    assert clip.filename.endswith(".webp") and clip.mime == "image/webp"
    frames = Image.open(io.BytesIO(await clip.read()))
    assert frames.format == "WEBP" and getattr(frames, "n_frames", 1) == 24

    board = await (await client.models.submit(BOARD, {"prompt": "a day at sea",
                                                      "image_urls": [IMAGE, IMAGE]})).result(30)
    assert sorted(board.raw["output"]) == ["image", "videos"]
    assert [m.kind for m in board.media] == ["image", "video", "video"]


async def test_status_result_and_attach(client: rc.AsyncRunComfy) -> None:
    job = await client.models.submit(T2I, {"prompt": "a fox", "num_images": 1, "seed": 5})
    first = await job.result(30)
    status = await client.models.status(job.id)
    assert status.raw_status == "completed" and status.status is None and status.finished
    reply = await client.models.result(job.id)
    assert reply.status is Status.SUCCEEDED and reply.error is None
    assert reply.duration is not None and reply.duration > 0
    assert [m.url for m in reply.result.media] == [m.url for m in first.media]
    again = client.models.attach(job.id, model_id=T2I)
    assert [m.url for m in (await again.result(10)).media] == [m.url for m in first.media]
    assert client.models.durations(T2I).samples  # polling learns the model's run time


async def test_queue_position_cancel_queued_and_not_cancellable(client: rc.AsyncRunComfy) -> None:
    running = await client.models.submit(SLOW, {"prompt": "first"})
    await until_status(client, running.id, Status.RUNNING)
    second = await client.models.submit(SLOW, {"prompt": "second"})
    third = await client.models.submit(SLOW, {"prompt": "third"})
    status = await client.models.status(third.id)
    assert status.status is Status.QUEUED and status.queue_position == 1
    assert await second.cancel() is True
    assert second.status is Status.CANCELLED
    with pytest.raises(rc.JobCancelled):
        await second.result(5)
    assert (await client.models.status(third.id)).queue_position == 0
    await until(lambda: any(isinstance(e, Queued) for e in third.history), what="the third job queued")
    assert any(isinstance(e, Queued) and e.position is not None for e in third.history)
    assert await client.models.cancel(running.id) is False  # in progress: not_cancellable
    assert await running.cancel(wait=0.2) is False
    assert running.status is Status.RUNNING
    assert await third.cancel() is True
    running.detach()


async def test_timeout_cancels_the_queued_request(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.set_fault(EDIT, "slow_queue", seconds=500)
    job = await client.models.submit(EDIT, EDIT_INPUTS)
    with pytest.raises(rc.JobTimeout, match="cancelled it"):
        await job.result(timeout=0.3)
    assert next(r for r in fresh.model_requests(EDIT) if r.id == job.id).status == "cancelled"


async def test_failed_job_shows_the_error(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.set_fault(T2I, "job_fails", message="NSFW content detected in the prompt")
    job = await client.models.submit(T2I, {"prompt": "x"})
    with pytest.raises(rc.JobFailed, match="NSFW content detected") as caught:
        await job.result(30)
    assert T2I in str(caught.value) and caught.value.job_id == job.id
    assert job.status is Status.FAILED
    reply = await client.models.result(job.id)
    assert reply.status is Status.FAILED and "NSFW" in (reply.error or "")


async def test_polling_survives_server_errors(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.set_fault(T2I, "server_error", count=2, on="status")
    assert (await (await client.models.submit(T2I, {"prompt": "x", "num_images": 1})).result(30)).images


async def test_truncated_download_is_retried_or_refused(client: rc.AsyncRunComfy, fresh: Emulator,
                                                        tmp_path: Path) -> None:
    result = await (await client.models.submit(EDIT, EDIT_INPUTS)).result(30)
    fresh.set_fault(EDIT, "truncate", count=-1)
    with pytest.raises(rc.TransportError, match="truncated"):
        await result.media[0].save(tmp_path)
    assert list(tmp_path.iterdir()) == []
    fresh.clear_faults()
    fresh.set_fault(EDIT, "truncate", count=1)
    assert Image.open(await result.media[0].save(tmp_path)).size == (512, 288)


def test_blocking_client(fresh: Emulator) -> None:
    with rc.RunComfy(token=TOKEN, model_api_url=fresh.url) as c:
        result = c.models.submit(T2I, {"prompt": "blocking", "num_images": 2}).result(30)
        assert len(result.images) == 2
        assert c.models.get(T2I).model_id == T2I


# --- catalog ------------------------------------------------------------------------------------


async def test_catalog(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    page = await client.models.list()
    assert page.total == len(fresh.model_ids()) == len(page) == 5
    assert {m.model_id for m in page} >= {EDIT, T2I, VIDEO, BOARD}
    assert all(m.input_schema is None for m in page)  # only with include_schema
    flux = await client.models.list("FLUX", include_schema=True)
    assert {m.model_id for m in flux} == {EDIT, T2I}
    edit = next(m for m in flux if m.model_id == EDIT)
    assert edit.required == ["prompt", "image_url"] and edit.base_price_usd == 0.04
    assert edit.price_unit == "output" and edit.categories == ("image-to-image",)
    videos = await client.models.list(category="image-to-video")
    assert {m.model_id for m in videos} == {VIDEO, BOARD}
    assert {m.model_id for m in await client.models.list(kind="video")} == {VIDEO, BOARD}
    second = await client.models.list(limit=2, offset=2)
    assert len(second) == 2 and second.total == 5 and second[0].model_id == page[2].model_id
    assert "text-to-image" in await client.models.categories()
    info = await client.models.get(BOARD)
    assert info.input_schema["properties"]["image_urls"]["type"] == "array"
    assert info.output_schema["properties"]["videos"]["type"] == "array"
    with pytest.raises(rc.NotFound):
        await client.models.get("nobody/no-model")


# --- checks before anything is sent -------------------------------------------------------------


@pytest.mark.parametrize(("inputs", "field", "why"), [
    ({"image_url": "/home/me/cat.png"}, "image_url", "local file path"),
    ({"image_url": Path("cat.png")}, "image_url", "local file path"),
    ({"image_url": "./cat.png"}, "image_url", "local file path"),
    ({"image_url": "C:\\Users\\me\\cat.png"}, "image_url", "local file path"),
    ({"image_url": "file:///home/me/cat.png"}, "image_url", "local file path"),
    ({"image_url": "data:image/png;base64," + "A" * 500}, "image_url", "data: URI"),
    ({"image_url": "http://example.org/cat.png"}, "image_url", "not https"),
    ({"image_url": "https://localhost:8188/view?filename=cat.png"}, "image_url", "private host"),
    ({"image_url": "https://192.168.1.20/cat.png"}, "image_url", "private address"),
    ({"image_url": "example.org/cat.png"}, "image_url", "not a URL"),
    ({"mask_url": 42}, "mask_url", "URL string"),
    ({"image_urls": [IMAGE, "file:cat.png"]}, "image_urls[1]", "local file path"),
    ({"image_urls": IMAGE}, "image_urls", "list of public https URLs"),
    ({"loras": [{"weights_url": "~/lora.safetensors"}]}, "loras[0].weights_url", "local file path"),
    ({"reference": Path("/tmp/a.png")}, "reference", "local file path"),
    ({"image": b"\x89PNG"}, "image", "raw file bytes"),
])
async def test_media_inputs_must_be_public_https(client: rc.AsyncRunComfy, fresh: Emulator,
                                                 inputs: dict[str, Any], field: str, why: str) -> None:
    before = posts(fresh)
    with pytest.raises(rc.ValidationError, match=why) as caught:
        await client.models.submit(EDIT, {"prompt": "p", **inputs})
    message = str(caught.value)
    assert f"'{field}'" in message
    if "list of" not in why:
        assert "upload the file somewhere public first" in message
    assert len(message) < 400  # a data: URI is not echoed whole
    assert posts(fresh) == before


@pytest.mark.parametrize("model_id", ["flux-1-kontext", "", "a//b", "/a/b", "a/b?x=1", "a/../b", None])
async def test_bad_model_ids_are_refused_before_sending(client: rc.AsyncRunComfy, fresh: Emulator,
                                                        model_id: Any) -> None:
    before = posts(fresh)
    with pytest.raises(rc.ValidationError, match=r"model id|model_id"):
        await client.models.submit(model_id, {"prompt": "p"})
    assert posts(fresh) == before


def test_checks_keep_good_inputs() -> None:
    body = check_inputs({"prompt": "p", "image_url": IMAGE, "image_urls": (IMAGE,), "seed": 1,
                         "url": "anything", "video_url": "https://cdn.example.com/a.mp4?X-Amz-Signature=1",
                         "loras": ({"path_url": IMAGE, "scale": 0.8},), "mask_url": None})
    assert body["image_urls"] == [IMAGE] and body["loras"] == [{"path_url": IMAGE, "scale": 0.8}]
    assert check_model_id(f" {EDIT} ") == EDIT
    assert Models._model_path(EDIT) == f"/v1/models/{EDIT}"  # as is: no %2F
    with pytest.raises(rc.ValidationError, match="object"):
        check_inputs(["prompt"])


# --- errors from the server ---------------------------------------------------------------------


async def test_server_side_schema_errors(client: rc.AsyncRunComfy) -> None:
    with pytest.raises(rc.BadRequest, match="Field required: image_url"):
        await client.models.submit(EDIT, {"prompt": "p"})
    with pytest.raises(rc.BadRequest, match="aspect_ratio"):
        await client.models.submit(EDIT, {**EDIT_INPUTS, "aspect_ratio": "2:1"})
    with pytest.raises(rc.BadRequest, match="seed"):
        await client.models.submit(EDIT, {**EDIT_INPUTS, "seed": "lucky"})
    with pytest.raises(rc.BadRequest, match="num_images"):
        await client.models.submit(T2I, {"prompt": "p", "num_images": 9})


async def test_auth_unknown_model_and_unknown_request(fresh: Emulator) -> None:
    async with rc.AsyncRunComfy(token="wrong-token", model_api_url=fresh.url) as c:
        with pytest.raises(rc.AuthError, match="RUNCOMFY_TOKEN") as caught:
            await c.models.submit(EDIT, EDIT_INPUTS)
    assert "wrong-token" not in str(caught.value) and caught.value.status == 401
    async with rc.AsyncRunComfy(token=TOKEN, model_api_url=fresh.url) as c:
        with pytest.raises(rc.NotFound, match="Check the id"):
            await c.models.submit("nobody/no-model", {"prompt": "p"})
        with pytest.raises(rc.NotFound):
            await c.models.status("00000000-0000-0000-0000-000000000000")
        with pytest.raises(rc.NotFound):
            await c.models.cancel("00000000-0000-0000-0000-000000000000")


async def test_payment_required_is_not_retried(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.set_fault(EDIT, "http_error", status=402, error_code=400002,
                    message="InsufficientResources: no balance left")
    before = posts(fresh, EDIT)
    with pytest.raises(rc.PaymentRequired, match="Top up"):
        await client.models.submit(EDIT, EDIT_INPUTS)
    assert posts(fresh, EDIT) == before + 1
    fresh.set_fault(EDIT, "body_error", error_code=400002, message="InsufficientResources")
    with pytest.raises(rc.PaymentRequired):  # the same code in an HTTP 200 body
        await client.models.submit(EDIT, EDIT_INPUTS)
    fresh.set_fault(EDIT, "http_error", status=400, error_code=400004, message="UserAccountError")
    with pytest.raises(rc.AuthError):  # a plain 400 whose code says the account is the problem
        await client.models.submit(EDIT, EDIT_INPUTS)


async def test_rate_limit_retried_once_then_budget_spent(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.set_fault(EDIT, "rate_limit", count=1, on="submit", retry_after=0)
    before, jobs = posts(fresh, EDIT), len(fresh.model_requests(EDIT))
    job = await client.models.submit(EDIT, EDIT_INPUTS)
    assert posts(fresh, EDIT) == before + 2  # the 429 came before acceptance: one resend
    assert len(fresh.model_requests(EDIT)) == jobs + 1
    await job.result(30)
    fresh.set_fault(EDIT, "rate_limit", count=-1, on="submit", retry_after=0)
    with pytest.raises(rc.RateLimited, match="rate limiting"):
        await client.models.submit(EDIT, EDIT_INPUTS)


async def test_read_timeout_never_resubmits(fresh: Emulator) -> None:
    fresh.set_fault(EDIT, "delay", on="submit", seconds=1.5)
    before, jobs = posts(fresh, EDIT), len(fresh.model_requests(EDIT))
    async with rc.AsyncRunComfy(token=TOKEN, model_api_url=fresh.url, timeout=0.4) as c:
        with pytest.raises(rc.SubmitUncertain, match="NOT sent again"):
            await c.models.submit(EDIT, EDIT_INPUTS)
    assert posts(fresh, EDIT) == before + 1
    assert len(fresh.model_requests(EDIT)) == jobs + 1  # the server did take it


async def test_dropped_connection_never_resubmits(client: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.set_fault(EDIT, "drop", on="submit")
    before = posts(fresh, EDIT)
    with pytest.raises(rc.SubmitUncertain):
        await client.models.submit(EDIT, EDIT_INPUTS)
    assert posts(fresh, EDIT) == before + 1


# --- the emulator's wire contract (plain httpx) -------------------------------------------------


def test_wire_contract(fresh: Emulator) -> None:
    with httpx.Client(base_url=fresh.url, headers=AUTH, timeout=10) as http:
        unauthorised = httpx.post(f"{fresh.url}/v1/models/{EDIT}", json=EDIT_INPUTS)
        assert unauthorised.status_code == 401 and "error_code" in unauthorised.json()
        bad_id = http.post("/v1/models/flux", json=EDIT_INPUTS)
        assert bad_id.status_code == 400 and bad_id.json()["error_code"] == 400001
        unknown = http.post("/v1/models/nobody/none", json=EDIT_INPUTS)
        assert unknown.status_code == 404 and unknown.json()["error_code"] == 400001
        plain_http = http.post(f"/v1/models/{EDIT}", json={**EDIT_INPUTS, "image_url": "http://x.org/a"})
        assert plain_http.status_code == 422
        assert plain_http.json()["detail"][0]["loc"] == ["body", "image_url"]
        gone = http.get("/v1/requests/nope/result")
        assert gone.status_code == 404 and gone.json()["error_code"] == 404001

        run = http.post(f"/v1/models/{EDIT}", json=EDIT_INPUTS).json()
        rid = run["request_id"]
        assert run["status_url"] == f"{fresh.url}/v1/requests/{rid}/status"
        assert run["result_url"].endswith("/result") and run["cancel_url"].endswith("/cancel")
        seen = []

        def completed() -> dict[str, Any] | None:
            status: dict[str, Any] = http.get(run["status_url"]).json()
            seen.append(status["status"])
            return status if status["status"] == "completed" else None

        status = wait_for(completed, what="the request to complete")
        assert seen[-1] == "completed" and set(seen) <= {"in_queue", "in_progress", "completed"}
        assert {"request_id", "status_url", "result_url"} <= set(status)
        result = http.get(run["result_url"]).json()
        assert result["status"] == "succeeded" and result["output"].startswith(fresh.url)
        assert result["created_at"] <= result["finished_at"]
        late = http.post(run["cancel_url"])
        assert late.status_code == 202
        assert late.json() == {"request_id": rid, "status": "completed", "outcome": "not_cancellable"}

        assert httpx.get(result["output"], headers=AUTH).status_code == 403  # credentials refused
        assert fresh.leaks and fresh.leaks[-1].startswith("/storage/models/")
        fresh.state.leaks.clear()
        assert httpx.get(result["output"]).headers["content-type"] == "image/png"

        fresh.set_fault(EDIT, "slow_queue", seconds=500)
        queued = http.post(f"/v1/models/{EDIT}", json=EDIT_INPUTS).json()
        status = http.get(queued["status_url"]).json()
        assert status["status"] == "in_queue" and isinstance(status["queue_position"], int)
        cancel = http.post(queued["cancel_url"])
        assert cancel.status_code == 202 and cancel.json()["outcome"] == "cancelled"
        assert http.get(queued["status_url"]).json()["status"] == "cancelled"
        assert http.get(queued["result_url"]).json()["status"] == "cancelled"

        listed = http.get("/v1/models", params={"search": "wan", "include_schema": "true"}).json()
        assert listed["total"] == 1 and listed["models"][0]["input_schema"]["required"] == ["prompt",
                                                                                           "image_url"]
        assert http.get("/v1/models/categories").json()["categories"] == sorted(
            {"image-to-image", "image-to-video", "text-to-image"})
