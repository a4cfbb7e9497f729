"""The tutorials that restart their own kernel (a code cell tagged `restart-kernel`; nbclient cannot
follow a restart, so test_notebooks.py leaves exactly these to this file): each is executed cell by
cell through jupyter_client's AsyncIOLoopKernelManager, whose restarter starts a new kernel when the
old one ended, as jupyter_server's does under JupyterLab. The checks are test_notebooks.py's: no error
output (a `raises-exception` cell shows one UsageError line), no secret in the saved notebook,
thumbnails embedded; and no kept emulator process is left once the notebook ran."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.ioloop import AsyncIOLoopKernelManager

from runcomfy_nb.emulator import process
from runcomfy_nb.widgets.fallback import WIDGET_VIEW

from ..helpers import until
from .test_notebooks import EMU_TOKEN, NOTEBOOKS, REAL_TOKEN, restarts_its_kernel

TUTORIALS = sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))
RESTARTING = [p for p in TUTORIALS if restarts_its_kernel(p)]
CELL_TIMEOUT = 180.0  # seconds for one cell (the long job of tutorial 05 takes about 25)
PID = re.compile(r"\(pid (\d+)\)")


def test_every_tutorial_runs_in_one_of_the_two_tests() -> None:
    assert RESTARTING and sorted(RESTARTING + NOTEBOOKS) == TUTORIALS
    assert not set(RESTARTING) & set(NOTEBOOKS)


class Kernel:
    """One notebook's kernel, through restarts: `run(cell)` fills the cell's outputs as nbclient does."""

    def __init__(self, cwd: Path) -> None:
        self.manager = AsyncIOLoopKernelManager(kernel_name="python3")  # autorestart, as the server
        self.cwd = cwd
        self.client: AsyncKernelClient | None = None
        self.restarts = 0
        # display id → the outputs it was shown in: an update from any cell re-sends them, as
        # JupyterLab routes it (until the kernel restarts; a new kernel starts a new map)
        self.displays: dict[str, list[Any]] = {}

    async def start(self) -> None:
        await self.manager.start_kernel(cwd=str(self.cwd))
        self.manager.add_restart_callback(self._restarted)
        await self._connect()

    def _restarted(self) -> None:
        self.restarts += 1

    async def _connect(self) -> None:
        if self.client is not None:
            self.client.stop_channels()
        self.client = self.manager.client()  # the restarted kernel's ports (they may be new)
        self.client.start_channels()
        await self.client.wait_for_ready(timeout=60)

    async def restart(self, cell: Any) -> None:
        """Run the cell that ends the kernel; wait until the restarter has started a new one, and
        connect to it."""
        assert self.client is not None
        before = self.restarts
        self.client.execute(cell.source)
        with contextlib.suppress(queue.Empty):  # what the ending kernel still sends, until it is gone
            while self.restarts == before:
                self._update(await self.client.get_iopub_msg(timeout=1))
        await until(lambda: self.restarts > before, timeout=60, what="the restarter to start a new kernel")
        await until(self.manager.is_alive, timeout=60, what="the new kernel")
        self.displays = {}
        await self._connect()

    def _update(self, msg: Any) -> None:
        if msg["msg_type"] == "update_display_data":
            content = msg["content"]
            for output in self.displays.get(content.get("transient", {}).get("display_id"), []):
                output.data, output.metadata = content["data"], content["metadata"]

    async def run(self, cell: Any) -> None:
        assert self.client is not None
        msg_id = self.client.execute(cell.source)
        cell.outputs = []
        while True:
            msg = await self.client.get_iopub_msg(timeout=CELL_TIMEOUT)
            self._update(msg)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                return
            if kind == "clear_output":
                cell.outputs = []
            elif kind in ("stream", "display_data", "execute_result", "error"):
                output = nbformat.v4.output_from_msg(msg)
                cell.outputs.append(output)
                if display_id := content.get("transient", {}).get("display_id"):
                    self.displays.setdefault(display_id, []).append(output)

    async def shutdown(self) -> None:
        if self.client is not None:
            self.client.stop_channels()
        with contextlib.suppress(Exception):
            await self.manager.shutdown_kernel(now=True)


@pytest.fixture
async def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Kernel]:
    monkeypatch.setenv("RUNCOMFY_EMULATOR_TOKEN", EMU_TOKEN)
    monkeypatch.setenv("RUNCOMFY_TOKEN", REAL_TOKEN)
    monkeypatch.setenv("COMFY_CLOUD_API_KEY", REAL_TOKEN + "_cloud")
    kernel = Kernel(tmp_path)
    try:
        await kernel.start()
        yield kernel
    finally:
        await kernel.shutdown()
        kept = process.read_state()  # the journal's emulator.json: this test's own
        if kept is not None:  # a notebook that failed before its last cell
            await asyncio.to_thread(process.stop_pid, kept.pid)


def check_saved(notebook: Any, path: Path) -> None:
    """test_notebooks.py's checks of an executed tutorial."""
    nbformat.write(notebook, path)
    saved = json.dumps(notebook)
    assert EMU_TOKEN not in saved and REAL_TOKEN not in saved
    for cell in (c for c in notebook.cells if c.cell_type == "code"):
        assert not [o for o in cell.outputs if o.output_type == "error"], (cell.source, cell.outputs)
        if "raises-exception" in cell.metadata.get("tags", []):
            text = "".join(o.get("text", "") for o in cell.outputs)
            said = [line for line in text.splitlines() if line.strip()]
            assert len(said) == 1 and said[0].startswith("UsageError: "), text
    assert saved.count("data:image/") >= 3, "the static fallbacks should embed thumbnails"
    assert os.path.getsize(path) < 5_000_000


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", RESTARTING, ids=[p.name for p in RESTARTING])
async def test_tutorial_survives_its_kernel_restart(path: Path, tmp_path: Path, kernel: Kernel) -> None:
    shutil.copytree(path.parent / "workflows", tmp_path / "workflows")
    notebook = nbformat.read(path, as_version=4)
    pids: set[int] = set()
    for cell in (c for c in notebook.cells if c.cell_type == "code"):
        if "restart-kernel" in cell.metadata.get("tags", []):
            await kernel.restart(cell)
            cell.outputs = []
            continue
        await kernel.run(cell)
        text = "".join(o.get("text", "") for o in cell.outputs)
        pids.update(int(pid) for pid in PID.findall(text) if "EMULATOR ON (kept)" in text)
    assert kernel.restarts == 1
    check_saved(notebook, tmp_path / path.name)
    # reopened without its kernel, a widget view reads "Error displaying widget: model not found":
    # the job the old kernel followed when it ended, too, is kept as a static view
    live = [(cell.source.splitlines()[0], o["data"].get("text/plain", "")) for cell in notebook.cells
            for o in cell.get("outputs", []) if WIDGET_VIEW in o.get("data", {})]
    assert not live, live
    assert len(pids) == 1, "both kernels use the one kept emulator"
    assert process.read_state() is None and not process.process_alive(pids.pop())
