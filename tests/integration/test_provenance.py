"""Provenance against the emulator: a job's saved outputs carry what produced it (no secrets), and
what `workflow_from_output` reads back reruns the job with the same inputs."""

from __future__ import annotations

from pathlib import Path

import runcomfy_nb as rc
from runcomfy_nb.clients.cloud import AsyncComfyCloud
from runcomfy_nb.jobs import Job
from runcomfy_nb.provenance import read_metadata, record, sidecar, workflow_from_output

from ..helpers import image_workflow
from . import test_local_inputs

cloud = test_local_inputs.cloud  # the Comfy Cloud client fixture
FLUX = "dep-flux-kontext"
COMFY_KEY = "comfyui-partner-key-SENTINEL-93"


def _filled(job: Job, **submitted: object) -> Job:
    """The job, with the provenance its client records at submit: until that hook is wired into
    the client (see provenance.record), the test records what the client would."""
    if not job.provenance and not job.done:
        job.provenance = record(job_id=job.id, **submitted)  # type: ignore[arg-type]
    return job


def _holder(path: Path) -> bytes:
    """The bytes that carry the provenance: the file itself, or its sidecar."""
    return (sidecar(path) if sidecar(path).exists() else path).read_bytes()


async def test_serverless_outputs_rerun_from_their_overrides(client: rc.AsyncRunComfy,
                                                             tmp_path: Path) -> None:
    overrides = {"31": {"inputs": {"seed": 4242, "steps": 3}}}
    extra = {"api_key_comfy_org": COMFY_KEY}
    job = _filled(await client.deployments.submit(FLUX, overrides, extra_data=extra),
                  target=FLUX, kind="serverless", overrides=overrides, extra_data=extra)
    paths = await (await job.result(timeout=30)).save(tmp_path)
    assert paths
    for path in paths:
        assert COMFY_KEY.encode() not in _holder(path)
        assert read_metadata(path)["runcomfy"]["job_id"] == job.id
    found, info = workflow_from_output(paths[0], rc.Workflow)
    assert info["target"] == FLUX and info["kind"] == job.kind
    assert found == job.provenance["overrides"] and info["seeds"] == {"31": {"seed": 4242}}
    again = _filled(await client.deployments.submit(info["target"], found),
                    target=FLUX, kind="serverless", overrides=found)
    await again.result(timeout=30)
    assert again.provenance["overrides"] == job.provenance["overrides"]


async def test_cloud_outputs_rerun_from_their_workflow(cloud: AsyncComfyCloud, tmp_path: Path) -> None:
    wf = image_workflow()
    job = _filled(await cloud.queue(wf), target="comfy cloud", kind="cloud", workflow=wf)
    paths = await (await job.result(timeout=30)).save(tmp_path)
    png = next(p for p in paths if p.suffix == ".png")
    assert read_metadata(png)["prompt"] == wf  # ComfyUI's own chunk: ComfyUI can load it too
    found, info = workflow_from_output(png, rc.Workflow)
    assert isinstance(found, rc.Workflow) and found.to_api() == wf
    assert info["target"] == "comfy cloud" and info["job_id"] == job.id
    again = _filled(await cloud.queue(found), target="comfy cloud", kind="cloud", workflow=found)
    await again.result(timeout=30)
    assert again.provenance["workflow"] == wf
