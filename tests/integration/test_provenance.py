"""Provenance against the emulator: a job's saved outputs carry what produced it (no secrets), and
what `workflow_from_output` reads back reruns the job with the same inputs."""

from __future__ import annotations

from pathlib import Path

import runcomfy_nb as rc
from runcomfy_nb.clients.cloud import AsyncComfyCloud
from runcomfy_nb.provenance import read_metadata, sidecar, workflow_from_output

from ..helpers import image_workflow
from . import test_local_inputs

cloud = test_local_inputs.cloud  # the Comfy Cloud client fixture
FLUX = "dep-flux-kontext"
COMFY_KEY = "comfyui-partner-key-SENTINEL-93"


def _holder(path: Path) -> bytes:
    """The bytes that carry the provenance: the file itself, or its sidecar."""
    return (sidecar(path) if sidecar(path).exists() else path).read_bytes()


async def test_serverless_outputs_rerun_from_the_workflow_they_ran(client: rc.AsyncRunComfy,
                                                             tmp_path: Path) -> None:
    overrides = {"31": {"inputs": {"seed": 4242, "steps": 3}}}
    extra = {"api_key_comfy_org": COMFY_KEY}
    job = await client.deployments.submit(FLUX, overrides, extra_data=extra)
    paths = await (await job.result(timeout=30)).save(tmp_path)
    assert paths
    for path in paths:
        assert COMFY_KEY.encode() not in _holder(path)
        assert read_metadata(path)["runcomfy"]["job_id"] == job.id
    assert read_metadata(paths[0])["runcomfy"]["overrides"] == overrides
    found, info = workflow_from_output(paths[0], rc.Workflow)
    assert info["target"] == FLUX and info["kind"] == job.kind and info["seeds"] == {"31": {"seed": 4242}}
    # The whole workflow it ran: the deployment's saved one with the overrides applied.
    assert isinstance(found, rc.Workflow) and rc.Workflow.from_output(paths[0]).data == found.data
    assert found.data["31"]["inputs"]["seed"] == 4242 and found.data["31"]["inputs"]["steps"] == 3
    again = await client.deployments.submit(info["target"], workflow=found)
    await again.result(timeout=30)
    assert again.provenance["workflow"] == found.to_api()


async def test_cloud_outputs_rerun_from_their_workflow(cloud: AsyncComfyCloud, tmp_path: Path) -> None:
    wf = image_workflow()
    job = await cloud.queue(wf)
    paths = await (await job.result(timeout=30)).save(tmp_path)
    png = next(p for p in paths if p.suffix == ".png")
    assert read_metadata(png)["prompt"] == wf  # ComfyUI's own chunk: ComfyUI can load it too
    found, info = workflow_from_output(png, rc.Workflow)
    assert isinstance(found, rc.Workflow) and found.to_api() == wf
    assert info["target"] == "comfy cloud" and info["job_id"] == job.id
    again = await cloud.queue(found)
    await again.result(timeout=30)
    assert again.provenance["workflow"] == wf
