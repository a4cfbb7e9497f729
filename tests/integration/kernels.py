"""A real Jupyter kernel for the tests that need one (Ctrl-C, a restart), run through jupyter_client."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from runcomfy_nb.emulator import Emulator


def cell_messages(client: Any, msg_id: str, timeout: float = 60) -> Iterator[dict[str, Any]]:
    """The iopub messages of one cell as they come, until the kernel is idle again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = client.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        yield msg
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return
    raise TimeoutError(f"the cell did not end within {timeout} s")


def cell_text(client: Any, msg_id: str, marker: str = "", timeout: float = 60) -> str:
    """What the cell printed, its tracebacks and values' text, until `marker` appears (or it ends)."""
    seen = ""
    try:
        for msg in cell_messages(client, msg_id, timeout):
            content = msg["content"]
            seen += content.get("text", "") + "".join(content.get("traceback", []))
            seen += str(content.get("data", {}).get("text/plain", ""))
            if marker and marker in seen:
                break
    except TimeoutError:
        raise AssertionError(f"no {marker or 'end'!r} within {timeout} s; output so far: "
                             f"{seen[-2000:]!r}") from None
    return seen


class Kernel:
    """A real IPython kernel (jupyter_client) pointed at the emulator with `token`; the output of
    each cell it ran is appended to `shown` (for the secret checks)."""

    def __init__(self, emu: Emulator, token: str, shown: list[str]) -> None:
        env = {**os.environ, "RUNCOMFY_TOKEN": token, "RUNCOMFY_BASE_URL": emu.url,
               "RUNCOMFY_USER_ID": emu.user_id}  # RUNCOMFY_JOURNAL: the test's own, inherited
        self.shown, self.manager = shown, KernelManager(kernel_name="python3")
        self.manager.start_kernel(env=env)
        self.client: BlockingKernelClient = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def start(self, code: str) -> str:
        return self.client.execute(code)

    def output(self, msg_id: str, marker: str = "", timeout: float = 60) -> str:
        """The cell's output until `marker` appears, or until it ends; kept for the secret checks."""
        seen = cell_text(self.client, msg_id, marker, timeout)
        self.shown.append(seen)
        return seen

    def restart(self) -> None:
        self.manager.restart_kernel(now=True)
        self.client.wait_for_ready(timeout=60)

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)
