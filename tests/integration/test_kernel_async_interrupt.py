"""Ctrl-C in a real kernel, in the README's async pattern (`async with … await job.result()`):
the interrupt reaches the cell as a cancel, and the remote job is cancelled — confirmed by the
server — before the cell ends."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from runcomfy_nb.emulator import Emulator

from ..helpers import TOKEN
from .kernels import cell_text

DEP = "dep-flux-kontext"


@pytest.fixture
def kernel(fresh: Emulator) -> Iterator[Any]:
    env = {**os.environ, "RUNCOMFY_TOKEN": TOKEN, "RUNCOMFY_BASE_URL": fresh.url}
    manager = KernelManager(kernel_name="python3")  # ipykernel's own spec: this interpreter
    manager.start_kernel(env=env)
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_interrupting_an_async_cell_cancels_the_remote_job(kernel: Any, fresh: Emulator) -> None:
    manager, client = kernel
    fresh.set_fault(DEP, "slow_queue", seconds=100_000)
    cell = (
        "import runcomfy_nb as rc\n"
        "async with rc.AsyncRunComfy() as c:\n"
        f"    job = await c.deployments.submit({DEP!r}, overrides={{'31': {{'inputs': {{'seed': 4}}}}}})\n"
        "    print('SUBMITTED', job.id, flush=True)\n"
        "    await job.result()\n"
    )
    msg_id = client.execute(cell)
    seen = cell_text(client, msg_id, "SUBMITTED", 60)
    request_id = seen.split("SUBMITTED", 1)[1].split()[0]
    manager.interrupt_kernel()
    reply = client.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = client.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "error"  # the cell was interrupted ...
    # ... and by the time it ended, the server had cancelled the job
    remote = next(r for r in fresh.requests_for(DEP) if r.id == request_id)
    assert remote.status == "cancelled"
