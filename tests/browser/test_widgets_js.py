"""The widgets' ES modules, as anywidget gets them, in headless Chromium with a fake anywidget model.

`harness.html` + `harness.js` render a widget, drive it (trait changes, clicks, keys, kernel
replies) and write what they saw as JSON into the page; we read it from `--dump-dom`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runcomfy_nb.timefmt import format_duration

from .conftest import run_page

# durations where the two formats could part: rounding at one decimal (ties included), the
# unit boundaries, and a day
SECONDS = [0, 0.04, 0.05, 0.25, 0.35, 0.75, 1.25, 2.75, 4.23, 4.7, 9.95, 59.94, 59.95, 59.96, 59.99, 60, 61.5,
           125, 3599.9, 3600, 3725, 86400 + 61]


def run_scenario(server: str, scenario: str, tmp_path: Path, query: str = "") -> dict[str, Any]:
    return run_page(server, f"harness.html?scenario={scenario}{query}", tmp_path, budget_ms=10000)


def bar(state: dict[str, Any]) -> tuple[float | None, str | None, bool]:
    """(fill width in %, aria-valuenow, indeterminate)"""
    b = state["bar"]
    width = float(b["width"].rstrip("%")) if b["width"] else None
    return width, b["now"], b["indeterminate"]


def test_progress_widget_in_a_browser(server: str, tmp_path: Path) -> None:
    r = run_scenario(server, "progress", tmp_path)
    steps = r["steps"]

    queued = steps["queued"]
    assert queued["status"] == "queued" and queued["title"] == "dep-flux"
    assert queued["details"] == "4th in queue"
    assert bar(queued) == (0, None, False)
    assert queued["cancelVisible"] and not queued["cancelDisabled"]
    assert queued["elapsed"].endswith(" s") and float(queued["elapsed"].split()[0]) >= 5

    running = steps["running"]
    assert running["status"] == "running"
    assert bar(running) == (25, "25", False)
    assert running["details"] == "KSampler · step 5/20 · nodes 2/9"
    assert running["previewShown"]

    assert steps["indeterminate"]["bar"]["indeterminate"] and steps["indeterminate"]["bar"]["now"] is None

    # the elapsed time ticks in the browser, with no message from Python
    assert float(r["ticked"]["after"].split()[0]) > float(r["ticked"]["before"].split()[0])

    assert r["sent"] == [{"type": "cancel"}]
    cancelling = steps["cancelling"]
    assert cancelling["cancelDisabled"] and cancelling["cancelText"] == "cancelling…"

    failed = steps["failed"]
    assert failed["status"] == "failed" and failed["error"] == "CUDA out of memory"
    assert failed["errorColor"] == "rgb(220, 38, 38)" and not failed["cancelVisible"]
    assert r["frozen"]["before"] == r["frozen"]["after"] == "5.0 s"

    succeeded = steps["succeeded"]
    assert bar(succeeded) == (100, "100", False)
    assert succeeded["outputs"] == "2 outputs" and not succeeded["cancelVisible"]
    assert succeeded["error"] is None

    assert r["afterCleanup"] == {"listeners": 0, "children": 0}
    assert r["format"] == ["4.2 s", "2 min 05 s", "1 h 02 min"]


def test_gallery_widget_in_a_browser(server: str, tmp_path: Path) -> None:
    r = run_scenario(server, "gallery", tmp_path)

    initial = r["initial"]
    assert initial["tiles"] == 6 and initial["thumbs"] == 3
    assert initial["names"] == ["a.png", "b.png", "c.png", "clip.mp4", "voice.wav", "d.png"]
    assert initial["labels"][:3] == ["seed=1", "seed=2", "seed=3"] and initial["labels"][3] is None
    assert initial["errors"][5] == "could not load: boom"
    assert initial["texts"] == ["a castle", "<b>not bold</b>"] and initial["loadingShown"]
    assert initial["columns"] >= 2  # a grid, not a column

    # the full image from its URL, then from the kernel when there is no URL
    assert r["fromUrl"]["source"] == "url" and r["fromUrl"]["width"] == 120
    assert r["fromUrl"]["position"] == "fixed"
    assert r["afterEscape"] is None
    assert r["fromKernel"]["source"] == "kernel" and r["fromKernel"]["width"] == 120
    assert r["fromKernel"]["src"] == "blob:http:"
    assert r["afterClick"] is None
    # a broken URL and a kernel error: the thumbnail stays, with a note
    assert r["fallback"]["state"] == "thumb" and r["fallback"]["src"] == "data:image"
    assert "gone" in r["fallback"]["note"] and r["fallback"]["width"] == 24
    assert r["next"] == 5  # → skips the video and audio tiles to the next image

    assert r["video"] == {"present": True, "blob": True}
    assert {"type": "fetch", "index": 1} in r["sent"] and {"type": "fetch", "index": 2} in r["sent"]
    assert {"type": "fetch", "index": 3} in r["sent"]

    assert r["updated"]["tiles"] == 2 and not r["updated"]["loadingShown"]
    assert r["afterCleanup"] == {"lightbox": None, "listeners": 0, "children": 0}


def test_durations_read_the_same_in_the_browser_as_in_python(server: str, tmp_path: Path) -> None:
    r = run_scenario(server, "progress", tmp_path, "&seconds=" + ",".join(map(str, SECONDS)))
    expected = [[format_duration(s), format_duration(s, whole=True)] for s in SECONDS]
    assert len(r["durations"]) == len(SECONDS)
    assert dict(zip(SECONDS, r["durations"], strict=True)) == dict(zip(SECONDS, expected, strict=True))
