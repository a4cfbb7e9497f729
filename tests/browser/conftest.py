"""What the browser tests share: Debian's Chromium, a server of the checkout, and a page run.

A page (`harness.html?scenario=...`) loads a widget the way anywidget does (the `_esm` text the
widget class gives anywidget, imported from a blob URL; its `_css` text in a <style>), renders it
with a fake anywidget model, drives it and writes what it saw as JSON into `<pre id="results">`,
read from `--dump-dom`.
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


def widget_files() -> dict[str, str]:
    """What anywidget gets of each widget, by file name: `progress.js` is `JobProgress`'s `_esm`
    text (its shared imports inlined), `progress.css` its `_css` text; likewise gallery, machines."""
    from runcomfy_nb.widgets import Gallery, JobProgress, MachinePanel

    files = {}
    for name, widget in (("progress", JobProgress), ("gallery", Gallery), ("machines", MachinePanel)):
        files[f"{name}.js"] = str(widget._esm)  # as anywidget's __init__ makes its trait
        files[f"{name}.css"] = str(widget._css)
    return files


class Handler(SimpleHTTPRequestHandler):
    """Serves the checkout (tests/browser/), under /anywidget/ the `widget_files()`, and under
    /t/ files a test wrote."""

    extra: Path
    widgets: dict[str, str]

    def do_GET(self) -> None:
        if self.path.startswith("/anywidget/"):
            self.send_widget_file(self.path.split("?")[0].removeprefix("/anywidget/"))
        else:
            super().do_GET()

    def send_widget_file(self, name: str) -> None:
        if name not in self.widgets:
            self.send_error(404)
            return
        body = self.widgets[name].encode("utf-8")
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        self.send_response(200)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def translate_path(self, path: str) -> str:
        if path.startswith("/t/"):
            return str(self.extra / path.split("?")[0].removeprefix("/t/"))
        return super().translate_path(path)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The checkout on 127.0.0.1; `/t/full.png` is a 120×80 green PNG (the full-size file)."""
    from PIL import Image

    extra = tmp_path_factory.mktemp("served")
    out = io.BytesIO()
    Image.new("RGB", (120, 80), "#00cc00").save(out, "PNG")
    (extra / "full.png").write_bytes(out.getvalue())
    handler = type("BoundHandler", (Handler,), {"extra": extra, "widgets": widget_files()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(ROOT)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def run_page(server: str, page: str, tmp_path: Path, *, budget_ms: int) -> dict[str, Any]:
    """Load `tests/browser/{page}` in headless Chromium (`budget_ms` of virtual time) and return
    the JSON the page wrote, after checking it finished without an error."""
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--mute-audio", f"--user-data-dir={tmp_path / 'profile'}",
        f"--virtual-time-budget={budget_ms}", "--dump-dom", f"{server}/tests/browser/{page}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    match = re.search(r'<pre id="results">(.*?)</pre>', done.stdout, re.DOTALL)
    assert match, f"no results in the page (exit {done.returncode}):\n{done.stderr[-3000:]}"
    text = html.unescape(match.group(1))
    assert text != "pending", f"the harness did not finish:\n{done.stderr[-3000:]}"
    results = json.loads(text)
    assert results.pop("ok"), results.get("error")
    return results
