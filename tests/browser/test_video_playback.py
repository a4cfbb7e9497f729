"""The gallery in Debian's Chromium with a real emulator MP4 (issue 16 point 3): the <video> plays
(its currentTime advances, videoWidth > 0), the <audio> loads, every tile shows its size and
dimensions and has a download button, and "download all" asks the kernel for one ZIP.

The page is the gallery's ES module as anywidget gets it (`widget_files()`), rendered with the
fake model of fake_model.js, with items made by the Python side (`Gallery(...).items`)."""

from __future__ import annotations

import asyncio
import functools
import html
import io
import json
import re
import struct
import subprocess
import threading
import wave
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from runcomfy_nb.emulator import synth
from runcomfy_nb.media import Media
from runcomfy_nb.widgets import Gallery
from runcomfy_nb.widgets.images import human_size

from .conftest import ROOT, Handler, chromium, widget_files

pytestmark = pytest.mark.skipif(not synth.can_make_mp4(), reason="needs PyAV (the emulator extra)")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>video</title></head>
<body><div id="one"></div><pre id="results">pending</pre>
<script type="application/json" id="items">__ITEMS__</script>
<script type="module">
import { $, FakeModel, loadWidget, until } from "/tests/browser/fake_model.js";
const out = {};
try {
  const { default: widget } = await loadWidget("gallery");
  const items = JSON.parse(document.getElementById("items").textContent);
  // a fourth tile: the same MP4 as if too large to inline (no src), fetched through the kernel on play
  const mp4 = new Uint8Array(await (await fetch(items[0].src)).arrayBuffer());
  items.push({ ...items[0], filename: "long.mp4", src: "", size: 0, width: 0, height: 0 });
  const model = new FakeModel({ items, texts: [], loading: false });
  const saved = []; // what the download buttons saved: an <a download> clicked
  HTMLAnchorElement.prototype.click = function () {
    saved.push({ name: this.download, href: this.href.slice(0, 22) });
  };
  const bytes = (...values) => [new DataView(new Uint8Array(values).buffer)];
  model.onSend = (content) => setTimeout(() => {
    if (content.type === "fetch" && content.index === 3) {
      model.trigger("msg:custom", { type: "file", index: 3, mime: "video/mp4" }, [new DataView(mp4.buffer)]);
    } else if (content.type === "fetch") {
      model.trigger("msg:custom", { type: "file", index: content.index, mime: "image/png" }, bytes(1, 2, 3));
    } else if (content.type === "fetch_all") {
      model.trigger("msg:custom", { type: "zip", name: "outputs.zip" }, bytes(80, 75));
    }
  }, 10);
  const el = document.getElementById("one");
  widget.render({ model, el });
  const tiles = [...el.querySelectorAll(".rcnb-tile")];
  out.details = tiles.map((t) => $(t, ".rcnb-details").textContent);
  out.downloadButtons = el.querySelectorAll(".rcnb-tile .rcnb-download").length;
  out.downloadAllShown = !$(el, ".rcnb-toolbar").hidden;

  const video = $(el, "video");
  out.videoControls = Boolean(video && video.controls);
  video.muted = true;
  const times = [];
  video.addEventListener("timeupdate", () => times.push(video.currentTime));
  await video.play();
  await until(() => times.some((t) => t > 0.5), 8000);
  out.video = { width: video.videoWidth, height: video.videoHeight, duration: video.duration,
                advanced: times.some((t) => t > 0.5), error: video.error ? video.error.code : null };
  const audio = $(el, "audio");
  out.audioControls = Boolean(audio && audio.controls);
  await until(() => audio.readyState >= 1, 4000);
  out.audio = { duration: audio.duration, error: audio.error ? audio.error.code : null };

  tiles[0].querySelector(".rcnb-download").click(); // the video: its data URL, no kernel call
  tiles[2].querySelector(".rcnb-download").click(); // the still: through the kernel
  await until(() => saved.length >= 2, 3000);
  $(el, ".rcnb-download-all").click();
  await until(() => saved.length >= 3, 3000);
  out.saved = saved;

  // the kernel's bytes play; what Python learns of the file then keeps the playing element
  $(el, '.rcnb-tile[data-index="3"] .rcnb-play').click();
  await until(() => $(el, '.rcnb-tile[data-index="3"] video'), 3000);
  const long = $(el, '.rcnb-tile[data-index="3"] video');
  long.muted = true;
  await until(() => long.readyState >= 1, 3000);
  const learnt = { size: mp4.length, width: 256, height: 256 };
  model.set("items", items.map((item, i) => (i === 3 ? { ...item, ...learnt } : item)));
  const after = $(el, '.rcnb-tile[data-index="3"] video');
  out.long = { blob: long.src.startsWith("blob:"), kept: after === long, width: long.videoWidth,
               details: $(el, '.rcnb-tile[data-index="3"] .rcnb-details').textContent };
  out.sent = model.sent;
  out.ok = true;
} catch (err) {
  out.ok = false;
  out.error = String(err && err.stack || err);
}
document.getElementById("results").textContent = JSON.stringify(out);
</script></body></html>
"""


def wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(rate)
        samples = ((n * 400) % 16000 - 8000 for n in range(int(seconds * rate)))  # a sawtooth
        sound.writeframes(b"".join(struct.pack("<h", v) for v in samples))
    return out.getvalue()


class Files:
    """A fetcher of fixed bytes on its own loop, as a client's fetcher."""

    def __init__(self, files: dict[str, bytes], loop: asyncio.AbstractEventLoop) -> None:
        self.files, self.loop = files, loop

    async def read(self, media: Media) -> bytes:
        return self.files[media.filename]

    async def save(self, media: Media, path: Path) -> Path:
        path.write_bytes(self.files[media.filename])
        return path


@pytest.fixture
def items() -> Iterator[list[dict[str, Any]]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    files = {"ComfyUI_00001.mp4": synth.video(7, "a red ball"), "voice.wav": wav(),
             "still.png": synth.image(1, "a still", 320, 200)}
    fetcher = Files(files, loop)
    media = [Media(url=f"https://machine.secret/{n}", filename=n, kind=kind, _fetcher=fetcher)
             for n, kind in (("ComfyUI_00001.mp4", "video"), ("voice.wav", "audio"), ("still.png", "image"))]
    try:
        yield Gallery(media).items
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_the_emulator_mp4_plays_in_chromium(items: list[dict[str, Any]], tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "video.html").write_text(PAGE.replace("__ITEMS__", json.dumps(items).replace("</", "<\\/")))
    handler = type("VideoHandler", (Handler,), {"extra": served, "widgets": widget_files()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(ROOT)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--disable-background-networking", "--disable-component-update", "--no-first-run",
                   "--mute-audio", "--autoplay-policy=no-user-gesture-required",
                   f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom",
                   f"http://127.0.0.1:{httpd.server_address[1]}/t/video.html"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    match = re.search(r'<pre id="results">(.*?)</pre>', done.stdout, re.DOTALL)
    assert match and match.group(1) != "pending", done.stderr[-3000:]
    r = json.loads(html.unescape(match.group(1)))
    assert r.pop("ok"), r.get("error")

    assert r["videoControls"] and r["audioControls"]
    assert r["video"]["error"] is None and r["video"]["advanced"]
    assert (r["video"]["width"], r["video"]["height"]) == (256, 256)
    assert r["video"]["duration"] == pytest.approx(2.0)  # 24 frames at 12 fps
    assert r["audio"]["error"] is None and r["audio"]["duration"] == pytest.approx(1.0, abs=0.05)
    assert r["details"] == [f"{human_size(items[0]['size'])} · 256×256", human_size(items[1]["size"]),
                            f"{human_size(items[2]['size'])} · 320×200", ""]
    assert r["downloadButtons"] == 4 and r["downloadAllShown"]
    assert r["saved"] == [{"name": "ComfyUI_00001.mp4", "href": "data:video/mp4;base64,"},
                          {"name": "still.png", "href": "blob:http://127.0.0.1:"},
                          {"name": "outputs.zip", "href": "blob:http://127.0.0.1:"}]
    assert r["sent"] == [{"type": "fetch", "index": 2}, {"type": "fetch_all"}, {"type": "fetch", "index": 3}]
    assert r["long"] == {"blob": True, "kept": True, "width": 256,
                         "details": f"{human_size(items[0]['size'])} · 256×256"}
