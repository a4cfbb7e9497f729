"""MachinePanel, driven by fake machines (plain classes with the attributes and async methods of
`Machines`/`Machine`) on the test's own loop and on a background-thread loop, and once by the
blocking facade against the emulator."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import runcomfy_nb as rc
from runcomfy_nb import loops, sync
from runcomfy_nb.clients.machines import MachineInfo
from runcomfy_nb.config import Secret
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.widgets import MachinePanel

from ..helpers import TOKEN
from ..unit.test_widgets import record_messages, thread_loop, until, wait_for

__all__ = ["thread_loop"]  # a fixture, used by name

SENTINEL = "https://SENTINEL-4c1e9b-comfyui.runcomfy.com"
ID_A = "d26d4f31-8696-43ad-ba62-b4f8c268b79a"
ID_B = "761af3a7-1b2c-4d5e-8f90-a1b2c3d4e5f6"
ID_C = "0c0ffee0-0000-4000-8000-000000000003"


def info(server_id: str, state: str = "ready", *, server_type: str = "large", ready_ago: float | None = 600,
         left: float = 3000, duration: int = 3600) -> MachineInfo:
    now = time.time()
    ready_at = None if ready_ago is None or state == "starting" else now - ready_ago
    raw = {"starting": "Starting", "ready": "Ready", "stopping": "Deleting", "stopped": "(gone)",
           "failed": "Error"}[state]
    return MachineInfo(
        server_id=server_id, state=state, raw_status=raw, server_type=server_type,
        estimated_duration=duration, url=Secret(SENTINEL) if state == "ready" else None,
        ready_at=ready_at, stopping_at=None if ready_at is None else now + left,
    )


class FakeMachine:
    """What MachinePanel uses of a `Machine`; records the thread of each call."""

    def __init__(self, machine_info: MachineInfo) -> None:
        self.info = machine_info
        self.id = machine_info.server_id
        self.keep = False
        self.calls: list[tuple[str, Any]] = []
        self.threads: list[int] = []
        self.next: list[MachineInfo | Exception] = []  # what the next refreshes answer
        self.fail: dict[str, Exception] = {}
        self.gate: asyncio.Event | None = None

    def _record(self, name: str, arg: Any = None) -> None:
        self.calls.append((name, arg))
        self.threads.append(threading.get_ident())

    def count(self, name: str) -> int:
        return sum(1 for call, _ in self.calls if call == name)

    async def refresh(self) -> MachineInfo:
        self._record("refresh")
        await asyncio.sleep(0)
        if self.next:
            step = self.next.pop(0)
            if isinstance(step, Exception):
                raise step
            self.info = step
        return self.info

    async def stop(self) -> MachineInfo:
        self._record("stop")
        if self.gate is not None:
            await self.gate.wait()
        if "stop" in self.fail:
            raise self.fail["stop"]
        self.info = dataclasses.replace(self.info, state="stopping", raw_status="Deleting", url=None)
        return self.info

    async def extend(self, by: Any) -> MachineInfo:
        self._record("extend", by)
        await asyncio.sleep(0)
        if "extend" in self.fail:
            raise self.fail["extend"]
        self.info = dataclasses.replace(
            self.info, estimated_duration=(self.info.estimated_duration or 0) + 1800,
            stopping_at=None if self.info.stopping_at is None else self.info.stopping_at + 1800)
        return self.info


class FakeMachines:
    def __init__(self, *machines: FakeMachine) -> None:
        self.launched = {m.id: m for m in machines}
        self.prices = {"medium": 0.99, "large": 1.75}


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refreshes as fast as the tests need (the real floor is 1 s)."""
    monkeypatch.setattr(MachinePanel, "MIN_REFRESH", 0.02)
    yield


def row(panel: MachinePanel, server_id: str) -> dict[str, Any]:
    return next(r for r in panel.rows if r["id"] == server_id)


def click(panel: MachinePanel, kind: str, server_id: str) -> None:
    panel._handle_custom_msg({"type": kind, "id": server_id}, [])  # what the buttons send


def assert_no_secret(panel: MachinePanel, messages: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
    data, _ = panel._repr_mimebundle_()
    texts = [json.dumps(panel.get_state(), default=str), json.dumps(data, default=str), repr(panel),
             json.dumps(messages, default=str)]
    for text in texts:
        assert "SENTINEL" not in text and "runcomfy.com" not in text


# --- on the test's own loop --------------------------------------------------------------------


async def test_rows_show_every_launched_machine() -> None:
    ready = FakeMachine(info(ID_A, "ready", ready_ago=3600, left=1800))
    starting = FakeMachine(info(ID_B, "starting", server_type="medium"))
    panel = MachinePanel(FakeMachines(ready, starting))
    try:
        assert panel.loop is asyncio.get_running_loop()
        assert [r["id"] for r in panel.rows] == [ID_A, ID_B]
        a, b = row(panel, ID_A), row(panel, ID_B)
        assert (a["short"], a["server_type"], a["state"], a["price"]) == ("d26d4f31", "large", "ready", 1.75)
        assert a["stopping_at"] - a["ready_at"] == pytest.approx(5400, abs=1)
        assert (b["state"], b["ready_at"], b["price"]) == ("starting", None, 0.99)
        text = panel._repr_mimebundle_()[0]["text/plain"]
        assert "d26d4f31" in text and "ready" in text and "≈$1.75" in text and "left 29 min" in text
        assert "not ready (not billed)" in text and "1 h 00 min once ready" in text
        assert repr(panel) == "<MachinePanel 2 machines: 1 ready, 1 starting>"
    finally:
        panel.close()


async def test_rows_follow_the_machines_states(fast: None) -> None:
    machine = FakeMachine(info(ID_A, "starting"))
    machine.next = [info(ID_A, "starting"), info(ID_A, "ready", ready_ago=1)]
    panel = MachinePanel(FakeMachines(machine), refresh_every=0.05)
    seen: list[str] = []
    panel.observe(lambda change: seen.extend(r["state"] for r in change["new"]), names="rows")
    try:
        await until(lambda: row(panel, ID_A)["state"] == "ready")
        assert row(panel, ID_A)["ready_at"] is not None and panel.refreshed_at is not None
        assert seen[-1] == "ready" and panel.refreshing
        # the machine stops itself at estimated_stopping_at; the server then answers 404
        machine.next = [dataclasses.replace(info(ID_A, "stopped"), server_type="", estimated_duration=None)]
        await until(lambda: row(panel, ID_A)["state"] == "stopped")
        gone = row(panel, ID_A)
        assert gone["server_type"] == "large" and gone["ready_at"] is not None  # what was known is kept
        assert gone["ended_at"] is not None
        calls = machine.count("refresh")
        await asyncio.sleep(0.3)
        assert machine.count("refresh") == calls  # a stopped machine is asked no more
    finally:
        panel.close()


async def test_a_machine_launched_later_shows_up(fast: None) -> None:
    machines = FakeMachines(FakeMachine(info(ID_A)))
    panel = MachinePanel(machines, refresh_every=0.05)
    try:
        later = FakeMachine(info(ID_B, "starting"))
        machines.launched[later.id] = later
        await until(lambda: len(panel.rows) == 2)
        assert panel.rows[1]["id"] == ID_B
    finally:
        panel.close()


async def test_stop_button_stops_the_machine() -> None:
    machine = FakeMachine(info(ID_A))
    machine.gate = asyncio.Event()
    panel = MachinePanel(FakeMachines(machine))
    try:
        click(panel, "stop", ID_A)
        assert row(panel, ID_A)["pending"] == "stop"  # shown at once
        click(panel, "stop", ID_A)  # a second click while the first is under way
        click(panel, "extend", ID_A)
        await asyncio.sleep(0.05)  # time for the refused clicks to (wrongly) call: nothing to wait for
        machine.gate.set()
        await until(lambda: row(panel, ID_A)["pending"] == "")
        r = row(panel, ID_A)
        assert machine.calls == [("stop", None)] and machine.threads == [threading.get_ident()]
        assert (r["state"], r["handled"], r["error"]) == ("stopping", 1, "")
        assert r["ended_at"] == pytest.approx(time.time(), abs=2)
        # a stopped machine: the buttons are refused with a reason, nothing is called
        click(panel, "extend", ID_A)
        await until(lambda: row(panel, ID_A)["handled"] == 2)
        assert "cannot extend: the machine is stopping" in row(panel, ID_A)["error"]
        assert machine.calls == [("stop", None)]
    finally:
        panel.close()


async def test_extend_button_adds_thirty_minutes() -> None:
    machine = FakeMachine(info(ID_A, left=600))
    panel = MachinePanel(FakeMachines(machine))
    try:
        before = row(panel, ID_A)["stopping_at"]
        click(panel, "extend", ID_A)
        await until(lambda: row(panel, ID_A)["handled"] == 1)
        r = row(panel, ID_A)
        assert machine.calls == [("extend", "30m")]
        assert r["stopping_at"] == pytest.approx(before + 1800) and r["estimated_duration"] == 5400
        assert r["state"] == "ready" and r["error"] == "" and r["pending"] == ""
    finally:
        panel.close()


async def test_errors_show_in_the_row_without_secrets() -> None:
    machine = FakeMachine(info(ID_A))
    machine.fail["extend"] = rc.ValidationError(f"no extending today ({SENTINEL})")  # ours: scrubbed too
    machine.fail["stop"] = RuntimeError(f"DELETE {SENTINEL}/x failed")
    panel = MachinePanel(FakeMachines(machine))
    messages = record_messages(panel)
    try:
        click(panel, "extend", ID_A)
        await until(lambda: row(panel, ID_A)["handled"] == 1)
        assert row(panel, ID_A)["error"] == "extend failed: no extending today (<machine url>)"
        click(panel, "stop", ID_A)
        await until(lambda: row(panel, ID_A)["handled"] == 2)
        r = row(panel, ID_A)
        assert r["error"].startswith("stop failed: RuntimeError: DELETE <") and r["state"] == "ready"
        html = panel._repr_mimebundle_()[0]["text/html"]
        assert "stop failed" in html and "#dc2626" in html
        assert "stop failed" in panel._repr_mimebundle_()[0]["text/plain"]
        assert_no_secret(panel, messages)
        assert any(m["data"].get("method") == "update" for m in messages)
    finally:
        panel.close()


async def test_a_failed_refresh_warns_and_recovers(fast: None) -> None:
    machine = FakeMachine(info(ID_A))
    machine.next = [*[ConnectionError(f"reset by {SENTINEL}")] * 6, info(ID_A)]
    panel = MachinePanel(FakeMachines(machine), refresh_every=0.05)
    try:
        await until(lambda: row(panel, ID_A)["warning"] != "")
        assert row(panel, ID_A)["warning"] == "could not refresh: ConnectionError: reset by <url>"
        assert row(panel, ID_A)["state"] == "ready"
        await until(lambda: row(panel, ID_A)["warning"] == "")
        assert panel.refreshing  # one failure does not end the refreshing
    finally:
        panel.close()


async def test_closing_stops_the_refresh_but_not_a_stop_under_way(fast: None) -> None:
    machine = FakeMachine(info(ID_A))
    machine.gate = asyncio.Event()
    panel = MachinePanel(FakeMachines(machine), refresh_every=0.05)
    await until(lambda: machine.count("refresh") >= 2)
    click(panel, "stop", ID_A)
    panel.close()
    assert not panel.refreshing
    calls = machine.count("refresh")
    machine.gate.set()
    await asyncio.sleep(0.3)  # time for refreshes that should not come (several refresh_every)
    assert machine.count("refresh") == calls
    assert machine.count("stop") == 1 and machine.info.state == "stopping"


async def test_refresh_is_never_faster_than_the_api_allows(fast: None) -> None:
    machine = FakeMachine(info(ID_A))
    with pytest.raises(rc.ValidationError, match=r"at least 0\.02 s"):
        MachinePanel(FakeMachines(machine), refresh_every=0.001)
    panel = MachinePanel(FakeMachines(machine), refresh_every=0.2)
    with pytest.raises(rc.ValidationError):
        panel.refresh_every = 0.0
    # a second panel on the same machine shares the refreshes instead of doubling them
    other = MachinePanel(FakeMachines(machine), refresh_every=0.2)
    try:
        start = time.monotonic()
        await asyncio.sleep(1.0)
        elapsed = time.monotonic() - start
        assert machine.count("refresh") <= elapsed / 0.2 + 1  # not twice that
    finally:
        panel.close()
        other.close()


def test_the_real_floor_is_one_request_per_second() -> None:
    assert MachinePanel.MIN_REFRESH == 1.0
    loop = asyncio.new_event_loop()
    with pytest.raises(rc.ValidationError, match="1 request per second"):
        MachinePanel(FakeMachines(), refresh_every=0.5, loop=loop)
    loop.close()


async def test_no_machine_url_anywhere(fast: None) -> None:
    machine = FakeMachine(info(ID_A))
    other = FakeMachine(info(ID_B, "failed"))
    panel = MachinePanel(FakeMachines(machine), include=[other], refresh_every=0.05)
    messages = record_messages(panel)
    try:
        await until(lambda: machine.count("refresh") >= 2)
        click(panel, "extend", ID_A)
        await until(lambda: row(panel, ID_A)["handled"] == 1)
        assert [r["id"] for r in panel.rows] == [ID_A, ID_B]
        assert_no_secret(panel, messages)
        data, _ = panel._repr_mimebundle_()
        assert "<script" not in data["text/html"].lower() and "href" not in data["text/html"]
    finally:
        panel.close()


async def test_static_fallbacks() -> None:
    empty = MachinePanel(FakeMachines())
    data, _ = empty._repr_mimebundle_()
    assert "No machines launched from this kernel yet" in data["text/html"]
    assert data["text/plain"] == "MachinePanel: no machines launched from this kernel yet."
    assert "application/vnd.jupyter.widget-view+json" in data
    empty.close()

    kept = FakeMachine(info(ID_A, "ready", ready_ago=7200, left=-5))
    kept.keep = True
    stopped = FakeMachine(info(ID_B, "stopping", server_type="mystery"))
    panel = MachinePanel(FakeMachines(kept, stopped))
    try:
        html = panel._repr_mimebundle_()[0]["text/html"]
        assert "(kept)" in html and "due now" in html and "≈$3.50" in html  # 2 h at $1.75
        assert "#16a34a" in html and "#6b7280" in html and "Costs are estimates" in html
        assert row(panel, ID_B)["price"] is None and "mystery" in html
    finally:
        panel.close()


async def test_explicit_machine_infos_become_machines() -> None:
    from runcomfy_nb.clients.machines import Machine

    listed = info(ID_C, "ready")
    machines = FakeMachines()
    panel = MachinePanel(machines, include=[listed])
    try:
        assert [r["id"] for r in panel.rows] == [ID_C]
        assert isinstance(panel._objects[ID_C], Machine)
    finally:
        panel.close()


# --- on a background loop, as with the blocking facade -----------------------------------------


def on(loop: asyncio.AbstractEventLoop, make: Any) -> Any:
    async def run() -> Any:
        return make()

    return asyncio.run_coroutine_threadsafe(run(), loop).result(5)


def test_buttons_act_on_the_machines_loop(thread_loop: asyncio.AbstractEventLoop) -> None:
    machine = on(thread_loop, lambda: FakeMachine(info(ID_A)))
    panel = MachinePanel(FakeMachines(machine), loop=thread_loop)  # made on the kernel's thread
    try:
        assert panel.loop is thread_loop
        loop_thread = on(thread_loop, threading.get_ident)
        click(panel, "extend", ID_A)
        wait_for(lambda: row(panel, ID_A)["handled"] == 1)
        click(panel, "stop", ID_A)
        wait_for(lambda: row(panel, ID_A)["state"] == "stopping" and row(panel, ID_A)["pending"] == "")
        assert [c for c, _ in machine.calls if c != "refresh"] == ["extend", "stop"]
        assert set(machine.threads) == {loop_thread} != {threading.get_ident()}
        assert_no_secret(panel)
    finally:
        panel.close()


def test_a_click_never_waits_for_the_machines_loop(thread_loop: asyncio.AbstractEventLoop) -> None:
    # clicks are handled on the kernel's thread while a cell blocks (runcomfy_nb.uievents): they
    # must only schedule work on the machines' loop, never wait for it
    machine = on(thread_loop, lambda: FakeMachine(info(ID_A)))
    panel = MachinePanel(FakeMachines(machine), loop=thread_loop)
    try:
        busy, release, hogged = threading.Event(), threading.Event(), []
        thread_loop.call_soon_threadsafe(lambda: (busy.set(), hogged.append(release.wait(10))))
        assert busy.wait(5)
        click(panel, "stop", ID_A)
        returned_while_busy = not hogged
        release.set()
        assert returned_while_busy
        wait_for(lambda: row(panel, ID_A)["state"] == "stopping" and row(panel, ID_A)["pending"] == "")
    finally:
        panel.close()


def test_background_refresh_on_the_machines_loop(thread_loop: asyncio.AbstractEventLoop, fast: None) -> None:
    machine = on(thread_loop, lambda: FakeMachine(info(ID_A, "starting")))
    machine.next = [info(ID_A, "starting"), info(ID_A, "ready", ready_ago=1)]
    panel = MachinePanel(FakeMachines(machine), refresh_every=0.05, loop=thread_loop)
    try:
        wait_for(lambda: row(panel, ID_A)["state"] == "ready")
        assert set(machine.threads) == {on(thread_loop, threading.get_ident)}
    finally:
        panel.close()
    calls = machine.count("refresh")
    time.sleep(0.3)  # time for refreshes that should not come (several refresh_every)
    assert machine.count("refresh") == calls


def test_a_stopped_loop_is_reported_not_hung() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    machine = on(loop, lambda: FakeMachine(info(ID_A)))
    panel = MachinePanel(FakeMachines(machine), loop=loop)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    click(panel, "stop", ID_A)
    assert "event loop has stopped" in row(panel, ID_A)["error"] and machine.count("stop") == 0
    panel.close()
    loop.close()


def test_which_loop_by_default(thread_loop: asyncio.AbstractEventLoop) -> None:
    machines = FakeMachines()
    assert loops.home(machines) is loops.background()  # no loop running here
    assert loops.home(sync.Blocking(machines)) is loops.background()
    assert loops.home(machines, thread_loop) is thread_loop
    assert on(thread_loop, lambda: loops.home(machines)) is thread_loop
    assert on(thread_loop, lambda: loops.home(sync.Blocking(machines))) is loops.background()


# --- the blocking facade against the emulator ----------------------------------------------------


@pytest.fixture(scope="module")
def machine_emulator() -> Iterator[Emulator]:
    with Emulator(speed=60.0, token=TOKEN) as emu:  # its own: the 1 request/s limit is per account
        yield emu


def test_the_panel_stops_a_real_machine(machine_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MachinePanel, "MIN_REFRESH", 0.5)
    client = rc.RunComfy(token=TOKEN, base_url=machine_emulator.url, user_id=machine_emulator.user_id)
    sync.unwrap(client.machines)._notify = lambda _text: None
    version = client.machines.workflows()[0].version_id
    machine = client.machines.launch(version, server_type="medium", duration="10m")
    panel = MachinePanel(client.machines, refresh_every=0.5)
    messages = record_messages(panel)
    try:
        assert panel.loop is loops.background()
        wait_for(lambda: row(panel, machine.id)["state"] == "ready", timeout=60)
        url = machine_emulator.comfy_url(machine.id)
        click(panel, "extend", machine.id)
        wait_for(lambda: row(panel, machine.id)["handled"] == 1, timeout=30)
        assert row(panel, machine.id)["error"] == "" and row(panel, machine.id)["estimated_duration"] == 2400
        click(panel, "stop", machine.id)
        wait_for(lambda: row(panel, machine.id)["handled"] == 2, timeout=30)
        assert row(panel, machine.id)["state"] in ("stopping", "stopped"), row(panel, machine.id)
        states = {m["server_id"]: m["status"] for m in machine_emulator.machines()}
        assert states.get(machine.id, "gone") != "Ready"
        for text in (json.dumps(panel.get_state()), json.dumps(messages, default=str),
                     json.dumps(panel._repr_mimebundle_()[0], default=str)):
            assert url not in text
        assert not [r for r in machine_emulator.log if r.status == 429]
    finally:
        panel.close()
        client.machines.stop_all(include_kept=True)


async def test_a_stop_from_a_cell_shows_at_once_not_at_the_next_refresh() -> None:
    from runcomfy_nb.clients.machines import Machine

    class Api:  # the Server API's answer to the stop, as Machines.stop gives it
        async def stop(self, server_id: str) -> MachineInfo:
            return info(server_id, "stopping")

    machine = Machine(Api(), info("m-stopped-in-a-cell"))  # type: ignore[arg-type]
    machines = FakeMachines()
    machines.launched = {machine.id: machine}  # type: ignore[dict-item]
    panel = MachinePanel(machines, refresh_every=3600)
    await until(lambda: row(panel, machine.id)["state"] == "ready" and panel.refreshed_at)
    await machine.stop()  # e.g. `%runcomfy stop`, not the panel's button; no refresh for an hour
    await until(lambda: row(panel, machine.id)["state"] == "stopping", timeout=5)
    assert row(panel, machine.id)["server_type"] == "large"  # what the panel knew is kept
    panel.close()
