"""A kept notebook in JupyterLab: a notebook executed against the emulator, saved and trusted,
opened in JupyterLab (its widget models gone with the kernel that made them), shows each ended job's static
view — status and thumbnails — and no "Error displaying widget: model not found".
Playwright drives Debian's Chromium by its path; JupyterLab runs on 127.0.0.1 with a token."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import nbformat
import pytest
from nbclient import NotebookClient

from ..helpers import wait_for
from ..integration.test_kept_notebook import notebook
from .conftest import chromium

playwright = pytest.importorskip("playwright.sync_api")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """JupyterLab serving a saved, executed notebook (kept.ipynb); its URL, token included."""
    root = tmp_path_factory.mktemp("lab")
    nb = notebook()
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(root)}}).execute()
    # as JupyterLab saves it by default ("Save Widget State Automatically" off): no widget state,
    # so a widget view in an output has no model to render once the kernel is gone
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, root / "kept.ipynb")
    token, port = secrets.token_hex(16), free_port()
    home = root / "home"  # settings and workspaces of this run only
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "ws"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_DATA_DIR": str(home / "data")}
    # trusted, as a notebook JupyterLab saved itself is: an untrusted one never uses the widget
    # renderer (it is not "safe"), so it would show the text/html fallback whatever the output holds
    subprocess.run([sys.executable, "-m", "jupyter", "trust", str(root / "kept.ipynb")], env=env,
                   check=True, capture_output=True, timeout=60)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--port-retries=0", "--allow-root", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(f"{base}/api/status?token={token}"), timeout=60)
        yield f"{base}/lab/tree/kept.ipynb?token={token}"
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def settled(page: object) -> None:
    """Wait until every output rendered: no widget output still reads "Loading widget..."."""
    page.wait_for_function(  # type: ignore[attr-defined]
        "() => { const nb = document.querySelector('.jp-Notebook');"
        " return nb && nb.querySelectorAll('.jp-OutputArea-output').length >= 3"
        " && !nb.innerText.includes('Loading widget'); }", timeout=60_000)


def test_jupyterlab_shows_the_static_views_of_a_kept_notebook(lab: str) -> None:
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(lab)
            # the job's progress (a display) and the gallery cell: static views, no widget manager
            progress = page.locator(".jp-OutputArea-output .runcomfy-progress")
            progress.first.wait_for(timeout=60_000)
            gallery = page.locator(".jp-Cell:has-text('display(Gallery') .runcomfy-gallery img")
            gallery.first.wait_for(timeout=30_000)
            settled(page)
            assert "succeeded" in progress.first.inner_text()
            assert gallery.count() == 2
            widths = gallery.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            assert all(w > 0 for w in widths), widths  # the data URIs decode as images
            for cell in ("%%runcomfy run", "display(Gallery"):
                text = page.locator(f".jp-Cell:has-text('{cell}') .jp-OutputArea").first.inner_text()
                assert "model not found" not in text or cell == "%%runcomfy run", text
            run_outputs = page.locator(".jp-Cell:has-text('%%runcomfy run') .jp-OutputArea-output")
            assert "model not found" not in run_outputs.first.inner_text()  # the progress
        finally:
            browser.close()


def test_jupyterlab_shows_no_model_not_found_anywhere(lab: str) -> None:
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(lab)
            page.locator(".jp-OutputArea-output .runcomfy-progress").first.wait_for(timeout=60_000)
            settled(page)
            assert "model not found" not in page.locator(".jp-Notebook").inner_text()
        finally:
            browser.close()
