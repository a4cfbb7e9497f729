"""JobProgress and Gallery, driven by a real `Job` with a scripted backend and fake fetchers."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from IPython.core.formatters import DisplayFormatter
from PIL import Image

from runcomfy_nb import register_display
from runcomfy_nb.errors import JobCancelled, JobFailed
from runcomfy_nb.events import Event, JobResult, NodeStarted, Output, Preview, Progress, Queued, Started
from runcomfy_nb.jobs import Job
from runcomfy_nb.media import Media, classify
from runcomfy_nb.widgets import Gallery, JobProgress
from runcomfy_nb.widgets import gallery as gallery_module

from ..helpers import until, wait_for

HOLD = "hold"  # a script step: wait until cancelled


class Script:
    """A fake JobBackend: plays its steps (events, gates, pauses, errors) with awaits between."""

    def __init__(self, *steps: Any, media: list[Media] | None = None) -> None:
        self.steps = steps
        self.media = media or []
        self.cancel_calls = 0
        self.cancel_threads: list[int] = []
        self._cancelled = asyncio.Event()

    async def run(self, job: Job) -> JobResult:
        for step in self.steps:
            if isinstance(step, Event):
                job.emit(step)
                await asyncio.sleep(0)
            elif isinstance(step, asyncio.Event):
                await step.wait()
            elif isinstance(step, (int, float)):
                await asyncio.sleep(step)
            elif isinstance(step, Exception):
                raise step
            elif callable(step):
                await step(job)
            elif step == HOLD:
                await self._cancelled.wait()
                raise JobCancelled("cancelled by the user", job_id=job.id)
        return JobResult(job.id, media=list(self.media), text=[])

    async def cancel(self) -> bool:
        self.cancel_calls += 1
        self.cancel_threads.append(threading.get_ident())
        self._cancelled.set()
        return True


def picture(width: int, height: int, seed: int = 1) -> Image.Image:
    """Something like a generated image: smooth shapes with fine grain, not pure noise."""
    zoom = 1 + seed * 0.15
    fractal = Image.effect_mandelbrot((width, height), (-2 / zoom, -1.2 / zoom, 1 / zoom, 1.2 / zoom), 60)
    gradient = Image.linear_gradient("L").resize((width, height))
    grain = Image.effect_noise((width, height), 12)
    return Image.merge("RGB", (fractal, gradient, Image.blend(gradient.rotate(90), grain, 0.3)))


def png(width: int, height: int, *, alpha: bool = False, seed: int = 1) -> bytes:
    image = picture(width, height, seed)
    if alpha:  # a soft transparent edge
        image.putalpha(Image.linear_gradient("L").resize((width, height)))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def animated_webp(width: int = 480, height: int = 320, frames: int = 8) -> bytes:
    images = [picture(width, height, i) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "WEBP", save_all=True, append_images=images[1:], duration=80, loop=0, quality=90)
    return out.getvalue()


def animated_gif(width: int = 400, height: int = 300, frames: int = 6) -> bytes:
    images = [picture(width, height, i).convert("P") for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return out.getvalue()


def decode(url: str) -> Image.Image:
    head, _, payload = url.partition(",")
    assert head.startswith("data:image/") and head.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def record_messages(widget: Any) -> list[dict[str, Any]]:
    """Every comm message the widget sends (state syncs and custom messages)."""
    sent: list[dict[str, Any]] = []
    original = widget.comm.send

    def send(data: Any = None, metadata: Any = None, buffers: Any = None) -> None:
        sent.append({"data": data, "buffers": buffers})
        original(data=data, metadata=metadata, buffers=buffers)

    widget.comm.send = send
    return sent


@pytest.fixture
def thread_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop on a background thread, like the sync facade's."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def job_on(loop: asyncio.AbstractEventLoop, backend: Script, **kw: Any) -> Job:
    async def make() -> Job:
        return Job(backend, **kw)

    return asyncio.run_coroutine_threadsafe(make(), loop).result(5)


# --- JobProgress -------------------------------------------------------------------------------


async def test_traits_follow_the_job() -> None:
    gate_queue, gate_run = asyncio.Event(), asyncio.Event()
    media = Media(url="https://files.example/a.png", filename="a.png", kind="image")
    backend = Script(
        Queued(position=3), gate_queue, Started(), NodeStarted("3", "KSampler"), Progress(5, 20, "3"),
        Preview(png(1024, 768), "image/png"), gate_run, Output(media), media=[media],
    )
    job = Job(backend, kind="deployment", id="5b0c9e2a-7d4f", label="dep-flux-kontext")
    widget = JobProgress(job)
    assert (widget.kind, widget.job_id, widget.label) == ("deployment", "5b0c9e2a-7d4f", "dep-flux-kontext")
    assert widget.submitted_at == pytest.approx(job.submitted_at)

    await until(lambda: widget.position == 3)
    assert widget.status == "queued"
    gate_queue.set()
    await until(lambda: widget.step == 5 and widget.preview != "")
    assert widget.status == "running" and widget.position is None and widget.started_at
    assert (widget.steps, widget.node, widget.node_title) == (20, "3", "KSampler")
    preview = decode(widget.preview)
    assert max(preview.size) <= 256 and preview.size == (256, 192)
    assert widget.finished_at is None

    gate_run.set()
    await job.wait(5)
    assert widget.status == "succeeded" and widget.outputs == 1 and widget.finished_at
    assert widget.nodes_done == 1 and widget.error == ""
    await until(lambda: widget.preview == "")  # the gallery shows the outputs: no last preview above it


async def test_a_failed_job_keeps_its_last_preview() -> None:
    job = Job(Script(Started(), Preview(png(64, 64), "image/png"), JobFailed("out of memory")),
              kind="comfyui", id="p-failed")
    widget = JobProgress(job)
    await job.wait(5)
    await until(lambda: widget.status == "failed")
    assert widget.preview.startswith("data:image/")  # where it got to


async def test_a_widget_made_late_replays_the_history() -> None:
    backend = Script(Queued(position=1), Started(), NodeStarted("4", "VAE Decode"), Progress(2, 4))
    job = Job(backend, kind="comfyui", id="p1")
    await job.wait(5)
    widget = JobProgress(job)
    assert widget.status == "succeeded" and widget.node_title == "VAE Decode" and widget.step == 2
    assert widget.flushes == 1  # the whole history in one sync


async def test_failure_shows_the_error() -> None:
    backend = Script(Started(), 0.01, JobFailed("CUDA out of memory in KSampler", job_id="j1"))
    job = Job(backend, kind="deployment", id="j1")
    widget = JobProgress(job)
    await job.wait(5)
    assert widget.status == "failed" and "CUDA out of memory" in widget.error
    html = widget._repr_mimebundle_()[0]["text/html"]
    assert "CUDA out of memory" in html and "#dc2626" in html


async def test_other_errors_never_show_urls() -> None:
    leak = RuntimeError("GET https://abc123-secret.runcomfy.com/view?filename=x.png failed")
    job = Job(Script(Started(), leak), kind="comfyui", id="j2")
    widget = JobProgress(job)
    await job.wait(5)
    assert widget.status == "failed" and "runcomfy.com" not in widget.error
    assert widget.error.startswith("RuntimeError: GET <url>")


async def test_cancel_button_from_the_same_loop() -> None:
    backend = Script(Queued(position=2), HOLD)
    job = Job(backend, kind="deployment", id="c1")
    widget = JobProgress(job)
    await until(lambda: widget.position == 2)
    widget._handle_custom_msg({"type": "cancel"}, [])  # what the Cancel button sends
    assert widget.cancelling  # shown at once
    await job.wait(5)
    assert backend.cancel_calls == 1 and backend.cancel_threads == [threading.get_ident()]
    assert widget.status == "cancelled" and not widget.cancelling and widget.error == ""
    widget._handle_custom_msg({"type": "cancel"}, [])  # too late: nothing happens
    await asyncio.sleep(0.05)  # time for a wrong cancel call to happen: there is nothing to wait for
    assert backend.cancel_calls == 1


async def test_cancel_button_from_another_thread() -> None:
    backend = Script(Started(), HOLD)
    job = Job(backend, kind="deployment", id="c2")
    widget = JobProgress(job)
    await until(lambda: widget.status == "running")
    await asyncio.to_thread(widget._handle_custom_msg, {"type": "cancel"}, [])
    await job.wait(5)
    assert backend.cancel_calls == 1 and backend.cancel_threads == [threading.get_ident()]
    assert widget.status == "cancelled"


def test_cancel_when_the_job_lives_on_a_background_loop(thread_loop: asyncio.AbstractEventLoop) -> None:
    backend = Script(Started(), HOLD)
    job = job_on(thread_loop, backend, kind="deployment", id="c3")
    widget = JobProgress(job)  # made on the kernel's thread, as after display()
    wait_for(lambda: widget.status == "running")
    widget._handle_custom_msg({"type": "cancel"}, [])
    wait_for(lambda: widget.status == "cancelled")
    assert backend.cancel_calls == 1 and backend.cancel_threads != [threading.get_ident()]


def test_a_click_never_waits_for_the_jobs_loop(thread_loop: asyncio.AbstractEventLoop) -> None:
    # while a cell blocks, clicks are handled on the kernel's thread (runcomfy_nb.uievents): a
    # handler that waited for the job's loop could hang the kernel, so it only schedules work there
    backend = Script(Started(), HOLD)
    job = job_on(thread_loop, backend, kind="deployment", id="c4")
    widget = JobProgress(job)
    wait_for(lambda: widget.status == "running")
    busy, release, hogged = threading.Event(), threading.Event(), []
    thread_loop.call_soon_threadsafe(lambda: (busy.set(), hogged.append(release.wait(10))))
    assert busy.wait(5)
    widget._handle_custom_msg({"type": "cancel"}, [])
    returned_while_busy = not hogged
    release.set()
    assert returned_while_busy
    wait_for(lambda: widget.status == "cancelled")
    assert backend.cancel_calls == 1


async def test_a_refused_cancel_says_so() -> None:
    class Stubborn(Script):
        async def cancel(self) -> bool:
            self.cancel_calls += 1
            return False

    backend = Stubborn(Started(), HOLD)
    job = Job(backend, kind="deployment", id="c4")
    widget = JobProgress(job)
    await until(lambda: widget.status == "running")
    widget._handle_custom_msg({"type": "cancel"}, [])
    await until(lambda: not widget.cancelling and widget.notice != "")
    assert "did not confirm" in widget.notice and widget.status == "running"
    job.detach()


async def test_many_progress_events_are_batched() -> None:
    gate = asyncio.Event()

    async def burst(job: Job) -> None:
        start = time.monotonic()
        for i in range(1, 201):
            job.emit(Progress(i, 200))
            await asyncio.sleep(0.001)
        burst.seconds = time.monotonic() - start  # type: ignore[attr-defined]

    backend = Script(Started(), NodeStarted("3", "KSampler"), burst, gate)
    job = Job(backend, kind="comfyui", id="t1")
    widget = JobProgress(job)
    await until(lambda: widget.status == "running")
    await asyncio.sleep(0.15)  # let the start settle
    messages = record_messages(widget)
    before = widget.flushes
    await until(lambda: widget.step == 200, timeout=5)
    seconds = burst.seconds  # type: ignore[attr-defined]
    flushes = widget.flushes - before
    # ≤ 10 per second, plus the leading one
    assert flushes <= seconds * 10 + 2, (flushes, seconds)
    assert flushes <= 12  # 200 events, a handful of messages
    assert len([m for m in messages if m["data"].get("method") == "update"]) == flushes
    gate.set()
    await job.wait(5)


async def test_a_terminal_event_flushes_at_once() -> None:
    async def burst(job: Job) -> None:
        for i in range(1, 51):
            job.emit(Progress(i, 50))

    job = Job(Script(Started(), burst), kind="comfyui", id="t2")
    widget = JobProgress(job)
    await job.wait(5)
    # no timer has fired yet: the Finished event itself flushed everything pending
    assert widget.status == "succeeded" and widget.step == 50 and widget.finished_at


async def test_status_changes_are_never_swallowed_by_the_throttle() -> None:
    job = Job(Script(Queued(position=1), Started(), Progress(1, 2)), kind="comfyui", id="t3")
    widget = JobProgress(job)
    seen: list[str] = []
    widget.observe(lambda change: seen.append(change["new"]), names="status")
    await job.wait(5)
    assert seen == ["running", "succeeded"]


async def test_nodes_total_can_be_set_and_read_from_the_job() -> None:
    gate = asyncio.Event()
    job = Job(Script(Started(), NodeStarted("1", "Load"), NodeStarted("2", "KSampler"), gate),
              kind="comfyui", id="n1")
    job.nodes_total = 5  # type: ignore[attr-defined]  # what a ComfyUI client may set
    widget = JobProgress(job)
    await until(lambda: widget.node == "2")
    assert (widget.nodes_done, widget.nodes_total) == (1, 5)
    widget.nodes_total = 7
    gate.set()
    await job.wait(5)
    assert widget.nodes_done == 5  # success: all done (the job's own total wins)


def test_a_job_on_a_background_loop_updates_the_widget(thread_loop: asyncio.AbstractEventLoop) -> None:
    backend = Script(Queued(position=4), 0.05, Started(), Progress(3, 10), 0.05)
    job = job_on(thread_loop, backend, kind="deployment", id="bg1")
    widget = JobProgress(job)
    seen: list[str] = []
    widget.observe(lambda change: seen.append(change["new"]), names="status")
    wait_for(lambda: widget.status == "succeeded")
    assert "running" in seen and widget.step == 3


async def test_mimebundle_has_text_and_static_html() -> None:
    job = Job(Script(Started(), Progress(1, 4)), kind="deployment", id="5b0c9e2a7d4f11ee",
              label="dep-flux-kontext")
    widget = JobProgress(job)
    await job.wait(5)
    data, _meta = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["text/plain"].startswith("<JobProgress dep-flux-kontext/5b0c9e2a… succeeded in ")
    html = data["text/html"]
    assert "<script" not in html and "succeeded" in html and "width:100.0%" in html
    assert "dep-flux-kontext" in html and len(html) < 3000


async def test_mimebundle_while_queued() -> None:
    job = Job(Script(Queued(position=7), HOLD), kind="deployment", id="q1")
    widget = JobProgress(job)
    await until(lambda: widget.position == 7)
    data, _ = widget._repr_mimebundle_()
    assert "queued (8th in queue)" in data["text/plain"]  # position 7: seven ahead of it
    assert "8th in queue" in data["text/html"]
    job.detach()


async def test_display_outside_ipython_prints_the_text(capsys: pytest.CaptureFixture[str]) -> None:
    job = Job(Script(Started()), kind="deployment", id="f1")
    await job.wait(5)
    JobProgress(job)._ipython_display_()
    assert capsys.readouterr().out.startswith("<JobProgress deployment/f1 succeeded in ")


# --- Gallery -----------------------------------------------------------------------------------


class Fetcher:
    """A fake fetcher bound to one loop, like the clients' (`.loop`, `read`, `save`)."""

    def __init__(self, files: dict[str, bytes | Exception], loop: asyncio.AbstractEventLoop,
                 public: bool = False) -> None:
        self.files = files
        self.loop = loop
        self.reads: list[str] = []
        if public:
            self.public_url = lambda media: media.url

    async def read(self, media: Media) -> bytes:
        assert asyncio.get_running_loop() is self.loop
        await asyncio.sleep(0.001)
        self.reads.append(media.filename)
        value = self.files[media.filename]
        if isinstance(value, Exception):
            raise value
        return value

    async def save(self, media: Media, path: Path) -> Path:
        path.write_bytes(await self.read(media))
        return path


@pytest.fixture(autouse=True)
def _empty_thumbnail_cache() -> None:
    gallery_module._cache.clear()


FILES: dict[str, bytes | Exception] = {}


def files() -> dict[str, bytes | Exception]:
    if not FILES:
        FILES.update({
            "big.png": png(1200, 800),
            "alpha.png": png(900, 900, alpha=True, seed=2),
            "anim.webp": animated_webp(),
            "clip.gif": animated_gif(),
            "movie.mp4": b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 5000,
            "voice.wav": b"RIFF" + b"\x00" * 100,
            "broken.png": RuntimeError("connection reset while reading https://machine.secret/view"),
            "notimage.png": b"this is not a png",
        })
    return FILES


def media_for(fetcher: Fetcher, *names: str) -> list[Media]:
    return [Media(url=f"https://files.example/{n}", filename=n, kind=classify(n, "gifs" if n == "clip.gif"
                                                                              else ""),
                  _fetcher=fetcher) for n in names]


ALL = ("big.png", "alpha.png", "anim.webp", "clip.gif", "movie.mp4", "voice.wav", "broken.png")


def check_items(gallery: Gallery) -> None:
    items = {item["filename"]: item for item in gallery.items}
    originals = files()
    for name in ("big.png", "alpha.png", "anim.webp", "clip.gif"):
        thumb = items[name]["thumb"]
        assert thumb and items[name]["error"] == ""
        image = decode(thumb)
        assert max(image.size) <= 384
        assert len(base64.b64decode(thumb.partition(",")[2])) < len(originals[name])  # type: ignore[arg-type]
    assert decode(items["big.png"]["thumb"]).format == "JPEG"
    assert decode(items["alpha.png"]["thumb"]).mode in ("RGBA", "LA", "P")
    for name in ("anim.webp", "clip.gif"):
        moving = decode(items[name]["thumb"])
        assert moving.format == "WEBP" and getattr(moving, "n_frames", 1) > 1 and max(moving.size) <= 192
        assert items[name]["animated"]
    assert items["clip.gif"]["kind"] == "video"
    for name in ("movie.mp4", "voice.wav"):
        assert items[name]["thumb"] == "" and items[name]["error"] == ""
    assert items["movie.mp4"]["kind"] == "video" and items["voice.wav"]["kind"] == "audio"
    assert items["broken.png"]["thumb"] == "" and items["broken.png"]["error"].startswith("could not load")
    assert "machine.secret" not in items["broken.png"]["error"]


def test_gallery_with_a_fetcher_on_a_background_loop(thread_loop: asyncio.AbstractEventLoop) -> None:
    fetcher = Fetcher(files(), thread_loop)
    gallery = Gallery(media_for(fetcher, *ALL), text=["a <b>bold</b> caption"],
                      labels=[f"seed={i}" for i in range(len(ALL))])
    check_items(gallery)
    assert sorted(fetcher.reads) == sorted(ALL)  # every file is read once, for its size
    assert not gallery.loading
    assert [item["url"] for item in gallery.items] == [""] * len(ALL)  # nobody vouched for them

    data, _ = gallery._repr_mimebundle_()
    html = data["text/html"]
    for item in gallery.items:
        assert item["filename"] in html
        if item["thumb"]:
            assert item["thumb"] in html
    assert "seed=3" in html and "could not load" in html and "<script" not in html
    assert "a &lt;b&gt;bold&lt;/b&gt; caption" in html and "https://files.example" not in html
    assert "big.png  (seed=0)" in data["text/plain"] and '"a <b>bold</b> caption"' in data["text/plain"]
    assert len(html) < 250_000  # four thumbnails: tens of KB each


async def test_gallery_from_async_code_on_the_fetchers_loop() -> None:
    fetcher = Fetcher(files(), asyncio.get_running_loop())
    gallery = Gallery(media_for(fetcher, *ALL))
    # cannot block its own loop: names now, thumbnails a moment later
    assert gallery.loading and all(item["thumb"] == "" for item in gallery.items)
    html = gallery._repr_mimebundle_()[0]["text/html"]
    assert "big.png" in html and "data:image" not in html
    await until(lambda: not gallery.loading, timeout=10)
    check_items(gallery)


async def test_gallery_from_async_code_with_a_fetcher_elsewhere(
    thread_loop: asyncio.AbstractEventLoop,
) -> None:
    fetcher = Fetcher(files(), thread_loop)
    gallery = Gallery(media_for(fetcher, "big.png", "anim.webp"))
    assert not gallery.loading and all(item["thumb"] for item in gallery.items)


def test_thumbnails_are_cached(thread_loop: asyncio.AbstractEventLoop) -> None:
    fetcher = Fetcher(files(), thread_loop)
    first = Gallery(media_for(fetcher, "big.png"))
    second = Gallery(media_for(fetcher, "big.png"))
    assert fetcher.reads == ["big.png"] and first.items == second.items


def test_unreadable_files_become_error_tiles(thread_loop: asyncio.AbstractEventLoop) -> None:
    fetcher = Fetcher(files(), thread_loop)
    orphan = Media(url="https://files.example/x.png", filename="x.png", kind="image")
    gallery = Gallery([*media_for(fetcher, "notimage.png"), orphan])
    errors = [item["error"] for item in gallery.items]
    assert errors[0].startswith("no preview") and errors[1] == "no client to download it with"


def test_urls_only_when_the_fetcher_vouches(thread_loop: asyncio.AbstractEventLoop) -> None:
    public = Fetcher(files(), thread_loop, public=True)
    gallery = Gallery(media_for(public, "big.png", "movie.mp4"))
    assert [item["url"] for item in gallery.items] == ["https://files.example/big.png",
                                                       "https://files.example/movie.mp4"]
    creds = Media(url="https://user:pw@files.example/big.png", filename="big.png", kind="image",
                  _fetcher=public)
    assert Gallery([creds]).items[0]["url"] == ""


def test_labels_must_match() -> None:
    with pytest.raises(ValueError, match="2 labels for 1 media"):
        Gallery([Media(url="https://f/x.png", filename="x.png", kind="image")], labels=["a", "b"])


def test_full_file_through_the_kernel(thread_loop: asyncio.AbstractEventLoop) -> None:
    fetcher = Fetcher(files(), thread_loop)
    gallery = Gallery(media_for(fetcher, "big.png", "broken.png"))
    sent = record_messages(gallery)
    gallery._handle_custom_msg({"type": "fetch", "index": 0}, [])
    gallery._handle_custom_msg({"type": "fetch", "index": 1}, [])
    gallery._handle_custom_msg({"type": "fetch", "index": 9}, [])  # ignored
    wait_for(lambda: len(sent) == 2)
    replies = {m["data"]["content"]["index"]: m for m in sent}
    assert replies[0]["data"]["content"] == {"type": "file", "index": 0, "mime": "image/png"}
    assert bytes(replies[0]["buffers"][0]) == files()["big.png"]
    assert replies[1]["data"]["content"]["error"].startswith("RuntimeError")


async def test_full_file_through_the_kernel_on_the_same_loop() -> None:
    fetcher = Fetcher(files(), asyncio.get_running_loop())
    gallery = Gallery(media_for(fetcher, "big.png"))
    sent = record_messages(gallery)
    gallery._handle_custom_msg({"type": "fetch", "index": 0}, [])
    await until(lambda: any(m["data"].get("method") == "custom" for m in sent))
    custom = next(m for m in sent if m["data"].get("method") == "custom")
    assert bytes(custom["buffers"][0]) == files()["big.png"]


def test_job_result_displays_as_a_gallery(thread_loop: asyncio.AbstractEventLoop) -> None:
    fetcher = Fetcher(files(), thread_loop)
    result = JobResult("r1", media=media_for(fetcher, "big.png"), text=["done"])
    formatter = DisplayFormatter()  # as a shell's: the display layer registers its printer there
    register_display(SimpleNamespace(display_formatter=formatter))
    data, _ = formatter.format(result)
    assert "application/vnd.jupyter.widget-view+json" not in data  # loaded: static, as it is saved
    assert "big.png" in data["text/plain"] and "data:image/jpeg" in data["text/html"]


# --- displays and wrappers ---------------------------------------------------------------------


@pytest.fixture
def fake_kernel_display(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any]]:
    """IPython's display/update_display as in a kernel, recorded."""
    import IPython.display
    from IPython.core.interactiveshell import InteractiveShell

    shown: list[Any] = []
    updated: list[Any] = []
    monkeypatch.setattr(IPython.display, "display", lambda data, **kw: shown.append((data, kw)))
    monkeypatch.setattr(IPython.display, "update_display", lambda data, **kw: updated.append((data, kw)))
    monkeypatch.setattr(InteractiveShell, "initialized", classmethod(lambda cls: True))
    monkeypatch.setattr(InteractiveShell, "instance",
                        classmethod(lambda cls, *a, **k: SimpleNamespace(kernel=object())))
    return shown, updated


async def test_a_displayed_progress_refreshes_its_fallback_when_done(
    fake_kernel_display: tuple[list[Any], list[Any]],
) -> None:
    shown, updated = fake_kernel_display
    gate = asyncio.Event()
    job = Job(Script(Queued(position=2), gate, Progress(3, 4)), kind="deployment", id="d1")
    widget = JobProgress(job)
    await until(lambda: widget.position == 2)
    widget._ipython_display_()
    (data, kw), = shown
    assert "3rd in queue" in data["text/html"] and kw["raw"] and kw["display_id"]
    assert "application/vnd.jupyter.widget-view+json" in data
    gate.set()
    await job.wait(5)
    assert len(updated) == 1 and updated[0][1]["display_id"] == kw["display_id"]
    assert "succeeded" in updated[0][0]["text/html"] and "succeeded in" in updated[0][0]["text/plain"]


async def test_a_displayed_gallery_refreshes_when_thumbnails_arrive(
    fake_kernel_display: tuple[list[Any], list[Any]],
) -> None:
    shown, updated = fake_kernel_display
    gallery = Gallery(media_for(Fetcher(files(), asyncio.get_running_loop()), "big.png"))
    gallery._ipython_display_()
    assert "data:image" not in shown[0][0]["text/html"]
    await until(lambda: bool(updated), timeout=10)
    assert "data:image/jpeg" in updated[0][0]["text/html"]


def test_blocking_wrappers_are_accepted(thread_loop: asyncio.AbstractEventLoop) -> None:
    from runcomfy_nb.sync import Blocking

    job = job_on(thread_loop, Script(Started()), kind="deployment", id="w1")
    widget = JobProgress(Blocking(job))  # type: ignore[arg-type]
    wait_for(lambda: widget.status == "succeeded")
    media = media_for(Fetcher(files(), thread_loop), "big.png")
    gallery = Gallery([Blocking(m) for m in media])  # type: ignore[misc]
    assert gallery.items[0]["thumb"].startswith("data:image/jpeg")
    assert Gallery(Blocking(media[0])).items[0]["filename"] == "big.png"  # type: ignore[arg-type]
