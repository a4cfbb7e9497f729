"""Every machine a process launched is stopped when that process ends — end of script, `sys.exit`
after `async with`, SIGTERM — unless launched with keep=True. Real subprocesses, this test's
emulator: the emulator shows each machine stopping with the seconds it billed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.app import load_config

from ..helpers import TOKEN, wait_for

LAUNCH = """
import runcomfy_nb as rc
client = rc.RunComfy()
version = client.machines.workflows()[0].version_id
machine = client.machines.launch(version, server_type="medium", duration="1h"{keep})
machine.wait_ready(timeout=60, poll=0.5)
print("READY", machine.id, flush=True)
"""

ASYNC_LAUNCH = """
import asyncio, sys
import runcomfy_nb as rc

async def main():
    async with rc.AsyncRunComfy() as client:
        version = (await client.machines.workflows())[0].version_id
        machine = await client.machines.launch(version, server_type="medium", duration="1h")
        await machine.wait_ready(timeout=60, poll=0.5)
        print("READY", machine.id, flush=True)

asyncio.run(main())
sys.exit(0)
"""


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    config = load_config(None)
    config["machines"].update(ready_seconds=20, deleting_seconds=600)
    with Emulator(speed=20.0, token=TOKEN, config=config) as emulator:
        yield emulator


def environment(emu: Emulator) -> dict[str, str]:
    return {**os.environ, "RUNCOMFY_TOKEN": TOKEN, "RUNCOMFY_BASE_URL": emu.url,
            "RUNCOMFY_USER_ID": emu.user_id}


def record(emu: Emulator, server_id: str) -> dict[str, Any]:
    return next(m for m in emu.machines() if m["server_id"] == server_id)


def stop_as_another_client(emu: Emulator, server_id: str) -> httpx.Response:
    """A plain DELETE, as another client would send it, after the account's 429s (the process that
    just exited used the account's calls too): each waits the Retry-After the server names."""
    for _ in range(10):
        reply = httpx.delete(f"{emu.url}/prod/api/users/{emu.user_id}/servers/{server_id}",
                             headers={"Authorization": f"Bearer {TOKEN}"})
        if reply.status_code != 429:
            return reply
        time.sleep(min(5.0, float(reply.headers.get("retry-after") or 1.0)))
    return reply


def server_id_in(out: str) -> str:
    return next(line.split()[1] for line in out.splitlines() if line.startswith("READY "))


def assert_stopped_at_exit(emu: Emulator, out: str) -> None:
    server_id = server_id_in(out)
    machine = record(emu, server_id)
    assert machine["status"] == "Deleting", machine  # stopped by the exit guard, not by its timer
    assert 0 < machine["billed_seconds"] < 3600
    said = [line for line in out.splitlines() if server_id[:8] in line and "billing has ended" in line]
    assert len(said) == 1, out
    assert TOKEN not in out


def test_end_of_a_blocking_script(emu: Emulator) -> None:
    done = subprocess.run([sys.executable, "-c", LAUNCH.format(keep="")], env=environment(emu),
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert_stopped_at_exit(emu, done.stdout)


def test_sys_exit_after_async_with(emu: Emulator) -> None:
    done = subprocess.run([sys.executable, "-c", ASYNC_LAUNCH], env=environment(emu),
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert_stopped_at_exit(emu, done.stdout)


def test_sigterm_while_waiting(emu: Emulator) -> None:
    script = LAUNCH.format(keep="") + "import time\ntime.sleep(120)\nprint('NOT INTERRUPTED')\n"
    process = subprocess.Popen([sys.executable, "-c", script], env=environment(emu),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        seen = ""
        while not seen.endswith("\n") or not seen.splitlines()[-1].startswith("READY "):
            line = process.stdout.readline()  # blocks until a line (or the end of its output)
            assert line, seen
            seen += line
        process.send_signal(signal.SIGTERM)
        rest, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGTERM, err
    assert "NOT INTERRUPTED" not in rest
    assert_stopped_at_exit(emu, seen + rest)


def test_keep_leaves_it_running(emu: Emulator) -> None:
    done = subprocess.run([sys.executable, "-c", LAUNCH.format(keep=", keep=True")], env=environment(emu),
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    server_id = server_id_in(done.stdout)
    assert record(emu, server_id)["status"] == "Ready"
    assert "billing has ended" not in done.stdout
    assert stop_as_another_client(emu, server_id).status_code == 200
    wait_for(lambda: record(emu, server_id)["status"] != "Ready")


def test_kernel_shutdown(emu: Emulator) -> None:
    """A real kernel, shut down the way Jupyter does it (a shutdown request, not a kill)."""
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=environment(emu))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        out: list[str] = []
        reply = client.execute_interactive(
            LAUNCH.format(keep=""), timeout=90,
            output_hook=lambda msg: out.append(msg["content"].get("text", "")))
        assert reply["content"]["status"] == "ok"
        server_id = server_id_in("".join(out))
        assert record(emu, server_id)["status"] == "Ready"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)  # shutdown_request: the kernel exits on its own
    assert record(emu, server_id)["status"] == "Deleting"
    assert record(emu, server_id)["billed_seconds"] > 0
