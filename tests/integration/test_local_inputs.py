"""Local files as inputs against the emulator: uploaded to Comfy Cloud and replaced by their stored
names, sent to a serverless deployment as data URIs, refused by a LoRA deployment."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

import runcomfy_nb as rc
from runcomfy_nb.clients.cloud import AsyncComfyCloud
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.errors import ValidationError
from runcomfy_nb.inputs import data_uri_inputs, require_public_urls, upload_local_files
from runcomfy_nb.status import Status

from ..doubles.comfyui_double import ComfyDouble
from ..helpers import image_workflow, posts

CLOUD_KEY = "comfyui-local-inputs-key-SENTINEL-31"


@pytest.fixture
async def cloud(fresh: Emulator) -> AsyncIterator[AsyncComfyCloud]:
    fresh.cloud_account(CLOUD_KEY, tier="creator", active=True, credits=1000)
    async with AsyncComfyCloud(CLOUD_KEY, base_url=fresh.cloud_url) as client:
        yield client


def _png(path: Path, color: str = "red") -> Path:
    Image.new("RGB", (8, 8), color).save(path)
    return path


def _with_loader(image: object) -> dict:
    wf = image_workflow()
    wf["10"] = {"class_type": "LoadImage", "inputs": {"image": image}}
    wf["11"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "loaded"}}
    return wf


async def test_cloud_uploads_local_files_then_runs(cloud: AsyncComfyCloud, tmp_path: Path) -> None:
    local = _png(tmp_path / f"in-{tmp_path.name}.png")
    job = await cloud.queue(_with_loader(str(local)))  # the client uploads it first
    await job.result(timeout=30)
    assert job.status is Status.SUCCEEDED
    stored = job.provenance["workflow"]["10"]["inputs"]["image"]
    assert stored.endswith(".png") and str(tmp_path) not in stored  # Cloud names files by their hash


async def test_comfyui_uploads_a_local_file_first(tmp_path: Path) -> None:
    local = _png(tmp_path / "sketch.png", "blue")
    async with ComfyDouble() as double, rc.AsyncComfyUI(double.url) as comfy:
        loaded = {"10": {"class_type": "LoadImage", "inputs": {"image": local}},  # a Path
                  "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "in"}}}
        job = await comfy.queue(loaded)
        await job.result(timeout=30)
        assert double.count("POST", "/upload/image") == 1 and double.count("POST", "/prompt") == 1
        sent = job.provenance["workflow"]["10"]["inputs"]["image"]
        assert sent == "sketch.png" and job.status is Status.SUCCEEDED


async def test_upload_local_files_replaces_each_path_by_its_stored_name(tmp_path: Path) -> None:
    local = _png(tmp_path / "in.png")
    seen: list[Path] = []

    async def upload(path: Path) -> str:
        seen.append(path)
        return "stored (1).png"

    twice = {**_with_loader(str(local)), "12": {"class_type": "LoadImage", "inputs": {"image": local}}}
    wf = await upload_local_files(rc.Workflow(twice), upload)
    assert seen == [local]  # one upload for a file used twice
    assert wf.data["10"]["inputs"]["image"] == wf.data["12"]["inputs"]["image"] == "stored (1).png"


async def test_a_file_that_is_not_an_image_sends_nothing(cloud: AsyncComfyCloud, fresh: Emulator,
                                                         tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"<html>not an image</html>")
    before = len(fresh.log)

    async def upload(path: Path) -> str:
        return (await cloud.upload(path)).name

    with pytest.raises(ValidationError, match=r"fake\.png is not a readable image"):
        await upload_local_files(_with_loader(str(fake)), upload)
    assert len(fresh.log) == before


async def test_serverless_takes_a_small_local_image_as_a_data_uri(client: rc.AsyncRunComfy,
                                                                  tmp_path: Path) -> None:
    local = _png(tmp_path / "small.png")
    wf = data_uri_inputs(_with_loader(str(local)))
    assert base64.b64decode(wf["10"]["inputs"]["image"].split(",", 1)[1]) == local.read_bytes()
    job = await client.deployments.submit("dep-flux-kontext", workflow=wf)
    result = await job.result(timeout=30)
    assert result.media and job.status is Status.SUCCEEDED


async def test_lora_refuses_a_local_file_before_the_post(client: rc.AsyncRunComfy, fresh: Emulator,
                                                         tmp_path: Path) -> None:
    inputs = {"prompt": "a portrait", "ctrl_img_1": str(_png(tmp_path / "in.png"))}
    before = posts(fresh, "dep-lora-portrait")
    with pytest.raises(ValidationError, match="needs a public https URL"):
        require_public_urls(inputs, "LoRA deployment dep-lora-portrait")
    assert posts(fresh, "dep-lora-portrait") == before
