"""The job journal against the emulator: every kind of job is recorded with what re-attaches it and
nothing secret, a lost reply is `unknown`, a refused submit leaves no row, and a job is attached
again by the start of its id from a client made after the first one closed."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.journal import journal as the_journal
from runcomfy_nb.status import Status

from ..helpers import TOKEN, image_workflow, posts

FLUX, LORA, MODEL = "dep-flux-kontext", "dep-lora-portrait", "blackforestlabs/flux-1-kontext/pro/edit"
MODEL_INPUTS = {"prompt": "an umbrella", "image_url": "https://example.org/in.webp", "seed": 5}


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(speed=60.0, token=TOKEN) as emulator:
        yield emulator


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[rc.AsyncRunComfy]:
    emu.clear_faults()
    async with rc.AsyncRunComfy(token=TOKEN, base_url=emu.url, model_api_url=emu.url,
                                user_id=emu.user_id) as c:
        yield c


def secrets_absent(path: Path, *secrets: str) -> None:
    data = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    for secret in (TOKEN, *secrets):
        assert secret.encode() not in data


async def test_a_serverless_job_is_journaled_with_its_outputs_and_saved_paths(
        client: rc.AsyncRunComfy, emu: Emulator, journal: Path, tmp_path: Path) -> None:
    job = await client.deployments.submit(FLUX, {"31": {"inputs": {"seed": 42}}}, label="seed 42")
    result = await job.result(30)
    saved = await result.media[0].save(tmp_path)
    entry = the_journal().find(job.id[:8])
    assert (entry.id, entry.kind, entry.target, entry.status) == (job.id, "serverless", FLUX, "succeeded")
    assert entry.base_url == emu.url and entry.label == "seed 42" and entry.finished_at
    assert entry.params["overrides"] == {"31": {"inputs": {"seed": 42}}}
    assert [o["filename"] for o in entry.outputs] == [m.filename for m in result.media]
    assert entry.outputs[0]["url"] == result.media[0].url and entry.outputs[0]["path"] == str(saved.resolve())
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    secrets_absent(journal)


async def test_lora_and_model_jobs_are_journaled(client: rc.AsyncRunComfy, journal: Path) -> None:
    lora = await client.deployments.submit(LORA, inputs={"prompt": "light", "seed": 3})
    model = await client.models.submit(MODEL, MODEL_INPUTS)
    await lora.result(30)
    await model.result(30)
    entries = {e.id: e for e in the_journal().entries()}
    assert entries[lora.id].params["inputs"]["prompt"] == "light" and entries[lora.id].status == "succeeded"
    assert (entries[model.id].kind, entries[model.id].target, entries[model.id].status) == (
        "model", MODEL, "succeeded")
    assert entries[model.id].outputs[0]["url"].startswith("http")


async def test_a_machine_job_keeps_the_machine_id_never_its_url(client: rc.AsyncRunComfy,
                                                                  journal: Path) -> None:
    version = (await client.machines.workflows())[0].version_id
    machine = await client.machines.launch(version, duration="10m")
    try:
        info = await machine.wait_ready(timeout=60, poll=0.2)
        async with machine.comfyui() as comfy:
            job = await comfy.queue(image_workflow())
            await job.result(30)
        entry = the_journal().find(job.id)
        assert (entry.kind, entry.server, entry.status) == ("comfyui", machine.id, "succeeded")
        assert entry.client_id and entry.outputs and "url" not in entry.outputs[0]
        assert info.url is not None
        secrets_absent(journal, info.url.get())
    finally:
        await machine.stop()


async def test_a_cloud_job_is_journaled_without_the_api_key(emu: Emulator, journal: Path) -> None:
    async with rc.AsyncComfyCloud(emu.comfy_api_key, base_url=emu.cloud_url) as cloud:
        job = await cloud.queue(image_workflow())
        await job.result(30)
        again = await cloud.attach(job.id[:10])
        assert (await again.result(30)).media
    entry = the_journal().find(job.id)
    assert (entry.kind, entry.target, entry.status, entry.base_url) == ("cloud", "comfy cloud", "succeeded",
                                                                         emu.cloud_url)
    secrets_absent(journal, emu.comfy_api_key)


async def test_a_lost_reply_is_journaled_unknown_and_never_resent(emu: Emulator) -> None:
    emu.set_fault(FLUX, "delay", on="submit", seconds=1.5)
    before = posts(emu, FLUX)
    async with rc.AsyncRunComfy(token=TOKEN, base_url=emu.url, timeout=0.4) as c:
        with pytest.raises(rc.SubmitUncertain):
            await c.deployments.submit(FLUX, {})
    assert posts(emu, FLUX) == before + 1
    [entry] = the_journal().entries()
    assert entry.status == "unknown" and entry.id == "" and entry.target == FLUX
    assert entry.note and "not resent" in entry.note and "Check" in entry.note


async def test_a_refused_submit_leaves_no_row(client: rc.AsyncRunComfy, emu: Emulator) -> None:
    emu.set_fault(FLUX, "http_error", on="submit", status=402, message="Insufficient balance")
    with pytest.raises(rc.PaymentRequired):
        await client.deployments.submit(FLUX, {})
    assert the_journal().entries() == []


async def test_a_job_is_attached_again_by_a_later_client_from_its_id_prefix(emu: Emulator) -> None:
    emu.set_fault(FLUX, "slow_queue", on="submit", seconds=60)  # 1 s real in the queue
    async with rc.AsyncRunComfy(token=TOKEN, base_url=emu.url) as first:
        job = await first.deployments.submit(FLUX, {"31": {"inputs": {"seed": 7}}})
    assert job.detached and the_journal().find(job.id).active
    async with rc.AsyncRunComfy(token=TOKEN, base_url=emu.url) as later:
        again = await later.attach(job.id[:6])
        assert job.submitted_at - 5 < again.submitted_at <= job.submitted_at  # its time runs from the submit
        result = await again.result(30)
    assert again.id == job.id and again.status is Status.SUCCEEDED and result.media
    assert the_journal().find(job.id).status == "succeeded"
    assert len(the_journal().entries()) == 1  # one row per job, attach or not
    async with rc.AsyncRunComfy(token=TOKEN, base_url="http://127.0.0.1:9") as elsewhere:
        with pytest.raises(rc.ValidationError, match="was submitted to"):
            await elsewhere.attach(job.id[:6])
