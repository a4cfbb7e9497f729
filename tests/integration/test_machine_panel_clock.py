"""MachinePanel on the server's clock, and every field known about a machine kept (issue 16
point 2): uptime and cost come from the server's timestamps against the server's own now (its
`Date` header: the emulator's virtual clock runs `speed` times faster than ours), and a panel made
after a stop still shows the machine's type."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

import runcomfy_nb as rc
from runcomfy_nb import sync
from runcomfy_nb.clients.machines import MachineInfo
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.widgets import MachinePanel
from runcomfy_nb.widgets.machines import ServerClock

from ..helpers import TOKEN, wait_for

ROOT = Path(__file__).resolve().parents[2]

SPEED = 60.0
ID = "d26d4f31-8696-43ad-ba62-b4f8c268b79a"


def http_date(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, timezone.utc), usegmt=True)


def test_machine_info_reads_the_servers_clock_and_keeps_what_a_404_lacks() -> None:
    before = time.time()
    info = MachineInfo.from_reply({"server_id": ID, "current_status": "Ready", "server_type": "medium",
                                   "service_ready_at": "2030-01-01T00:00:00Z", "estimated_duration": 600},
                                  date=http_date(1_900_000_000))
    assert info.server_now == 1_900_000_000 and before <= (info.seen_at or 0) <= time.time()
    odd = MachineInfo.from_reply({"server_id": ID, "current_status": "Ready"}, date="nonsense")
    assert odd.server_now is None and odd.seen_at is None
    gone = MachineInfo(server_id=ID, state="stopped", raw_status="(gone)")
    kept = info.updated_by(gone)
    assert (kept.state, kept.raw_status, kept.server_type, kept.ready_at, kept.estimated_duration) == (
        "stopped", "(gone)", "medium", info.ready_at, 600)


class Reply:
    """What ServerClock reads of a MachineInfo."""

    def __init__(self, seen_at: float, server_now: float) -> None:
        self.seen_at, self.server_now = seen_at, server_now


def test_server_clock_measures_offset_and_rate() -> None:
    clock = ServerClock()
    assert abs(clock.now() - time.time()) < 1  # no dates yet: our own clock
    clock.observe(Reply(1000.0, 50_000.0))
    assert clock.rate == 1.0 and clock.now(1010.0) == pytest.approx(50_010.5)
    clock.observe(Reply(1010.0, 50_600.0))  # 600 server seconds in 10 of ours
    assert clock.rate == pytest.approx(60.0) and clock.now(1011.0) == pytest.approx(50_660.5)
    steady = ServerClock()
    steady.observe(Reply(0.0, 5.0))
    steady.observe(Reply(10.0, 14.0))  # a Date header has 1 s resolution: this is rate 1
    assert steady.rate == 1.0
    steady.observe(Reply(5.0, 99.0))  # an older reply tells nothing new
    assert steady.last == (10.0, 14.0)


class FakeMachine:
    def __init__(self, info: MachineInfo) -> None:
        self.info, self.id, self.keep = info, info.server_id, False

    async def refresh(self) -> MachineInfo:
        return self.info


class FakeMachines:
    def __init__(self, machine: FakeMachine) -> None:
        self.launched = {machine.id: machine}
        self.prices = {"medium": 0.99}


async def test_uptime_and_cost_are_on_the_servers_clock() -> None:
    # the server's clock is 2 h ahead of ours; the machine has been Ready for 10 min by it
    ours = time.time()
    theirs = ours + 7200
    info = MachineInfo(server_id=ID, state="ready", raw_status="Ready", server_type="medium",
                       estimated_duration=3600, ready_at=theirs - 600, stopping_at=theirs + 3000,
                       server_now=theirs, seen_at=ours)
    panel = MachinePanel(FakeMachines(FakeMachine(info)), loop=asyncio.get_running_loop())
    try:
        await asyncio.sleep(0)
        uptime, cost, left = panel._figures(panel.rows[0], panel.clock.now())
        assert uptime.startswith("10 min") and cost == "≈$0.17" and left.startswith(("49 min 5", "50 min"))
        assert "up 10 min" in panel._text()
        clock_now = panel.rows[0]["clock_now"]  # the browser ticks from the server's now, not its own
        assert clock_now == pytest.approx(theirs, abs=5) and panel.rows[0]["clock_rate"] == 1.0
    finally:
        panel.close()


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(speed=SPEED, token=TOKEN) as emu:  # its own: the 1 request/s limit is per account
        yield emu


@pytest.fixture
def client(emulator: Emulator) -> Iterator[Any]:
    client = rc.RunComfy(token=TOKEN, base_url=emulator.url, user_id=emulator.user_id)
    sync.unwrap(client.machines)._notify = lambda _text: None
    try:
        yield client
    finally:
        client.machines.stop_all(include_kept=True)


def uptime_seconds(panel: MachinePanel) -> float:
    row = panel.rows[0]
    if row.get("ready_at") is None:
        return 0.0
    return panel.clock.now() - row["ready_at"]


def test_uptime_advances_at_the_emulators_speed(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MachinePanel, "MIN_REFRESH", 1.0)
    version = client.machines.workflows()[0].version_id
    machine = client.machines.launch(version, server_type="medium", duration="2h")
    machine.wait_ready(timeout=60, poll=0.2)
    panel = MachinePanel(client.machines, refresh_every=1.0)
    try:
        wait_for(lambda: panel.clock.rate > 30, timeout=20, what="the server clock's rate measured")
        start = uptime_seconds(panel)
        wait_for(lambda: uptime_seconds(panel) >= start + 120, timeout=10, what="2 virtual minutes")
        uptime, cost, _left = panel._figures(panel.rows[0], panel.clock.now())
        assert uptime != "0 s" and cost not in ("≈$0.00", "—"), (uptime, cost)
        assert panel.clock.rate == pytest.approx(SPEED, rel=0.1)
    finally:
        panel.close()


def test_a_panel_made_after_a_stop_shows_the_type(client: Any) -> None:
    version = client.machines.workflows()[0].version_id
    machine = client.machines.launch(version, server_type="medium", duration="1h")
    machine.wait_ready(timeout=60, poll=0.2)
    machine.stop()
    wait_for(lambda: machine.refresh().raw_status == "(gone)" or machine.info.state == "stopped",
             timeout=30, what="the machine gone")
    panel = MachinePanel(client.machines, refresh_every=10.0)
    try:
        wait_for(lambda: panel.rows, timeout=10)
        assert panel.rows[0]["server_type"] == "medium"
        assert " ? " not in panel._text() and "medium" in panel._text()
    finally:
        panel.close()


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the panel's module")
def test_the_browser_ticks_on_the_servers_clock() -> None:
    # machines.js: a row carries the server's now when sent and its rate; the browser's own clock
    # only measures how long ago that was
    script = f"""
    import {{ figures, serverNow }} from {json.dumps((ROOT / "js" / "machines.js").as_uri())};
    const row = {{ state: "ready", ready_at: 10000, stopping_at: 20000, price: 3.6,
                  clock_now: 10600, clock_rate: 60 }};
    const ours = 1000;  // the browser's clock, far behind the server's
    const at = (later) => figures(row, serverNow(row, ours, ours + later));
    const plain = {{ ...row, clock_now: undefined, clock_rate: undefined }};
    console.log(JSON.stringify([at(0), at(10), serverNow(plain, ours, 5000)]));
    """
    done = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True,
                          timeout=30, check=True)
    now, later, plain = json.loads(done.stdout)
    assert now == {"uptime": "10 min 00 s", "cost": "≈$0.60", "left": "2 h 36 min"}
    assert later["uptime"] == "20 min 00 s" and later["cost"] == "≈$1.20"  # 10 s of ours = 600 of theirs
    assert plain == 5000  # no server clock known: the browser's own
