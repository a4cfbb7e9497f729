"""Every tutorial in a real JupyterLab (and tutorial 01 in Notebook 7 too), in Debian's chromium:
open it, Run ▸ Run All Cells against the emulator (the tutorials' own speed knob), and check in the
DOM what a reader sees: each progress widget reaches the final state the tutorial expects, ComfyUI
and Comfy Cloud runs show per-node progress and a preview on the way, gallery images decode, videos
play, the console stays clean. Then save, shut the kernel down, reopen, and check the static views:
no "model not found", each job's final status text, thumbnails that decode.

Tutorial 05 restarts its kernel from its own cell: Run All cannot follow that (the cells queued
behind the restart are dropped), so test_jupyter_restart.py runs it as a reader does (Run All, then
Run Selected Cell and All Below from the first cell after the restart); also
tests/integration/test_tutorial_restart.py (through jupyter_client).
One run per (app, tutorial), cached: the live and the reopened checks are separate tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..integration.test_notebooks import EMU_TOKEN, REAL_TOKEN, restarts_its_kernel
from .jupyter import BUILD, ROOT, Notebook, Server, browser, lab, notebook7

__all__ = ["browser", "lab", "notebook7"]  # the fixtures, used by name

TUTORIALS = [p.name for p in sorted((ROOT / "notebooks").glob("*.ipynb")) if not restarts_its_kernel(p)]
# The final state of each job a tutorial displays (a widget per display), as its text tells:
EXPECTED: dict[str, Counter[str]] = {
    # four jobs run to the end; of the two --no-wait ones the second is cancelled in the queue
    "01_quickstart.ipynb": Counter(succeeded=4, cancelled=1),
    # the img2img run succeeds; the 400-step run is cancelled once running
    "02_machines_and_comfyui.ipynb": Counter(succeeded=1, cancelled=1),
    # the model edit, the storyboard model, the cloud run, the pair (one widget each), the partner
    # node with its key succeed; the partner node refused its key is the one failure
    "03_models_and_cloud.ipynb": Counter(succeeded=6, failed=1),
    # the lighthouse, the fox (the sweep has its own view, not a JobProgress)
    "04_workflows_and_sweeps.ipynb": Counter(succeeded=2),
}
NODE_KINDS = {"comfyui", "cloud"}  # runs that report nodes and previews
TERMINAL = ("succeeded", "failed", "cancelled")
TOUR = os.environ.get("RUNCOMFY_NB_TOUR") == "1"  # also copy the curated screenshots to docs/

# Each job's progress as shown: the live widget (js/progress.js) or, once final, the static view
# that replaces it (widgets/progress.py `_html`: title, kind, status badge, elapsed).
LIVE_JS = """() => ({
  progress: [
    ...[...document.querySelectorAll('.rcnb-progress')].map(r => ({source: 'widget',
      title: r.querySelector('.rcnb-title')?.textContent || '',
      kind: r.querySelector('.rcnb-kind')?.textContent || '', status: r.dataset.status || ''})),
    ...[...document.querySelectorAll('.runcomfy-progress')].map(r => {
      const spans = r.querySelectorAll(':scope > div:first-child > span');
      return {source: 'static', title: r.querySelector('strong')?.textContent || '',
              kind: spans[0]?.textContent || '', status: spans[1]?.textContent || ''};
    }),
  ],
  images: document.querySelectorAll('.jp-OutputArea-output img').length,
  outputs: [...document.querySelectorAll('.jp-CodeCell')]
    .map(c => c.querySelector('.jp-OutputArea')?.innerText || ''),
})"""


@dataclass
class Run:
    """What one Run All showed, live and after the reopen."""

    app: str
    name: str
    seconds: float = 0.0
    live: dict[str, Any] = field(default_factory=dict)
    seen: dict[str, Any] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)  # what failed to decode (alt or src start)
    images_total: int = 0
    videos: list[str] = field(default_factory=list)  # one verdict per <video>
    errors: list[str] = field(default_factory=list)
    reopened: dict[str, Any] = field(default_factory=dict)
    reopened_images: list[str] = field(default_factory=list)
    reopened_images_total: int = 0
    reopened_errors: list[str] = field(default_factory=list)
    saved: str = ""


def decode_images(notebook: Notebook, selector: str) -> tuple[int, list[str]]:
    """Scroll each image in view (the gallery's are lazy) and wait until it decoded; the count and
    those that did not."""
    bad = []
    images = notebook.page.locator(selector)
    for i in range(images.count()):
        image = images.nth(i)
        image.scroll_into_view_if_needed()
        try:
            notebook.page.wait_for_function("i => i.complete && i.naturalWidth > 0",
                                            arg=image.element_handle(), timeout=10_000, polling=100)
        except Exception:
            bad.append(str(image.get_attribute("alt") or (image.get_attribute("src") or "")[:40]))
    return images.count(), bad


def play_videos(notebook: Notebook) -> list[str]:
    """Play each <video> in an output, muted; 'plays' once its currentTime advanced, else why not."""
    verdicts = []
    videos = notebook.page.locator(".jp-OutputArea video")
    for i in range(videos.count()):
        handle = videos.nth(i).element_handle()
        videos.nth(i).scroll_into_view_if_needed()
        started = handle.evaluate("async v => { v.muted = true; "
                                  "try { await v.play(); return 'ok'; } catch (e) { return String(e); } }")
        try:
            notebook.page.wait_for_function("v => v.currentTime > 0.1", arg=handle, timeout=10_000,
                                            polling=50)
            verdicts.append("plays")
        except Exception:
            state = handle.evaluate("v => `readyState ${v.readyState}, error ${v.error && v.error.code}`")
            verdicts.append(f"no progress (play: {started}, {state})")
    return verdicts


def wait_terminal(notebook: Notebook) -> None:
    """The last updates of a widget may arrive after the cell's execute reply: until every progress
    widget shows a final state (or 20 s; the assertions then say which did not)."""
    with contextlib.suppress(Exception):
        notebook.page.wait_for_function(
            f"() => [...document.querySelectorAll('.rcnb-progress')].every(r => {list(TERMINAL)}"
            ".includes(r.dataset.status))", timeout=20_000, polling=100)


def screenshots(notebook: Notebook, run: Run) -> None:
    """build/browser/: the whole notebook and a few widgets; with RUNCOMFY_NB_TOUR=1 the curated
    ones are also copied to docs/ (the README's tour)."""
    page = notebook.page
    notebook.screenshot(f"{run.name[:2]}-full", full=True)
    picks = {"01": [("quickstart", '.jp-CodeCell:has(.jp-InputArea:has-text("--out city"))'),
                    ("gallery", ".rcnb-gallery, .runcomfy-gallery")],
             "02": [("machines", ".rcnb-machines")]}
    for label, selector in picks.get(run.name[:2], []) if notebook.server.app == "lab" else []:
        target = page.locator(selector).first
        if not target.count():  # the widget is missing: the other tests say so
            continue
        target.scroll_into_view_if_needed()
        shot = notebook.screenshot(f"tour-{label}", target)
        if TOUR:
            shutil.copy(shot, ROOT / "docs" / f"tour-{label}.png")


def live_screenshot(notebook: Notebook) -> None:
    """A Comfy Cloud run while it runs: its node, step, rate, ETA and preview (the tour's progress
    shot). Best effort: the checks of what it showed are the tests'."""
    running = notebook.page.locator(
        '.rcnb-progress[data-status="running"]:has(img.rcnb-preview:not([hidden]))')
    with contextlib.suppress(Exception):
        running.first.wait_for(state="visible", timeout=60_000)
        shot = notebook.screenshot("tour-progress", running.first)
        if TOUR:
            shutil.copy(shot, ROOT / "docs" / "tour-progress.png")


def run_tutorial(browser: Any, server: Server, name: str) -> Run:
    run = Run(server.app, name)
    notebook = Notebook.open(browser, server, name)
    try:
        started = time.monotonic()
        notebook.wait_kernel_idle()
        notebook.menu("Run", "Run All Cells")
        if server.app == "lab" and name.startswith("03"):
            live_screenshot(notebook)
        notebook.wait_cells_done(300)
        run.seconds = time.monotonic() - started
        wait_terminal(notebook)
        run.live = notebook.page.evaluate(LIVE_JS)
        run.seen = notebook.seen()
        run.images_total, run.images = decode_images(notebook, ".jp-OutputArea-output img")
        run.videos = play_videos(notebook)
        screenshots(notebook, run)
        run.errors = list(notebook.errors)
        run.saved = notebook.reopen()
        run.reopened = notebook.page.evaluate(LIVE_JS)
        run.reopened_images_total, run.reopened_images = decode_images(notebook, ".jp-OutputArea-output img")
        notebook.screenshot(f"{name[:2]}-reopened", full=True)
        run.reopened_errors = list(notebook.errors)
    finally:
        notebook.discard()  # the reopened notebook started a kernel of its own
    record = {k: v for k, v in vars(run).items() if k != "saved"}  # what the run saw, for the report
    (BUILD / f"{server.app}-{name[:2]}.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    print(f"{server.app} {name}: Run All took {run.seconds:.1f} s")
    return run


_RUNS: dict[tuple[str, str], Run] = {}


def ran(browser: Any, server: Server, name: str) -> Run:
    key = (server.app, name)
    if key not in _RUNS:
        _RUNS[key] = run_tutorial(browser, server, name)
    return _RUNS[key]


CASES = [("lab", n) for n in TUTORIALS] + [("notebook", "01_quickstart.ipynb")]
IDS = [f"{app}-{name[:2]}" for app, name in CASES]


@pytest.fixture(params=CASES, ids=IDS)
def run(request: pytest.FixtureRequest, browser: Any) -> Run:
    app, name = request.param
    server = request.getfixturevalue("lab" if app == "lab" else "notebook7")
    return ran(browser, server, name)


def final_states(progress: list[dict[str, Any]]) -> Counter[str]:
    """One final state per job (a job shown twice counts once)."""
    by_job = {p["title"] or f"untitled {i}": p["status"] for i, p in enumerate(progress)}
    return Counter(by_job.values())


def test_every_progress_widget_renders_and_reaches_its_final_state(run: Run) -> None:
    assert final_states(run.live["progress"]) == EXPECTED[run.name], run.live["progress"]
    rendered = set(run.seen)
    for shown in run.live["progress"]:
        assert shown["title"] in rendered, f"{shown['title']}: no live widget rendered before its end"


def test_comfyui_and_cloud_runs_show_nodes_and_a_preview(run: Run) -> None:
    runs = {k: v for k, v in run.seen.items()
            if v["kind"] in NODE_KINDS and v["statuses"][-1:] == ["succeeded"]}
    if run.name.startswith("01"):
        assert not runs  # serverless only
        return
    assert runs, f"no ComfyUI or Cloud run seen: {run.seen}"
    for key, seen in runs.items():
        assert any("nodes" in d for d in seen["details"]), f"{key}: no per-node progress in {seen['details']}"
        if any("step " in d for d in seen["details"]):  # a sampler ran (a partner node has none)
            assert seen["preview"], f"{key}: no preview was shown while it ran"


def test_gallery_images_decode_and_videos_play(run: Run) -> None:
    assert run.images_total > 0 and not run.images, f"images that did not decode: {run.images}"
    assert all(v == "plays" for v in run.videos), run.videos
    if run.name.startswith("01"):  # dep-animate's MP4, in the gallery and in IPython's Video
        assert len(run.videos) >= 1, "tutorial 01 shows no <video>"


def test_no_console_errors_while_it_runs(run: Run) -> None:
    assert not run.errors, "\n".join(run.errors[:10])


def test_no_secret_in_the_saved_notebook(run: Run) -> None:
    assert run.saved and EMU_TOKEN not in run.saved and REAL_TOKEN not in run.saved


def test_reopened_notebook_shows_the_static_views(run: Run) -> None:
    """After save, kernel shutdown and reopen: every job's output reads its final state, where a
    widget was there is no "model not found", and the thumbnails decode. (G's static views.)"""
    outputs = run.reopened["outputs"]
    broken = [i for i, text in enumerate(outputs) if "model not found" in text]
    assert not broken, f"code cells {broken} show 'Error displaying widget: model not found'"
    after = run.reopened["progress"]
    assert final_states(after) == final_states(run.live["progress"]), after
    assert run.reopened_images_total >= run.images_total, "fewer images after the reopen than live"
    assert not run.reopened_images, f"images that did not decode after the reopen: {run.reopened_images}"
    assert not run.reopened_errors, "\n".join(run.reopened_errors[:10])


def test_the_run_fits_the_suite_budget(run: Run) -> None:
    assert run.seconds < 120, f"Run All took {run.seconds:.0f} s"


def docs_screenshots() -> list[Path]:
    return sorted((ROOT / "docs").glob("tour-*.png"))


def test_committed_screenshots_are_small() -> None:
    for path in docs_screenshots():
        assert path.stat().st_size <= 200_000, path
