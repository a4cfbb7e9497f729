"""The widgets' real ES modules in headless Chromium, with a fake anywidget model.

`harness.html` + `harness.js` render a widget, drive it (trait changes, clicks, keys, kernel
replies) and write what they saw as JSON into the page; we read it from `--dump-dom`.
"""

from __future__ import annotations

import functools
import html
import io
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.fail("Chromium is needed for the browser tests and was not found: run `make test`, "
                    "which installs Debian's chromium (or `apt-get install chromium`).")
    return found


class Handler(SimpleHTTPRequestHandler):
    """Serves the checkout (js/, tests/browser/) and, under /t/, files a test wrote."""

    extra: Path

    def translate_path(self, path: str) -> str:
        if path.startswith("/t/"):
            return str(self.extra / path.split("?")[0].removeprefix("/t/"))
        return super().translate_path(path)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from PIL import Image

    extra = tmp_path_factory.mktemp("served")
    out = io.BytesIO()
    Image.new("RGB", (120, 80), "#00cc00").save(out, "PNG")
    (extra / "full.png").write_bytes(out.getvalue())
    handler = type("BoundHandler", (Handler,), {"extra": extra})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(ROOT)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def run_scenario(server: str, scenario: str, tmp_path: Path) -> dict[str, Any]:
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--mute-audio", f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000", "--dump-dom",
        f"{server}/tests/browser/harness.html?scenario={scenario}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    match = re.search(r'<pre id="results">(.*?)</pre>', done.stdout, re.DOTALL)
    assert match, f"no results in the page (exit {done.returncode}):\n{done.stderr[-3000:]}"
    text = html.unescape(match.group(1))
    assert text != "pending", f"the harness did not finish:\n{done.stderr[-3000:]}"
    results = json.loads(text)
    assert results.pop("ok"), results.get("error")
    return results


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
    assert queued["details"] == "position 3 in queue"
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
