"""Real kernel (ipykernel driven by jupyter_client): the widgets' buttons work while a cell blocks.

A `%%runcomfy run` cell blocks until its job ends, so the kernel's main thread is busy; the test
sends the very comm message the front end sends for a click (js/progress.js, js/machines.js) on
the shell channel while the cell still blocks, and the emulator — in this process — confirms the
remote effect. A cell queued behind the blocking one (Run All) must still run, after it. Ctrl-C
(`interrupt_kernel`) in a blocking cell cancels the remote job before the cell ends.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from runcomfy_nb.emulator import Emulator

from ..helpers import TOKEN, wait_for

DEP = "dep-flux-kontext"
VERSION = "c7a91e04-3b5d-4f8a-a2c6-9d0e7f1b3a02"  # a workflow version of the packaged config
Message = dict[str, Any]


class Kernel:
    """One kernel and its channels; every iopub message read is kept, in order, in `seen`."""

    def __init__(self, manager: KernelManager) -> None:
        self.manager = manager
        self.client = manager.client()
        self.seen: list[Message] = []
        self.replies: dict[str, Message] = {}

    def execute(self, code: str, *, stop_on_error: bool = True) -> str:
        return self.client.execute(code, stop_on_error=stop_on_error)

    def until(self, predicate: Callable[[Message], bool], timeout: float, what: str,
              start: int = 0) -> Message:
        """The first iopub message from `seen[start]` on (or read now) that satisfies `predicate`."""
        for msg in self.seen[start:]:
            if predicate(msg):
                return msg
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.client.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(msg)
            if predicate(msg):
                return msg
        raise AssertionError(f"no {what} within {timeout} s; output so far: {self.output()!r}")

    def reply(self, msg_id: str, timeout: float) -> Message:
        """The execute_reply to `msg_id` (replies to other requests are kept for later)."""
        deadline = time.monotonic() + timeout
        while msg_id not in self.replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no reply within {timeout} s; output so far: {self.output()!r}")
            try:
                msg = self.client.get_shell_msg(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            msg["received"] = time.monotonic()
            self.replies[msg["parent_header"].get("msg_id", "")] = msg
        return self.replies[msg_id]

    def run(self, code: str, timeout: float = 60) -> str:
        """Execute `code` and wait until it finished without an error; its output."""
        msg_id = self.execute(code)
        reply = self.reply(msg_id, timeout)
        assert reply["content"]["status"] == "ok", self.output(msg_id)
        self.until(lambda m: _idle_of(m, msg_id), 10, "idle")
        return self.output(msg_id)

    def output(self, msg_id: str | None = None) -> str:
        """What the cell `msg_id` (default: every cell) printed, tracebacks included."""
        parts = []
        for msg in self.seen:
            if msg_id is not None and msg["parent_header"].get("msg_id") != msg_id:
                continue
            content = msg["content"]
            parts.append(content.get("text", "") + "\n".join(content.get("traceback", [])))
            if msg["msg_type"] == "error":
                parts.append(f"{content['ename']}: {content['evalue']}")
        return "".join(parts)

    def widget(self, key: str, timeout: float) -> str:
        """The comm id of the first widget whose opening state has `key`."""
        msg = self.until(lambda m: m["msg_type"] == "comm_open"
                         and m["content"].get("target_name") == "jupyter.widget"
                         and key in m["content"]["data"].get("state", {}), timeout, f"widget with {key}")
        return msg["content"]["comm_id"]

    def click(self, comm_id: str, content: dict[str, Any]) -> float:
        """Send what the front end sends for a click (`model.send(content)`); when it was sent."""
        msg = self.client.session.msg("comm_msg", {
            "comm_id": comm_id, "data": {"method": "custom", "content": content}})
        self.client.shell_channel.send(msg)
        return time.monotonic()

    def update_after(self, comm_id: str, since: int, predicate: Callable[[dict[str, Any]], bool],
                     timeout: float, what: str) -> float:
        """Wait for a state update of widget `comm_id` after `seen[since]` that satisfies
        `predicate`; when it arrived."""

        def matches(msg: Message) -> bool:
            content = msg["content"]
            return (msg["msg_type"] == "comm_msg" and content.get("comm_id") == comm_id
                    and content["data"].get("method") == "update"
                    and predicate(content["data"].get("state", {})))

        self.until(matches, timeout, what, start=since)
        return time.monotonic()


def _idle_of(msg: Message, msg_id: str) -> bool:
    return (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
            and msg["parent_header"].get("msg_id") == msg_id)


@pytest.fixture
def kernel(fresh: Emulator) -> Iterator[Kernel]:
    env = {**os.environ, "RUNCOMFY_TOKEN": TOKEN, "RUNCOMFY_BASE_URL": fresh.url,
           "RUNCOMFY_USER_ID": fresh.user_id}
    manager = KernelManager(kernel_name="python3")  # ipykernel's own spec: this interpreter
    manager.start_kernel(env=env)
    kernel = Kernel(manager)
    kernel.client.start_channels()
    try:
        kernel.client.wait_for_ready(timeout=60)
        kernel.run("%load_ext runcomfy_nb")
        yield kernel
    finally:
        kernel.client.stop_channels()
        manager.shutdown_kernel(now=True)


def _cancel_calls(emulator: Emulator, request_id: str) -> int:
    return sum(1 for r in emulator.log if r.method == "POST" and r.path.endswith(f"/{request_id}/cancel"))


def test_cancel_button_works_while_the_run_cell_blocks(kernel: Kernel, fresh: Emulator) -> None:
    fresh.set_fault(DEP, "slow_queue", seconds=100_000)  # queued for well over an hour of real time
    # a cancelled job is an error, which would abort the cells queued behind (as Jupyter does):
    # stop_on_error=False lets the queued cell show that it was kept, not lost
    blocking = kernel.execute(f"%%runcomfy run {DEP}\n31.seed = 4\n", stop_on_error=False)
    after = kernel.execute("print('SECOND CELL RAN')")  # Run All: queued behind the blocking cell
    comm_id = kernel.widget("job_id", 30)
    wait_for(lambda: bool(fresh.requests_for(DEP)), 10, "submitted")
    request_id = fresh.requests_for(DEP)[-1].id
    since = len(kernel.seen)

    clicked = kernel.click(comm_id, {"type": "cancel"})
    handled = kernel.update_after(comm_id, since, lambda s: s.get("cancelling") is True, 10,
                                  "the button's 'cancelling…' state")
    reply = kernel.reply(blocking, 20)

    assert handled - clicked < 1.0  # the click was honoured at once, while the cell blocked
    assert reply["received"] - clicked < 15  # the cell ended as soon as the server confirmed
    assert _cancel_calls(fresh, request_id) >= 1
    remote = next(r for r in fresh.requests_for(DEP) if r.id == request_id)
    assert remote.status == "cancelled"
    kernel.until(lambda m: _idle_of(m, blocking), 10, "the blocking cell's idle")
    assert "cancelled" in kernel.output(blocking)
    second = kernel.reply(after, 20)  # the queued cell was kept and ran, after the blocking one
    assert second["content"]["status"] == "ok"
    assert second["received"] >= reply["received"]
    kernel.until(lambda m: _idle_of(m, after), 10, "the second cell's idle")
    assert "SECOND CELL RAN" in kernel.output(after)


def test_interrupt_in_a_blocking_run_cell_cancels_the_remote_job(kernel: Kernel, fresh: Emulator) -> None:
    fresh.set_fault(DEP, "slow_queue", seconds=100_000)
    blocking = kernel.execute(f"%%runcomfy run {DEP}\n31.seed = 5\n")
    kernel.widget("job_id", 30)  # the job was submitted; its progress is being displayed
    request_id = fresh.requests_for(DEP)[-1].id

    kernel.manager.interrupt_kernel()  # while displaying, or already waiting: cancelled either way
    kernel.reply(blocking, 30)

    # by the time the cell ended, the server had cancelled the job, and the cell said so
    remote = next(r for r in fresh.requests_for(DEP) if r.id == request_id)
    kernel.until(lambda m: _idle_of(m, blocking), 10, "idle")
    assert remote.status == "cancelled", kernel.output(blocking)
    assert _cancel_calls(fresh, request_id) >= 1
    assert f"Interrupted: job {request_id} is cancelled." in kernel.output(blocking)


def test_interrupt_in_a_blocking_result_waits_for_the_remote_cancel(kernel: Kernel, fresh: Emulator) -> None:
    fresh.set_fault(DEP, "slow_queue", seconds=100_000)
    blocking = kernel.execute(
        "import runcomfy_nb as rc\n"
        f"job = rc.RunComfy().deployments.submit({DEP!r}, overrides={{'31': {{'inputs': {{'seed': 6}}}}}})\n"
        "print('SUBMITTED', job.id, flush=True)\n"
        "job.result()\n")
    seen = kernel.until(lambda m: "SUBMITTED" in m["content"].get("text", ""), 30, "the submission")
    request_id = seen["content"]["text"].split("SUBMITTED", 1)[1].split()[0]
    printed = time.time()
    wait_for(lambda: any(r.time > printed and r.path.endswith(f"/{request_id}/status") for r in fresh.log),
              10, "polled")
    fresh.set_fault(DEP, "delay", on="cancel", seconds=2)  # a slow cancel: the cell must wait for it

    kernel.manager.interrupt_kernel()
    reply = kernel.reply(blocking, 30)

    remote = next(r for r in fresh.requests_for(DEP) if r.id == request_id)
    assert remote.status == "cancelled"  # confirmed before the cell ended, not in the background
    assert reply["content"]["status"] == "error"
    kernel.until(lambda m: _idle_of(m, blocking), 10, "idle")
    assert "KeyboardInterrupt" in kernel.output(blocking)


def _machine(emulator: Emulator, server_id: str) -> dict[str, Any]:
    return next(m for m in emulator.machines() if m["server_id"] == server_id)


def test_machine_panel_extend_and_stop_work_while_a_cell_blocks(kernel: Kernel, fresh: Emulator) -> None:
    fresh.set_fault("*", "never_ready")  # the machine stays Starting: wait_ready blocks the cell
    kernel.run("import runcomfy_nb as rc\nclient = rc.RunComfy()\n"
               f"machine = client.machines.launch({VERSION!r}, server_type='medium', duration='1h')\n"
               "display(rc.MachinePanel(client.machines, refresh_every=60))")
    comm_id = kernel.widget("rows", 10)
    server_id = fresh.machines()[-1]["server_id"]
    duration = _machine(fresh, server_id)["estimated_duration"]
    blocking = kernel.execute("machine.wait_ready(timeout=120, poll=1)", stop_on_error=False)
    after = kernel.execute("print('SECOND CELL RAN')")
    kernel.until(lambda m: m["msg_type"] == "status" and m["content"]["execution_state"] == "busy"
                 and m["parent_header"].get("msg_id") == blocking, 10, "the blocking cell's start")

    def pending(kind: str) -> Callable[[dict[str, Any]], bool]:
        return lambda state: any(r.get("pending") == kind for r in state.get("rows", []))

    since = len(kernel.seen)
    clicked = kernel.click(comm_id, {"type": "extend", "id": server_id})
    handled = kernel.update_after(comm_id, since, pending("extend"), 10, "the Extend pending state")
    assert handled - clicked < 1.0
    wait_for(lambda: _machine(fresh, server_id)["estimated_duration"] == duration + 1800, 20, "extended")
    kernel.update_after(comm_id, since, lambda s: all(not r.get("pending") for r in s.get("rows", [])),
                        20, "the end of the Extend")

    since = len(kernel.seen)
    clicked = kernel.click(comm_id, {"type": "stop", "id": server_id})
    handled = kernel.update_after(comm_id, since, pending("stop"), 10, "the Stop pending state")
    assert handled - clicked < 1.0
    wait_for(lambda: _machine(fresh, server_id)["status"] in ("Deleting", "Deleted"), 20, "stopped")
    reply = kernel.reply(blocking, 30)  # wait_ready ends: the machine will not become ready
    assert reply["content"]["status"] == "error"
    kernel.until(lambda m: _idle_of(m, blocking), 10, "the blocking cell's idle")
    assert "will not become ready" in kernel.output(blocking)
    second = kernel.reply(after, 20)
    assert second["content"]["status"] == "ok"
    assert second["received"] >= reply["received"]
