"""The emulator's switches the fault matrix needs, at the HTTP level: `drop` before a submit is taken,
`odd_names` (serverless results and a machine's ComfyUI /history + /view), and `kill()` then
`start()` on the same port with the state and the jobs in flight kept."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.app import load_config
from runcomfy_nb.emulator.faults import ODD_NAMES

from ..helpers import TOKEN, posts, wait_for

DEP = "dep-flux-kontext"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    config = load_config(None)
    config["machines"].update(rate_per_second=0, ready_seconds=1, deleting_seconds=1)
    with Emulator(speed=40, token=TOKEN, config=config) as emulator:
        yield emulator


def _submit(emu: Emulator) -> httpx.Response:
    return httpx.post(f"{emu.url}/prod/v1/deployments/{DEP}/inference", json={"overrides": {}},
                      headers=AUTH, timeout=10)


def _result(emu: Emulator, rid: str) -> dict:
    base = f"{emu.url}/prod/v1/deployments/{DEP}/requests/{rid}"
    wait_for(lambda: httpx.get(f"{base}/status", headers=AUTH).json()["status"] == "completed", 30)
    return httpx.get(f"{base}/result", headers=AUTH).json()


@pytest.mark.parametrize("before", [True, False], ids=["before_taken", "after_taken"])
def test_drop_before_takes_nothing(emu: Emulator, before: bool) -> None:
    jobs, sent = len(emu.requests_for(DEP)), posts(emu, DEP)
    emu.set_fault(DEP, "drop", before=before)
    with pytest.raises(httpx.TransportError):
        _submit(emu)
    assert posts(emu, DEP) == sent + 1
    assert len(emu.requests_for(DEP)) == jobs + (0 if before else 1)


def test_odd_names_on_serverless_results(emu: Emulator) -> None:
    emu.set_fault(DEP, "odd_names")
    rid = _submit(emu).json()["request_id"]
    images = _result(emu, rid)["outputs"]["9"]["images"]
    assert [i["filename"] for i in images] == list(ODD_NAMES)
    bodies = [httpx.get(i["url"]).content for i in images]  # each URL serves its own file
    assert all(b[:4] == b"\x89PNG" for b in bodies) and len(set(bodies)) == len(ODD_NAMES)


def test_odd_names_on_a_machines_comfyui(emu: Emulator) -> None:
    version = next(w["version_id"] for w in load_config(None)["workflows"] if w["preset"] == "image")
    api = f"{emu.url}/prod/api/users/{emu.user_id}/servers"
    server = httpx.post(api, headers=AUTH, json={"workflow_version_id": version, "server_type": "medium",
                                                 "estimated_duration": 1800}).json()
    sid = server.get("server_id") or server["data"]["server_id"]
    url = wait_for(lambda: emu.comfy_url(sid), 30)
    emu.set_fault(sid, "odd_names", on="run")
    queued = httpx.post(f"{url}/prompt", json={"prompt": emu.machine_workflow(version)})
    prompt_id = queued.json()["prompt_id"]
    history = wait_for(lambda: httpx.get(f"{url}/history/{prompt_id}").json().get(prompt_id), 30)
    images = history["outputs"]["9"]["images"]
    assert [i["filename"] for i in images] == [n for n in ODD_NAMES if ".." not in n and "\x00" not in n]
    for image in images:
        assert httpx.get(f"{url}/view", params=image).content[:4] == b"\x89PNG"
    httpx.delete(f"{api}/{sid}", headers=AUTH)
    wait_for(lambda: all(m["status"] == "Deleted" for m in emu.machines()), 30)


def test_kill_then_start_keeps_the_state_and_the_port() -> None:
    with Emulator(speed=40, token=TOKEN) as emu:
        url = emu.url
        emu.set_fault(DEP, "slow_queue", seconds=2)
        rid = _submit(emu).json()["request_id"]
        with httpx.Client(headers=AUTH) as open_connection:  # a kept-alive connection is cut too
            open_connection.get(f"{url}/prod/v1/deployments/{DEP}/requests/{rid}/status")
            emu.kill()
            with pytest.raises(httpx.TransportError):
                open_connection.get(f"{url}/prod/v1/deployments/{DEP}/requests/{rid}/status")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/_emulator/faults")
        wait_for(lambda: emu.requests_for(DEP)[0].done, 30, "the job going on while the port is closed")
        assert emu.start() == url
        assert _result(emu, rid)["outputs"]["9"]["images"]
        assert [r.id for r in emu.requests_for(DEP)] == [rid]
