"""A real Jupyter kernel for the tests that need one (Ctrl-C, a restart), run through jupyter_client."""

from __future__ import annotations

import os
import queue
import time

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from runcomfy_nb.emulator import Emulator


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
        seen, deadline = "", time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.client.get_iopub_msg(timeout=0.5)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            content = msg["content"]
            seen += content.get("text", "") + "".join(content.get("traceback", []))
            seen += str(content.get("data", {}).get("text/plain", ""))
            if (marker and marker in seen) or (msg["msg_type"] == "status"
                                               and content["execution_state"] == "idle"):
                self.shown.append(seen)
                return seen
        raise AssertionError(f"no {marker or 'end'!r} within {timeout} s; output so far: {seen!r}")

    def restart(self) -> None:
        self.manager.restart_kernel(now=True)
        self.client.wait_for_ready(timeout=60)

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)
