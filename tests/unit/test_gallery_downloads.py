"""Gallery, issue 16 point 3: size and dimensions per file, video and audio that play inline, a
download button per file and one ZIP of all (live widget: bytes from the kernel or a data URL;
static view: a data URI only for a small file, else where it was saved)."""

from __future__ import annotations

import asyncio
import base64
import io
import random
import re
import struct
import wave
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from runcomfy_nb.emulator import synth
from runcomfy_nb.media import Media, classify
from runcomfy_nb.widgets import Gallery
from runcomfy_nb.widgets import gallery as gallery_module
from runcomfy_nb.widgets.images import dimensions, human_size, mp4_size

from ..helpers import wait_for

pytestmark = pytest.mark.skipif(not synth.can_make_mp4(), reason="needs PyAV (the emulator extra)")


def wav(seconds: float = 0.5, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(rate)
        sound.writeframes(b"".join(struct.pack("<h", (n * 300) % 20000 - 10000)
                                   for n in range(int(seconds * rate))))
    return out.getvalue()


def png(width: int, height: int) -> bytes:
    """Noise: a PNG that does not compress (hundreds of KB), too large to embed."""
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), random.Random(5).randbytes(width * height * 3)).save(out, "PNG")
    return out.getvalue()


class Fetcher:
    """Reads files from a dict on one loop, as the clients' fetchers do."""

    def __init__(self, files: dict[str, bytes], loop: asyncio.AbstractEventLoop) -> None:
        self.files, self.loop, self.reads = files, loop, []  # type: ignore[var-annotated]

    async def read(self, media: Media) -> bytes:
        self.reads.append(media.filename)
        value = self.files[media.filename]
        if isinstance(value, Exception):
            raise value
        return value

    async def save(self, media: Media, path: Path) -> Path:
        path.write_bytes(await self.read(media))
        return path


@pytest.fixture
def thread_loop() -> Iterator[asyncio.AbstractEventLoop]:
    import threading

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    gallery_module._cache.clear()


def files() -> dict[str, bytes]:
    big = bytearray(synth.video(3, "big"))
    return {"clip.mp4": synth.video(7, "a ball"), "voice.wav": wav(), "still.png": png(640, 360),
            # a video too large to inline: a real MP4 padded with a `free` box to 600 KB
            "long.mp4": bytes(big) + struct.pack(">I", 600_000) + b"free" + b"\0" * (600_000 - 8),
            "notes.txt": b"hello"}


def media_for(fetcher: Fetcher, *names: str) -> list[Media]:
    return [Media(url=f"https://machine.secret/view?filename={n}", filename=n,
                  kind=classify(n, "gifs"), _fetcher=fetcher) for n in names]


def test_dimensions_and_sizes() -> None:
    clip = synth.video(7, "a ball")
    assert mp4_size(clip) == (256, 256) == dimensions(clip)
    assert dimensions(png(640, 360)) == (640, 360)
    assert dimensions(wav()) == (0, 0) and dimensions(b"garbage") == (0, 0)
    assert [human_size(n) for n in (812, 6237, 3_400_000, 2_500_000_000)] == [
        "812 B", "6.2 KB", "3.4 MB", "2.5 GB"]


def test_items_carry_size_dimensions_and_players(thread_loop: asyncio.AbstractEventLoop) -> None:
    data = files()
    fetcher = Fetcher(data, thread_loop)
    gallery = Gallery(media_for(fetcher, "clip.mp4", "voice.wav", "still.png", "long.mp4"))
    items = {item["filename"]: item for item in gallery.items}
    for name in ("clip.mp4", "voice.wav", "still.png", "long.mp4"):
        assert items[name]["size"] == len(data[name]) and items[name]["error"] == ""
    assert (items["clip.mp4"]["width"], items["clip.mp4"]["height"]) == (256, 256)
    assert (items["still.png"]["width"], items["still.png"]["height"]) == (640, 360)
    assert (items["voice.wav"]["width"], items["voice.wav"]["height"]) == (0, 0)
    # small video and audio play at once from their data URL; the large one waits for a click
    inline = items["clip.mp4"]["src"].removeprefix("data:video/mp4;base64,")
    assert base64.b64decode(inline) == data["clip.mp4"]
    assert items["voice.wav"]["src"].startswith("data:audio/wav;base64,")
    assert items["long.mp4"]["src"] == "" and items["still.png"]["src"] == ""
    assert gallery_module.details(items["clip.mp4"]) == f"{human_size(len(data['clip.mp4']))} · 256×256"
    assert all("machine.secret" not in str(item) for item in gallery.items)


def test_the_static_view_plays_and_downloads_small_files(thread_loop: asyncio.AbstractEventLoop,
                                                         tmp_path: Path) -> None:
    data = files()
    saved = tmp_path / "long.mp4"
    gallery = Gallery(media_for(Fetcher(data, thread_loop), "clip.mp4", "voice.wav", "still.png", "long.mp4"),
                      paths=[None, None, None, saved])
    html = gallery._repr_mimebundle_()[0]["text/html"]
    clip = base64.b64encode(data["clip.mp4"]).decode()
    assert re.search(r'<video controls[^>]*src="data:video/mp4;base64,' + re.escape(clip), html)
    assert '<audio controls' in html
    assert f'<a download="clip.mp4" href="data:video/mp4;base64,{clip}"' in html
    assert '<a download="voice.wav" href="data:audio/wav;base64,' in html
    # too large to embed: no data URI, but where it was saved; a large still has no link either
    assert 'download="long.mp4"' not in html and f"saved: {saved}" in html
    assert 'download="still.png"' not in html
    assert "256×256" in html and "640×360" in html and human_size(len(data["long.mp4"])) in html
    assert "machine.secret" not in html and len(html) < 150_000


def test_paths_must_match() -> None:
    with pytest.raises(ValueError, match="1 paths for 2 media"):
        Gallery([Media(url="https://f/x.png", filename="x.png", kind="image")] * 2, paths=["a"])


def record(gallery: Gallery) -> list[dict[str, Any]]:
    """The custom messages the gallery sends to the browser (not its state syncs)."""
    sent: list[dict[str, Any]] = []
    original = gallery.comm.send  # type: ignore[union-attr]

    def send(data: Any = None, metadata: Any = None, buffers: Any = None) -> None:
        if isinstance(data, dict) and data.get("method") == "custom":
            sent.append({"data": data, "buffers": buffers})
        original(data=data, metadata=metadata, buffers=buffers)

    gallery.comm.send = send  # type: ignore[union-attr]
    return sent


def test_download_all_is_one_zip_from_the_kernel(thread_loop: asyncio.AbstractEventLoop) -> None:
    data = files()
    names = ("clip.mp4", "still.png", "notes.txt", "still.png")
    gallery = Gallery(media_for(Fetcher(data, thread_loop), *names))
    sent = record(gallery)
    gallery._handle_custom_msg({"type": "fetch_all"}, [])
    wait_for(lambda: len(sent) == 1, timeout=10)
    content, buffers = sent[0]["data"]["content"], sent[0]["buffers"]
    assert content == {"type": "zip", "name": "outputs.zip", "mime": "application/zip"}
    with zipfile.ZipFile(io.BytesIO(bytes(buffers[0]))) as archive:
        assert archive.namelist() == ["clip.mp4", "still.png", "notes.txt", "still (2).png"]
        assert archive.read("clip.mp4") == data["clip.mp4"]
        assert archive.read("still (2).png") == data["still.png"]


def test_download_all_says_why_it_failed(thread_loop: asyncio.AbstractEventLoop) -> None:
    data: dict[str, bytes] = {**files(), "gone.png": RuntimeError("reset by https://machine.secret/x")}  # type: ignore[dict-item]
    gallery = Gallery(media_for(Fetcher(data, thread_loop), "clip.mp4", "gone.png"))
    sent = record(gallery)
    gallery._handle_custom_msg({"type": "fetch_all"}, [])
    wait_for(lambda: len(sent) == 1, timeout=10)
    content = sent[0]["data"]["content"]
    assert content["type"] == "zip" and content["error"].startswith("RuntimeError")
    assert not sent[0]["buffers"]


def test_a_played_large_video_fills_in_its_tile(thread_loop: asyncio.AbstractEventLoop) -> None:
    # a tile whose file could not be read at first (its size unknown) learns it from a fetch
    data = files()
    flaky = Fetcher({**data, "long.mp4": RuntimeError("busy")}, thread_loop)  # type: ignore[dict-item]
    gallery = Gallery(media_for(flaky, "long.mp4"))
    assert gallery.items[0]["size"] == 0 and gallery.items[0]["error"].startswith("could not load")
    flaky.files["long.mp4"] = data["long.mp4"]
    sent = record(gallery)
    gallery._handle_custom_msg({"type": "fetch", "index": 0}, [])
    wait_for(lambda: gallery.items[0]["size"] == len(data["long.mp4"]), timeout=10)
    assert (gallery.items[0]["width"], gallery.items[0]["height"]) == (256, 256)
    assert bytes(sent[0]["buffers"][0]) == data["long.mp4"]
