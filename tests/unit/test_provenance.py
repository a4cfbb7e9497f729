"""Provenance: built without secrets, embedded in PNG/WebP without touching the pixels, read back."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from runcomfy_nb.config import Secret
from runcomfy_nb.errors import ValidationError
from runcomfy_nb.provenance import (
    embed,
    read_metadata,
    record,
    sidecar,
    without_provenance,
    workflow_from_output,
)
from runcomfy_nb.workflow import Workflow

API = {"3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 4, "model": ["4", 0]}},
       "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}}}


def _image(fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (5, 3), (10, 200, 30, 128)).save(buffer, fmt, **save)
    return buffer.getvalue()


def _pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.convert("RGBA").tobytes()


def _prov() -> dict:
    return record(target="comfyui", kind="comfyui", job_id="p-1", workflow=Workflow(API),
                  extra_data={"api_key_comfy_org": "comfyui-xyz", "token": Secret("t"),
                              "extra_pnginfo": {"workflow": {"nodes": []}}, "client_id": "c"})


def test_record_keeps_the_rerun_and_drops_secrets() -> None:
    prov = _prov()
    assert prov["workflow"] == API and prov["seeds"] == {"3": {"seed": 7}}
    assert prov["extra_data"] == {"extra_pnginfo": {"workflow": {"nodes": []}}, "client_id": "c"}
    assert "comfyui-xyz" not in json.dumps(prov)
    flat = record(target="model-1", kind="model", job_id="r", inputs={"seed": 3, "api_key": "k"})
    assert flat["inputs"] == {"seed": 3} and flat["seeds"] == {"seed": 3}
    with pytest.raises(ValueError):
        record(target="https://x.example/comfy", kind="comfyui", job_id="j")


def test_png_gets_comfyui_chunks_and_keeps_its_bytes(tmp_path: Path) -> None:
    original = _image("PNG")
    path = tmp_path / "x.png"
    path.write_bytes(original)
    before = _pixels(path)
    assert embed(path, _prov()) == path
    data = path.read_bytes()
    assert original[33:] in data  # the image chunks are the original bytes
    assert without_provenance(data) == original
    assert _pixels(path) == before
    with Image.open(path) as image:  # what ComfyUI's loader reads
        assert json.loads(image.text["prompt"]) == API
        assert json.loads(image.text["workflow"]) == {"nodes": []}
    assert read_metadata(path)["runcomfy"]["job_id"] == "p-1"


@pytest.mark.parametrize("save", [{"lossless": True}, {"quality": 80}])
def test_webp_gets_comfyui_exif_and_keeps_its_pixels(tmp_path: Path, save: dict) -> None:
    path = tmp_path / "x.webp"
    path.write_bytes(_image("WEBP", **save))
    before = _pixels(path)
    assert embed(path, _prov()) == path
    assert _pixels(path) == before
    with Image.open(path) as image:
        exif = image.getexif()
        assert exif[0x0110] == "prompt:" + json.dumps(API)
        assert exif[0x010F].startswith("workflow:")
    found, info = workflow_from_output(path, Workflow)
    assert isinstance(found, Workflow) and found.to_api() == API
    assert info["target"] == "comfyui" and info["job_id"] == "p-1"


def test_animated_webp_keeps_its_frames(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    path = tmp_path / "a.webp"
    path.write_bytes(buffer.getvalue())
    embed(path, _prov())
    with Image.open(path) as image:
        assert image.n_frames == 2
    assert read_metadata(path)["prompt"] == API


def test_other_files_and_broken_images_get_a_sidecar(tmp_path: Path) -> None:
    prov = record(target="dep-1", kind="serverless", job_id="r-9",
                  overrides={"31": {"inputs": {"seed": 5}}}, extra_data={"api_key_comfy_org": "s"})
    for name, data in (("v.mp4", b"\0\0\0\x18ftypisom"), ("fake.png", b"not a png")):
        path = tmp_path / name
        path.write_bytes(data)
        assert embed(path, prov) == sidecar(path)
        assert path.read_bytes() == data
        found, info = workflow_from_output(path, Workflow)
        assert found == {"31": {"inputs": {"seed": 5}}}
        assert info == {"target": "dep-1", "kind": "serverless", "job_id": "r-9",
                        "seeds": {"31": {"seed": 5}}, "extra_data": {}}


def test_a_png_saved_by_comfyui_reruns(tmp_path: Path) -> None:
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("prompt", json.dumps(API))
    meta.add_text("workflow", json.dumps({"nodes": []}))
    path = tmp_path / "ComfyUI_00001_.png"
    Image.new("RGB", (2, 2)).save(path, pnginfo=meta)
    found, info = workflow_from_output(path, Workflow)
    assert isinstance(found, Workflow) and found.to_api() == API
    assert info == {"target": None, "kind": "comfyui"}


def test_files_without_a_workflow_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (2, 2)).save(path)
    with pytest.raises(ValidationError, match="carries no workflow"):
        workflow_from_output(path, Workflow)


class _Fetcher:
    loop = None

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, media: object) -> bytes:
        return self.data

    async def save(self, media: object, path: Path) -> Path:
        path.write_bytes(self.data)
        return path


async def test_a_results_save_carries_the_jobs_provenance(tmp_path: Path) -> None:
    from runcomfy_nb.events import JobResult
    from runcomfy_nb.media import Media

    fetcher = _Fetcher(_image("PNG"))
    result = JobResult("p-1", media=[Media.from_url("https://h/x.png", fetcher=fetcher)])
    same = result.media[0]
    result.with_provenance(_prov())
    assert result.media[0] is same and result.provenance["job_id"] == "p-1"  # what Output events held
    [path] = await result.save(tmp_path)
    assert read_metadata(path)["runcomfy"]["target"] == "comfyui"
    plain = Media.from_url("https://h/x.png", fetcher=fetcher)
    untouched = await plain.save(tmp_path, "y.png")  # no provenance: the bytes as downloaded
    assert untouched.read_bytes() == fetcher.data


def test_comfyuis_own_text_chunks_are_replaced_not_doubled(tmp_path: Path) -> None:
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("prompt", json.dumps({"old": {}}))
    meta.add_text("parameters", "kept")
    path = tmp_path / "c.png"
    Image.new("RGB", (2, 2)).save(path, pnginfo=meta)
    embed(path, _prov())
    assert path.read_bytes().count(b"tEXtprompt") == 1
    assert read_metadata(path)["prompt"] == API and read_metadata(path)["parameters"] == "kept"


def test_without_secrets_shares_what_holds_none() -> None:
    from runcomfy_nb.provenance import without_secrets

    node = {"class_type": "KSampler", "inputs": {"seed": 1, "model": ["4", 0]}}
    extra = {"api_key_comfy_org": "k", "note": {"token": "t", "kept": 1}}
    cleaned = without_secrets({"3": node, "extra": extra})
    assert cleaned["3"] is node  # a sweep's jobs share their unchanged nodes, not one copy each
    assert cleaned["extra"] == {"note": {"kept": 1}} and extra["note"]["token"] == "t"
