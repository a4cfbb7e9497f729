"""Stopping (and extending, connecting to) a machine by id or prefix: the id resolves against the
account's machine list, and success is reported only once the server confirmed the stop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from IPython.core.interactiveshell import InteractiveShell

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.app import load_config

from ..helpers import TOKEN, emulating_shell, run_cell, wait_for


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    config = load_config(None)
    config["machines"].update(rate_per_second=0, ready_seconds=10, deleting_seconds=60)
    with Emulator(speed=50.0, token=TOKEN, config=config) as emulator:
        yield emulator


@pytest.fixture
async def second(emu: Emulator) -> AsyncIterator[rc.AsyncRunComfy]:
    """A fresh client, as in a second kernel: it launched nothing itself."""
    emu.clear_faults()
    async with rc.AsyncRunComfy(token=TOKEN, base_url=emu.url, user_id=emu.user_id) as client:
        yield client
    emu.clear_faults()


def launch_elsewhere(emu: Emulator, server_type: str = "medium", *, wait: bool = True) -> str:
    """A machine launched by another process (plain HTTP), Ready unless `wait` is False."""
    api, auth = f"{emu.url}/prod/api/users/{emu.user_id}", {"Authorization": f"Bearer {emu.token}"}
    version = httpx.get(f"{api}/workflows", headers=auth).json()[0]["version_id"]
    reply = httpx.post(f"{api}/servers", headers=auth, json={
        "workflow_version_id": version, "server_type": server_type, "estimated_duration": 600})
    server_id = reply.json()["server_id"]
    if wait:
        wait_for(lambda: state(emu, server_id) == "Ready")
    return server_id


def state(emu: Emulator, server_id: str) -> str:
    return next(m["status"] for m in emu.machines() if m["server_id"] == server_id)


def deletes(emu: Emulator) -> int:
    return sum(1 for r in emu.log if r.method == "DELETE" and "/servers/" in r.path)


def typo_of(server_id: str) -> str:
    return ("0" if server_id[0] != "0" else "1") + server_id[1:8]


async def test_a_second_client_stops_a_machine_by_prefix(emu: Emulator, second: rc.AsyncRunComfy) -> None:
    server_id = launch_elsewhere(emu)
    extended = await second.machines.extend(server_id[:8], "30m")
    assert extended.server_id == server_id and extended.estimated_duration == 600 + 1800
    info = await second.machines.stop(server_id[:8])
    assert info.server_id == server_id and info.state == "stopping"
    assert state(emu, server_id) in ("Deleting", "Deleted")


async def test_an_unknown_id_is_an_error_listing_the_running_machines(
        emu: Emulator, second: rc.AsyncRunComfy) -> None:
    server_id = launch_elsewhere(emu, "large")
    before = deletes(emu)
    with pytest.raises((rc.NotFound, rc.ValidationError)) as caught:
        await second.machines.stop(typo_of(server_id))
    message = str(caught.value)
    assert server_id[:8] in message and "large" in message and "ready" in message
    assert "billing" not in message and "stopped" not in message
    with pytest.raises((rc.NotFound, rc.ValidationError)):
        await second.machines.extend(typo_of(server_id), "10m")
    assert deletes(emu) == before and state(emu, server_id) == "Ready"
    await second.machines.stop(server_id)


async def test_a_404_on_delete_is_not_a_stop(emu: Emulator, second: rc.AsyncRunComfy) -> None:
    server_id = launch_elsewhere(emu)
    emu.set_fault(server_id, "http_error", on="cancel", status=404, error_code=404001,
                  message="Server not found")
    with pytest.raises(rc.APIError) as caught:
        await second.machines.stop(server_id)
    assert "billing" not in str(caught.value) and state(emu, server_id) == "Ready"
    assert (await second.machines.stop(server_id)).state == "stopping"


async def test_an_ambiguous_prefix_names_the_candidates(emu: Emulator, second: rc.AsyncRunComfy) -> None:
    with pytest.raises(rc.ValidationError, match="Usage"):
        await second.machines.stop(" ")
    # among 17 ids two share their first hex digit
    seen: dict[str, str] = {}
    while True:
        server_id = launch_elsewhere(emu, wait=False)
        if server_id[0] in seen:
            break
        seen[server_id[0]] = server_id
    before = deletes(emu)
    with pytest.raises(rc.ValidationError) as caught:
        await second.machines.stop(server_id[0])
    assert server_id[:8] in str(caught.value) and seen[server_id[0]][:8] in str(caught.value)
    assert deletes(emu) == before
    for machine in [*seen.values(), server_id]:
        httpx.delete(f"{emu.url}/prod/api/users/{emu.user_id}/servers/{machine}",
                     headers={"Authorization": f"Bearer {emu.token}"})


@pytest.fixture
def ip() -> Iterator[InteractiveShell]:
    with emulating_shell(60.0) as shell:
        yield shell


def test_magic_stop_from_a_second_kernel(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    from runcomfy_nb.magics.session import SESSION

    emu = SESSION.emulator
    server_id = launch_elsewhere(emu)
    before = deletes(emu)
    result, text = run_cell(ip, f"%runcomfy stop {typo_of(server_id)}", capsys, emu.token)
    assert not result.success and "billing" not in text and "stopped" not in text, text
    assert server_id[:8] in text and "medium" in text, text
    assert deletes(emu) == before and state(emu, server_id) == "Ready"
    result, text = run_cell(ip, f"%runcomfy stop {server_id[:8]}", capsys, emu.token)
    assert result.success and "billing has ended" in text, text
    assert state(emu, server_id) in ("Deleting", "Deleted")
