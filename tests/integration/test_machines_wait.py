"""`machine.wait_ready()` against a server that answers oddly now and then: a transient or malformed
answer is polled again within the timeout; a real refusal still ends the wait."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.app import load_config

from ..helpers import TOKEN


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    config = load_config(None)
    config["machines"].update(rate_per_second=0, ready_seconds=40, deleting_seconds=5)
    with Emulator(speed=20.0, token=TOKEN, config=config) as emulator:
        yield emulator


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[rc.AsyncRunComfy]:
    emu.clear_faults()
    async with rc.AsyncRunComfy(token=TOKEN, base_url=emu.url, user_id=emu.user_id) as c:
        c.machines._notify = lambda _text: None
        yield c
    emu.clear_faults()


async def launch(client: rc.AsyncRunComfy) -> rc.clients.machines.Machine:
    version = (await client.machines.workflows())[0].version_id
    return await client.machines.launch(version, server_type="medium", duration="10m")


def answered(emu: Emulator, server_id: str, status: int) -> int:
    return sum(1 for r in emu.log if r.method == "GET" and r.path.endswith(server_id) and r.status == status)


@pytest.mark.parametrize(("fault", "count", "params"), [
    ("body_error", 1, {"error_code": "internal_error", "message": "Internal error, try again"}),
    ("body_error", 2, {"error_code": 500001, "message": "Internal error"}),
    ("server_error", 4, {}),  # more than the transport's own retries (3 here)
    ("rate_limit", 4, {"retry_after": 0}),
    ("drop", 4, {}),
    ("not_json", 2, {}),
])
async def test_a_transient_answer_does_not_end_the_wait(emu: Emulator, client: rc.AsyncRunComfy, fault: str,
                                                        count: int, params: dict[str, object]) -> None:
    machine = await launch(client)
    try:
        emu.set_fault(machine.id, fault, count, on="status", **params)
        info = await machine.wait_ready(timeout=30, poll=0.2)
        assert info.state == "ready" and info.url is not None
        assert not [f for f in emu.state.faults.armed() if f.deployment == machine.id]  # all were met
    finally:
        await machine.stop()


async def test_a_real_refusal_still_ends_the_wait(emu: Emulator, client: rc.AsyncRunComfy) -> None:
    machine = await launch(client)
    try:
        emu.set_fault(machine.id, "http_error", on="status", status=403, error_code=403001,
                      message="Forbidden")
        with pytest.raises(rc.AuthError):
            await machine.wait_ready(timeout=30, poll=0.2)
    finally:
        await machine.stop()


async def test_transient_answers_until_the_timeout_raise_a_timeout(emu: Emulator,
                                                                   client: rc.AsyncRunComfy) -> None:
    machine = await launch(client)
    try:
        emu.set_fault(machine.id, "body_error", -1, on="status", error_code="internal_error",
                      message="Internal error")
        with pytest.raises(rc.JobTimeout, match="not ready after") as caught:
            await machine.wait_ready(timeout=1.0, poll=0.2)
        assert "Internal error" in str(caught.value)
    finally:
        emu.clear_faults()
        await machine.stop()


async def test_a_fresh_machine_that_answers_404_for_a_while_is_waited_for() -> None:
    config = load_config(None)
    config["machines"].update(rate_per_second=0, ready_seconds=100, launch_404_seconds=60)
    with Emulator(speed=20.0, token=TOKEN, config=config) as emu:
        async with rc.AsyncRunComfy(token=TOKEN, base_url=emu.url, user_id=emu.user_id) as c:
            c.machines._notify = lambda _text: None
            machine = await launch(c)
            try:
                info = await machine.wait_ready(timeout=30, poll=0.05)
                assert info.state == "ready"
                assert answered(emu, machine.id, 404) >= 1  # it was not found at first
            finally:
                await machine.stop()
