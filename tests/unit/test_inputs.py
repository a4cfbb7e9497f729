"""Local files as inputs: which values are local files, content checks, uploads, data URIs, URLs only."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from runcomfy_nb.errors import ValidationError
from runcomfy_nb.inputs import (
    check_file,
    data_uri_inputs,
    local_file,
    require_public_urls,
    upload_local_files,
)
from runcomfy_nb.workflow import Workflow


def _png(path: Path, size: tuple[int, int] = (4, 4)) -> Path:
    Image.new("RGB", size, "red").save(path)
    return path


def test_local_file_names_only_existing_local_media(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "cat.png")
    (tmp_path / "notes.txt").write_text("x")
    assert local_file("cat.png") == Path("cat.png")
    assert local_file(str(tmp_path / "cat.png")) == tmp_path / "cat.png"
    assert local_file(tmp_path / "any.png") == tmp_path / "any.png"  # a Path is always meant as a file
    for value in ("example.png", "https://h/cat.png", "data:image/png;base64,AA", "notes.txt", 3,
                  ["4", 0], "x" * 5000 + ".png"):
        assert local_file(value) is None


def test_formats_are_checked_by_content(tmp_path: Path) -> None:
    assert check_file(_png(tmp_path / "a.png")) == "image"
    samples = {"v.mp4": b"\0\0\0\x18ftypisom", "v.webm": b"\x1a\x45\xdf\xa3\x01",
               "s.wav": b"RIFF\0\0\0\0WAVE", "s.mp3": b"ID3\x04", "s.flac": b"fLaC", "s.ogg": b"OggS\0"}
    for name, head in samples.items():
        (tmp_path / name).write_bytes(head + b"\0" * 16)
        assert check_file(tmp_path / name) in {"video", "audio"}
    (tmp_path / "fake.png").write_bytes(b"GIF89a nonsense")
    (tmp_path / "fake.mp4").write_bytes(b"OggS" + b"\0" * 20)
    with pytest.raises(ValidationError, match="not a readable image"):
        check_file(tmp_path / "fake.png")
    with pytest.raises(ValidationError, match=r"not a mp4 file \(its content looks like ogg\)"):
        check_file(tmp_path / "fake.mp4")


async def test_upload_replaces_each_local_file_once(tmp_path: Path) -> None:
    image = _png(tmp_path / "in.png")
    (tmp_path / "clip.webm").write_bytes(b"\x1a\x45\xdf\xa3" + b"\0" * 20)
    workflow = Workflow({
        "1": {"class_type": "LoadImage", "inputs": {"image": str(image)}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": "VHS_LoadVideo", "inputs": {"video": str(tmp_path / "clip.webm")}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1}},
    })
    sent: list[Path] = []

    async def upload(path: Path) -> str:
        sent.append(path)
        return f"stored/{path.name}"

    out = await upload_local_files(workflow, upload)
    assert isinstance(out, Workflow)
    assert sent == [image, tmp_path / "clip.webm"]
    api = out.to_api()
    assert [api[n]["inputs"].get("image") or api[n]["inputs"]["video"] for n in "1234"] == [
        "stored/in.png", "stored/in.png", "stored/clip.webm", "example.png"]
    assert api["5"]["inputs"] == {"model": ["1", 0], "seed": 1}
    assert workflow.to_api()["1"]["inputs"]["image"] == str(image)  # the original is unchanged
    plain = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}}}
    assert await upload_local_files(plain, upload) == plain


async def test_a_bad_file_stops_the_upload_before_anything_is_sent(tmp_path: Path) -> None:
    good = _png(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": str(good)}},
                "2": {"class_type": "LoadImage", "inputs": {"image": str(tmp_path / "bad.png")}}}

    async def upload(path: Path) -> str:
        raise AssertionError("nothing may be sent")

    with pytest.raises(ValidationError, match=r"bad\.png"):
        await upload_local_files(workflow, upload)


def test_serverless_gets_data_uris_within_the_documented_limits(tmp_path: Path) -> None:
    small = _png(tmp_path / "small.png")
    overrides = {"189": {"inputs": {"image": str(small), "note": "keep"}},
                 "190": {"inputs": {"image": "https://example.org/in.jpg"}}}
    out = data_uri_inputs(overrides)
    uri = out["189"]["inputs"]["image"]
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == small.read_bytes()
    assert out["189"]["inputs"]["note"] == "keep" and out["190"] == overrides["190"]
    assert overrides["189"]["inputs"]["image"] == str(small)


def test_too_large_for_a_data_uri_asks_for_a_public_url(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    noise = Image.frombytes("RGB", (400, 400), bytes(range(256)) * 1875)
    buffer = io.BytesIO()
    noise.save(buffer, "PNG", compress_level=0)
    big.write_bytes(buffer.getvalue())
    assert big.stat().st_size > 256 * 1024
    with pytest.raises(ValidationError, match=r"big.png is 4\d\d KB; .* images as data URIs up to "
                                              r"256 KB\. .*public.*https URL"):
        data_uri_inputs({"1": {"inputs": {"image": big}}})
    video = tmp_path / "long.mp4"
    video.write_bytes(b"\0\0\0\x18ftypisom" + b"\0" * (1024 * 1024))
    with pytest.raises(ValidationError, match="up to 1,024 KB"):
        data_uri_inputs({"1": {"inputs": {"video": str(video)}}})


def test_lora_and_model_api_need_public_https_urls(tmp_path: Path) -> None:
    require_public_urls({"prompt": "a cat.png on a mat", "ctrl_img_1": "https://h/in.webp",
                         "seed": 3, "sizes": [1, 2]}, "LoRA deployment")
    local = _png(tmp_path / "in.png")
    for bad in (local, str(local), "http://h/in.png", "data:image/png;base64,AA",
                ["https://h/a.png", "b.jpg"]):
        with pytest.raises(ValidationError, match="Model API needs a public https URL"):
            require_public_urls({"image_url": bad}, "Model API")
