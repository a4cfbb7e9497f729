"""A real kernel whose front end has no widget manager (issue 16, point 4): Colab (seen by
`google.colab` in the kernel) and an older VS Code (`RUNCOMFY_PROGRESS=text`). `%%runcomfy run`
shows a live text line there, rewritten in place, then one final line; the result is the static
gallery, and no widget is left open."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

from runcomfy_nb.emulator import Emulator

from .kernels import cell_messages

TOKEN = "t0k-kernel-text"
COLAB = "import sys, types; sys.modules['google.colab'] = types.ModuleType('google.colab')"


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(speed=4.0, token=TOKEN) as emulator:
        yield emulator


@pytest.mark.parametrize("front_end", ["colab", "older-vscode"])
def test_a_front_end_without_widgets_gets_a_live_text_line(emu: Emulator, tmp_path: Path,
                                                           front_end: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCOMFY_PROGRESS")}
    env.update(RUNCOMFY_TOKEN=TOKEN, RUNCOMFY_BASE_URL=emu.url, RUNCOMFY_OUTPUT_DIR=str(tmp_path),
               RUNCOMFY_JOURNAL=str(tmp_path / "jobs.sqlite3"))
    if front_end == "older-vscode":
        env["RUNCOMFY_PROGRESS"] = "text"
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=env, cwd=str(tmp_path))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        setup = COLAB + "\n" if front_end == "colab" else ""
        list(cell_messages(client, client.execute(setup + "%load_ext runcomfy_nb")))
        run = client.execute("%%runcomfy run dep-flux-kontext --out r\n31.seed = 5")
        cell = list(cell_messages(client, run, timeout=120))
        done = list(cell_messages(client, client.execute("print('MEDIA', len(r.media))")))
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)

    assert not [m for m in cell if m["msg_type"] == "error"]
    opened = {m["content"]["comm_id"] for m in cell if m["msg_type"] == "comm_open"}
    closed = {m["content"]["comm_id"] for m in cell if m["msg_type"] == "comm_close"}
    assert opened <= closed, "a widget was left open for a front end that cannot show it"
    mimes = {mime for m in cell for mime in m["content"].get("data", {})}
    assert "application/vnd.jupyter.widget-view+json" not in mimes, mimes
    text = "".join(m["content"]["text"] for m in cell if m["msg_type"] == "stream")
    assert "t0k" not in text and emu.url not in text  # no secret, no URL
    lines = [part for part in re.split(r"\r(?:\x1b\[K)?|\n", text) if part.strip()]
    progress = [line for line in lines if "dep-flux-kontext" in line]
    assert len(set(progress)) >= 3, text  # rewritten as the job moves: status, elapsed
    assert any("queued" in line or "running" in line for line in progress[:-1]), text
    finals = [line for line in progress if "succeeded in" in line]
    assert len(finals) == 1 and finals[0] == progress[-1] and "output" in finals[0], text
    assert sum(m["msg_type"] == "stream" for m in cell) >= 2  # sent while it ran, not once at the end
    assert any("MEDIA" in m["content"].get("text", "") for m in done)
