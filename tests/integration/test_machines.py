"""The Server API client (machines) against the emulator, at the emulator's real 1 request/s limit."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest

import runcomfy_nb as rc
from runcomfy_nb.clients.machines import parse_duration
from runcomfy_nb.emulator import Emulator

from ..helpers import TOKEN


@pytest.fixture(autouse=True)
def _fast_retries() -> Iterator[None]:
    yield  # real stamina waits here: a 429 must wait for its Retry-After


@pytest.fixture(scope="module")
def machine_emulator() -> Iterator[Emulator]:
    # its own emulator: the machines' rate limit is per account and in real seconds
    with Emulator(speed=60.0, token=TOKEN) as emu:
        yield emu


@pytest.fixture
async def client(machine_emulator: Emulator) -> AsyncIterator[rc.AsyncRunComfy]:
    async with rc.AsyncRunComfy(token=TOKEN, base_url=machine_emulator.url,
                                user_id=machine_emulator.user_id) as c:
        c.machines._notify = notes.append
        yield c


notes: list[str] = []


def test_billing_runs_from_ready_until_the_stop() -> None:
    from runcomfy_nb.clients.machines import Machine, MachineInfo, Machines

    api = Machines.__new__(Machines)
    api.prices = {"large": 3.6}
    now = time.time()
    machine = Machine(api, MachineInfo("m1", "starting", server_type="large"))
    assert machine.billed_seconds == 0 and machine.estimated_cost == 0
    machine.info = MachineInfo("m1", "ready", server_type="large", ready_at=now - 100,
                               stopping_at=now + 3500)
    assert 99 < machine.billed_seconds < 102
    assert machine.estimated_cost == pytest.approx(machine.billed_seconds / 1000, rel=0.01)
    machine.info = MachineInfo("m1", "stopping", server_type="large", ready_at=now - 100,
                               stopping_at=now + 3500)
    ended = machine.billed_seconds
    time.sleep(0.05)
    assert machine.billed_seconds == ended  # billing ended at the stop, not at stopping_at
    machine.info = MachineInfo("m1", "stopped")  # gone: a 404 carries nothing else
    assert machine.billed_seconds == ended


def test_duration_parsing() -> None:
    assert parse_duration("90m") == 5400 and parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400 and parse_duration(3600) == 3600
    for bad in (-5, "0", "10y", "forever", 10 * 24 * 3600, True):
        with pytest.raises(rc.ValidationError):
            parse_duration(bad)


async def test_bad_launch_input_fails_before_any_launch(client: rc.AsyncRunComfy,
                                                        machine_emulator: Emulator) -> None:
    before = len(machine_emulator.machines())
    with pytest.raises(rc.ValidationError, match="Did you mean 'large'"):
        await client.machines.launch("v", server_type="lage")
    with pytest.raises(rc.ValidationError, match="between 1 minute and 7 days"):
        await client.machines.launch("v", duration=-5)
    with pytest.raises(rc.ValidationError, match="No workflow version"):
        await client.machines.launch("no-such-version", duration="10m")
    assert len(machine_emulator.machines()) == before


async def test_missing_user_id(machine_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNCOMFY_USER_ID", raising=False)
    with pytest.raises(rc.MissingCredentials, match="RUNCOMFY_USER_ID"):
        rc.AsyncRunComfy(token=TOKEN, base_url=machine_emulator.url).machines  # noqa: B018


async def test_launch_wait_extend_stop(client: rc.AsyncRunComfy, machine_emulator: Emulator) -> None:
    workflows = await client.machines.workflows()
    assert workflows and all(w.version_id for w in workflows)
    machine = await client.machines.launch(workflows[0].version_id, server_type="medium",
                                           duration="10m")
    assert "bills from Ready until stopped" in notes[-1] and machine.id[:8] in notes[-1]
    assert machine.info.state == "starting" and machine.billed_seconds == 0
    info = await machine.wait_ready(timeout=60, poll=0.5)
    assert info.state == "ready" and info.url is not None
    assert machine_emulator.comfy_url(machine.id) == info.url.get()
    assert info.url.get() not in repr(info) and info.url.get() not in repr(machine)
    before = info.estimated_duration
    info = await machine.extend("30m")
    assert info.estimated_duration == before + 1800
    assert machine.estimated_cost >= 0
    listed = [m.server_id for m in await client.machines.list()]
    assert machine.id in listed
    info = await machine.stop()
    assert info.state in ("stopping", "stopped")
    assert (await client.machines.stop(machine.id)).state in ("stopping", "stopped")  # idempotent


async def test_stop_all_and_keep(client: rc.AsyncRunComfy, machine_emulator: Emulator) -> None:
    version = (await client.machines.workflows())[0].version_id
    first = await client.machines.launch(version, duration="5m")
    kept = await client.machines.launch(version, duration="5m")
    kept.keep = True
    stopped = await client.machines.stop_all()
    assert first.id in stopped and kept.id not in stopped
    await kept.stop()
    states = {m["server_id"]: m["status"] for m in machine_emulator.machines()}
    assert states[first.id] != "Ready" and states[kept.id] != "Ready"


async def test_our_pace_never_meets_a_429(client: rc.AsyncRunComfy, machine_emulator: Emulator) -> None:
    for _ in range(8):
        await client.machines.list()
    assert not [r for r in machine_emulator.log if r.status == 429 and "/servers" in r.path]


async def test_never_ready_times_out_clearly(client: rc.AsyncRunComfy, machine_emulator: Emulator) -> None:
    version = (await client.machines.workflows())[0].version_id
    machine_emulator.set_fault("*", "never_ready")
    machine = await client.machines.launch(version, duration="5m")
    try:
        with pytest.raises(rc.JobTimeout, match="not ready after"):
            await machine.wait_ready(timeout=2.5, poll=0.5)
    finally:
        machine_emulator.clear_faults()
        await machine.stop()
