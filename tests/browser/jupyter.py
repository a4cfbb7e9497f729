"""Fixtures of the real-browser suite: a JupyterLab and a Notebook 7 server on 127.0.0.1 (a free
port, a token, a temp root holding copies of the tutorials), one headless Debian chromium driven by
Playwright's Python API (never a downloaded browser), and `Notebook`, one open notebook page: Run
All from the menu, wait for the kernel, read what the widgets showed, save, shut down, reopen.

Each server runs with sentinel tokens in its environment (test_notebooks.py's), RUNCOMFY_JOURNAL in
the temp root, and its own Jupyter config, data and settings dirs, so nothing of the user's leaks in.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..helpers import wait_for
from ..integration.test_notebooks import EMU_TOKEN, REAL_TOKEN
from .conftest import chromium

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "browser"  # screenshots (gitignored)
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
]
# Errors of the front end itself, whatever the notebook holds (kept as narrow as they come): Notebook
# 7.6's shortcuts plugin reads the schema of a settings plugin it has not loaded, at page load.
KNOWN_NOISE = [("reading 'schema'", "/static/notebook/notebook_core.")]
# What the page watches, from the first widget on: every progress widget's statuses, details texts
# and whether a decoded preview was shown (previews may be gone once the job ended).
WATCH_JS = """
() => {
  if (window.__rcnb) return;
  const seen = window.__rcnb = {};
  const look = () => {
    document.querySelectorAll('.rcnb-progress').forEach((root, i) => {
      const key = root.querySelector('.rcnb-title')?.textContent || `untitled|${i}`;
      const s = seen[key] ??= {kind: '', statuses: [], details: [], preview: false};
      s.kind = root.querySelector('.rcnb-kind')?.textContent || s.kind;
      const status = root.dataset.status || '';
      if (status && s.statuses.at(-1) !== status) s.statuses.push(status);
      const details = root.querySelector('.rcnb-details')?.textContent || '';
      if (details && !s.details.includes(details) && s.details.length < 200) s.details.push(details);
      const img = root.querySelector('img.rcnb-preview');
      if (img && !img.hidden && img.naturalWidth > 0) s.preview = true;
    });
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true,
                                                     attributes: true, characterData: true});
  document.addEventListener('load', look, true);  // a preview <img> decoded
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One Jupyter server (`app` is "lab" or "notebook") serving `root`."""

    app: str
    root: Path
    url: str
    token: str
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(repr=False)

    def api(self, method: str, path: str) -> Any:
        answer = httpx.request(method, f"{self.url}/api/{path}",
                               headers={"Authorization": f"token {self.token}"}, timeout=10)
        answer.raise_for_status()
        return answer.json() if answer.content else None

    def kernels(self) -> list[dict[str, Any]]:
        return list(self.api("GET", "kernels"))

    def page_url(self, name: str) -> str:
        if self.app == "lab":  # reset: a fresh workspace, not the last test's notebooks reopened too
            return f"{self.url}/lab/tree/{name}?reset&token={self.token}"
        return f"{self.url}/notebooks/{name}?token={self.token}"

    def stop(self) -> None:
        for kernel in self.kernels_quietly():
            with contextlib.suppress(Exception):
                self.api("DELETE", f"kernels/{kernel['id']}")
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        stop_kept_emulator(self.env)

    def kernels_quietly(self) -> list[dict[str, Any]]:
        try:
            return self.kernels()
        except Exception:
            return []


def stop_kept_emulator(env: dict[str, str]) -> None:
    """Stop an emulator a tutorial kept (`--keep`) and did not stop: its state is in the journal's
    folder of this server's environment."""
    script = ("from runcomfy_nb.emulator import process\nkept = process.read_state()\n"
              "kept is not None and process.stop_pid(kept.pid)\n")
    subprocess.run([sys.executable, "-c", script], env=env, timeout=60, check=False,
                   capture_output=True)


def server_env(root: Path, app: str) -> dict[str, str]:
    home = root.parent / f"{root.name}-home"
    env = {**os.environ, "RUNCOMFY_EMULATOR_TOKEN": EMU_TOKEN, "RUNCOMFY_TOKEN": REAL_TOKEN,
           "COMFY_CLOUD_API_KEY": REAL_TOKEN + "_cloud", "RUNCOMFY_JOURNAL": str(root / "journal.sqlite"),
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "PYTHONUNBUFFERED": "1"}
    for name in ("RUNCOMFY_BASE_URL", "RUNCOMFY_USER_ID", "COMFY_CLOUD_URL"):
        env.pop(name, None)  # the tutorials' emulator says where to go, not the caller's shell
    # every cell stays in the DOM (windowing off), so each widget renders and can be read
    tracker = home / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}), encoding="utf-8")
    # closed network: no update check, no news feed, no extension index; CI runs as root
    config = {"ServerApp": {"allow_root": True},
              "LabApp": {"check_for_updates_class": "jupyterlab.NeverCheckForUpdate", "news_url": None,
                         "extension_manager": "readonly"}}
    if app == "lab":  # no "Jupyter news?" toast over the notebook
        page_config = home / "config" / "labconfig" / "page_config.json"
        page_config.parent.mkdir(parents=True)
        page_config.write_text(json.dumps({"disabledExtensions": {
            "@jupyterlab/apputils-extension:announcements": True}}), encoding="utf-8")
    for name in ("jupyter_server_config.json", "jupyter_notebook_config.json"):
        (home / "config" / name).parent.mkdir(parents=True, exist_ok=True)
        (home / "config" / name).write_text(json.dumps(config), encoding="utf-8")
    return env


def start_server(app: str, root: Path) -> Server:
    """`jupyter lab` or `jupyter notebook` on 127.0.0.1, a free port and a random token, serving
    `root`; returns once its API answers."""
    env = server_env(root, app)
    port, token = free_port(), secrets.token_hex(16)
    log = root.parent / f"{root.name}-{app}.log"
    command = [sys.executable, "-m", "jupyterlab" if app == "lab" else "notebook", "--no-browser",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(app, root, f"http://127.0.0.1:{port}", token, process, log, env)

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"jupyter {app} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            server.api("GET", "status")
        except httpx.HTTPError:
            return False
        return True

    wait_for(answers, 60, f"jupyter {app} to answer")
    return server


def tutorial_root(base: Path) -> Path:
    """A root dir holding copies of the tutorials, notebooks/workflows and this suite's notebooks."""
    base.mkdir(parents=True, exist_ok=True)
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy(path, base / path.name)
    shutil.copytree(ROOT / "notebooks" / "workflows", base / "workflows")
    for path in sorted((ROOT / "tests" / "browser" / "notebooks").glob("*.ipynb")):
        shutil.copy(path, base / path.name)
    return base


@contextlib.contextmanager
def running_server(app: str, base: Path) -> Iterator[Server]:
    server = start_server(app, tutorial_root(base))
    try:
        yield server
    finally:
        server.stop()


_SHARED: dict[str, tuple[Any, contextlib.ExitStack, list[int]]] = {}


@contextlib.contextmanager
def shared(name: str, make: Callable[[], contextlib.AbstractContextManager[Any]]) -> Iterator[Any]:
    """One `make()` for every test module that uses it: a session fixture imported into two modules
    is two fixtures, and a second sync Playwright (or server) would start; the last user closes it."""
    if name not in _SHARED:
        stack = contextlib.ExitStack()
        _SHARED[name] = (stack.enter_context(make()), stack, [0])
    value, stack, users = _SHARED[name]
    users[0] += 1
    try:
        yield value
    finally:
        users[0] -= 1
        if not users[0]:
            del _SHARED[name]
            stack.close()


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One JupyterLab server for the whole run."""
    with shared("lab", lambda: running_server("lab", tmp_path_factory.mktemp("lab") / "root")) as server:
        yield server


@pytest.fixture(scope="session")
def notebook7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One Notebook 7 server for the whole run."""
    with shared("nb7", lambda: running_server("notebook", tmp_path_factory.mktemp("nb7") / "root")) as server:
        yield server


@contextlib.contextmanager
def launched_chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chrome = playwright.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chrome
        finally:
            chrome.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Debian chromium (by its executable path, never a downloaded browser) for the
    module. Module-scoped: a sync Playwright holds an event loop in the main thread until it
    stops, and every asyncio test after it would find that loop running."""
    with shared("browser", launched_chromium) as chrome:
        yield chrome


@dataclass
class Notebook:
    """One notebook open in a page of `server`'s app; `errors` collects the console's errors and
    uncaught page errors from the moment it was opened."""

    server: Server
    name: str
    page: Any
    errors: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, browser: Any, server: Server, name: str) -> Notebook:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        notebook = cls(server, name, page)
        page.on("console", lambda m: m.type == "error" and notebook.errors.append(f"console: {m.text}"))
        page.on("pageerror", notebook.on_page_error)
        notebook.load()
        return notebook

    def on_page_error(self, error: Any) -> None:
        stack = str(error.stack or error)
        if not any(message in stack and where in stack for message, where in KNOWN_NOISE):
            self.errors.append(f"pageerror: {stack}")

    def load(self) -> None:
        self.page.goto(self.server.page_url(self.name))
        self.page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        self.page.evaluate(WATCH_JS)

    def kernel_id(self) -> str | None:
        for session in self.server.api("GET", "sessions"):
            if session.get("path") == self.name and session.get("kernel"):
                return str(session["kernel"]["id"])
        return None

    def wait_kernel_idle(self, timeout: float = 60) -> None:
        def idle() -> bool:
            kid = self.kernel_id()
            return kid is not None and any(k["id"] == kid and k["execution_state"] == "idle"
                                           for k in self.server.kernels())

        wait_for(idle, timeout, f"the kernel of {self.name} to be idle")

    def menu(self, top: str, item: str) -> None:
        """Click `top` in the menu bar, then `item` in its menu (JupyterLab's and Notebook 7's)."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
        self.page.locator(".lm-Menu-itemLabel", has_text=item).first.click()

    def run_all(self, timeout: float = 300) -> float:
        """Run ▸ Run All Cells; wait until every code cell has run (an execution count, none
        queued) and the kernel is idle. Returns the seconds it took."""
        started = time.monotonic()
        self.wait_kernel_idle()
        self.menu("Run", "Run All Cells")
        self.wait_cells_done(timeout)
        return time.monotonic() - started

    def run_all_held(self, index: int, selector: str, timeout: float = 60) -> Any:
        """Run ▸ Run All Cells, until `selector` shows in code cell `index` while that cell still
        blocks (its job held on the server); returns the locator of `selector` there."""
        self.wait_kernel_idle()
        self.menu("Run", "Run All Cells")
        cell = self.code_cell(index)
        shown = cell.locator(selector)
        shown.wait_for(state="visible", timeout=timeout * 1000)
        assert cell.locator(".jp-InputPrompt").inner_text().strip() == "[*]:"
        return shown

    def wait_cells_done(self, timeout: float, *, upto: int | None = None) -> None:
        """Until the code cells (the first `upto`, default all) show an execution count and none
        is queued or running; then until the kernel is idle."""
        self.page.wait_for_function(
            """(upto) => {
              const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                .slice(0, upto ?? undefined).map(p => p.textContent.trim());
              return prompts.length > 0 && prompts.every(t => /^\\[\\d+\\]:?$/.test(t));
            }""", arg=upto, timeout=timeout * 1000, polling=250)
        self.wait_kernel_idle()

    def code_cell(self, index: int) -> Any:
        return self.page.locator(".jp-CodeCell").nth(index)

    def run_cell(self, index: int, timeout: float = 120) -> None:
        """Select the code cell `index` and run it with Shift+Enter; wait until it ran."""
        cell = self.code_cell(index)
        before = cell.locator(".jp-InputPrompt").text_content()
        cell.locator(".jp-InputArea-editor").click()
        self.page.keyboard.press("Shift+Enter")
        self.page.wait_for_function(
            """([i, before]) => {
              const p = document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')[i];
              const t = p ? p.textContent.trim() : '';
              return /^\\[\\d+\\]:?$/.test(t) && t !== before;
            }""", arg=[index, before.strip() if before else ""], timeout=timeout * 1000, polling=250)
        self.wait_kernel_idle()

    def cell_text(self, index: int) -> str:
        return str(self.code_cell(index).locator(".jp-OutputArea").inner_text())

    def seen(self) -> dict[str, Any]:
        """What the page watched of each progress widget (WATCH_JS)."""
        return dict(self.page.evaluate("() => window.__rcnb || {}"))

    def save_and_shutdown(self) -> None:
        """File ▸ Save (wait until the server has the file), then shut the kernel down and close."""
        path = self.server.root / self.name
        before = path.stat().st_mtime_ns
        self.page.keyboard.press("Control+s")
        wait_for(lambda: path.stat().st_mtime_ns != before, 30, f"{self.name} saved")
        kid = self.kernel_id()
        if kid is not None:
            self.server.api("DELETE", f"kernels/{kid}")
        wait_for(lambda: self.kernel_id() is None or not self.server.kernels(), 30, "the kernel gone")

    def reopen(self) -> str:
        """Save, shut the kernel down, reopen the page without a kernel, until no widget is still
        loading; the errors are counted from the reopen on. Returns the saved notebook's text."""
        self.save_and_shutdown()
        saved = (self.server.root / self.name).read_text(encoding="utf-8")
        self.errors.clear()
        self.load()
        self.page.wait_for_load_state("networkidle")
        self.page.wait_for_function("() => !document.body.innerText.includes('Loading widget')",
                                    timeout=30_000)
        return saved

    def screenshot(self, name: str, locator: Any | None = None, *, full: bool = False) -> Path:
        """A PNG in build/browser/ of `locator` (default: the page; `full`: all of it)."""
        BUILD.mkdir(parents=True, exist_ok=True)
        path = BUILD / f"{self.server.app}-{name}.png"
        if locator is not None:
            locator.screenshot(path=str(path))
        else:
            self.page.screenshot(path=str(path), full_page=full)
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.page.close()

    def discard(self) -> None:
        """Close the page and shut its kernel down (a test's cleanup)."""
        self.close()
        kid = self.kernel_id()
        if kid is not None:
            self.server.api("DELETE", f"kernels/{kid}")
