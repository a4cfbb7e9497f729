"""The rest of the Serverless API against the emulator on real sockets: v1/v2 queue prefixes, the
Deployment API reads, the instance proxy, override validation before the paid POST, gating codes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import runcomfy_nb as rc
from runcomfy_nb.clients.deployments import Deployment
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.status import Status
from runcomfy_nb.workflow import Workflow, check_overrides

from ..helpers import TOKEN, posts, until

FLUX, VIDEO, PARTNER, LORA = "dep-flux-kontext", "dep-animate", "dep-partner", "dep-lora-portrait"
# Added once to the session's emulator (ids unique to this file):
LONG = "dep-api-long"  # a run outlasts the test (cancelled at the end); idle instances die at once
COLD = "dep-api-cold"  # short runs, no keep-warm: the instance is gone when the result is there
WARM = "dep-api-warm"  # short runs, kept warm far longer than any test
POST_ONLY = "dep-api-post-only"  # the proxy refuses GET (405), as the real service may
PUBLIC = "dep-api-public-info"  # object_info_url on the storage host (no credentials there)
DISABLED, DELETED = "dep-api-disabled", "dep-api-deleted"
ADDED = {
    LONG: {"run_seconds": 100_000, "keep_warm_duration_in_seconds": 0},
    COLD: {"run_seconds": 1, "keep_warm_duration_in_seconds": 0},
    WARM: {"run_seconds": 1, "keep_warm_duration_in_seconds": 10**7},
    POST_ONLY: {"run_seconds": 1, "keep_warm_duration_in_seconds": 10**7, "proxy_get": False},
    PUBLIC: {"run_seconds": 1, "object_info_public": True},
    DISABLED: {"is_enabled": False},
    DELETED: {"deleted": True},
}
CHECKPOINT = "flux1-dev-fp8.safetensors"  # the image preset's, so installed on its instances


@pytest.fixture
async def api(fresh: Emulator) -> AsyncIterator[rc.AsyncRunComfy]:
    for dep_id, extra in ADDED.items():
        if dep_id not in fresh.deployment_ids():
            fresh.add_deployment({"id": dep_id, "type": "comfyui", "preset": "image", **extra})
    async with rc.AsyncRunComfy(token=TOKEN, base_url=fresh.url) as client:
        yield client


def calls(emulator: Emulator, method: str, fragment: str) -> list[Any]:
    return [r for r in emulator.log if r.method == method and fragment in r.path]


async def running_instance(client: rc.AsyncRunComfy, dep: str, request_id: str) -> str:
    """The request's instance once it is in_progress (polled, bounded)."""
    async def instance() -> str | None:
        status = await client.deployments.status(dep, request_id)
        return status.instance_id if status.status is Status.RUNNING else None

    found: str = await until(instance, what=f"{request_id} to start")
    return found


async def finished_instance(client: rc.AsyncRunComfy, dep: str, overrides: Any = None) -> str:
    job = await client.deployments.submit(dep, overrides or {})
    result = await job.result(timeout=30)
    return str(result.raw["instance_id"])


# --- queue prefixes -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_queue_calls_use_the_configured_prefix(fresh: Emulator, monkeypatch: pytest.MonkeyPatch,
                                                     version: str) -> None:
    monkeypatch.setenv("RUNCOMFY_SERVERLESS_VERSION", version)
    async with rc.AsyncRunComfy(token=TOKEN, base_url=fresh.url) as client:
        assert client.config.serverless_version == version
        job = await client.deployments.submit(FLUX, {"31": {"seed": 11}})
        result = await job.result(timeout=30)
        assert await client.deployments.cancel(FLUX, job.id) is False  # finished: not cancellable
    assert result.images
    mine = [r for r in fresh.log if job.id in r.path]
    assert {r.path.split("/")[-1] for r in mine} >= {"status", "result", "cancel"}
    assert all(r.path.startswith(f"/prod/{version}/deployments/{FLUX}/requests/") for r in mine)
    submits = calls(fresh, "POST", f"/deployments/{FLUX}/inference")
    assert submits[-1].path == f"/prod/{version}/deployments/{FLUX}/inference"


def test_version_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNCOMFY_SERVERLESS_VERSION", raising=False)
    assert rc.Config.from_env(token="x").serverless_version == "v1"
    monkeypatch.setenv("RUNCOMFY_SERVERLESS_VERSION", "v3")
    with pytest.raises(rc.ConfigError, match="RUNCOMFY_SERVERLESS_VERSION"):
        rc.Config.from_env(token="x")


# --- the Deployment API (reads) -------------------------------------------------------------------


async def test_list_is_typed_and_filtered_by_ids(api: rc.AsyncRunComfy, fresh: Emulator) -> None:
    everything = await api.deployments.list()
    ids = [d.id for d in everything]
    assert {FLUX, VIDEO, PARTNER, LORA, DISABLED} <= set(ids) and DELETED not in ids
    two = await api.deployments.list([LORA, FLUX, "dep-nope"])
    assert sorted(d.id for d in two) == [FLUX, LORA]
    assert [r for r in fresh.log if r.path == "/prod/v2/deployments"][-1].query.get("ids")
    flux = next(d for d in two if d.id == FLUX)
    assert flux == Deployment(
        id=FLUX, name="flux-kontext", workflow_id="5b0c6f2e-8d1a-4c3e-9f47-2a6d0e1b7c01",
        workflow_version="v2", hardware=("AMPERE_48",), min_instances=0, max_instances=1, queue_size=1,
        keep_warm=60, status="standby", is_enabled=True, created_at=flux.created_at,
        updated_at=flux.updated_at)
    assert flux.updated_at and flux.created_at and flux.updated_at > flux.created_at
    assert flux.payload is None and flux.readme is None
    assert [d.id for d in await api.deployments.list(FLUX)] == [FLUX]  # one id as a plain string


async def test_includes_payload_and_readme(api: rc.AsyncRunComfy, fresh: Emulator) -> None:
    (flux,) = await api.deployments.list([FLUX], payload=True)
    assert flux.payload is not None and flux.readme is None
    assert isinstance(flux.payload.workflow, Workflow)
    assert flux.payload.workflow.to_api() == fresh.saved_workflow(FLUX)
    assert flux.payload.overrides["31"]["inputs"]["seed"] == 736220757721744
    assert flux.payload.object_info_url == f"{fresh.url}/prod/v2/deployments/{FLUX}/object_info"
    assert "payload" not in repr(flux) and fresh.url not in repr(flux.payload)
    both = await api.deployments.get(FLUX, payload=True, readme=True)
    assert both.payload is not None and both.readme and both.readme.startswith("# flux-kontext")
    lora = await api.deployments.get(LORA, payload=True, readme=True)
    assert lora.payload is None and lora.workflow_id is None and lora.readme
    video = await api.deployments.get(VIDEO, readme=True)
    assert video.payload is None and "ADA_80_PLUS" in (video.readme or "")


async def test_get_unknown_and_deleted_deployments(api: rc.AsyncRunComfy) -> None:
    with pytest.raises(rc.NotFound, match="Deployment not found"):
        await api.deployments.get("dep-nope")
    with pytest.raises(rc.NotFound):
        await api.deployments.get(DELETED)


# --- the instance proxy ---------------------------------------------------------------------------


async def test_proxy_reaches_a_running_instance(api: rc.AsyncRunComfy, fresh: Emulator) -> None:
    deployments = api.deployments
    job = await deployments.submit(LONG, {})
    try:
        instance = await running_instance(api, LONG, job.id)
        assert await deployments.proxy(LONG, instance, "api/free",
                                       {"unload_models": True, "free_memory": True}) is None
        assert await deployments.proxy(LONG, instance, "/free") is None
        info = await deployments.object_info(LONG, instance, refresh=True)
        assert CHECKPOINT in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
        assert info["KSampler"]["input"]["required"]["steps"][1]["min"] == 1
        assert calls(fresh, "GET", f"/{LONG}/instances/{instance}/proxy/object_info")[-1].status == 200
        assert not calls(fresh, "GET", f"/deployments/{LONG}/object_info")  # no fallback needed
        one = await deployments.proxy(LONG, instance, "object_info/KSampler", method="GET")
        assert list(one) == ["KSampler"]
        with pytest.raises(rc.NotFound, match="has no route 'api/nope'"):
            await deployments.proxy(LONG, instance, "api/nope")
        with pytest.raises(rc.BadRequest):  # ComfyUI's /object_info is GET only
            await deployments.proxy(LONG, instance, "object_info")
        with pytest.raises(rc.NotFound, match="not reachable"):  # another deployment's instance
            await deployments.proxy(COLD, instance, "api/free")
    finally:
        assert await job.cancel()
    with pytest.raises(rc.JobCancelled):
        await job.result(timeout=30)
    # keep-warm 0: the instance went down with its request
    with pytest.raises(rc.NotFound, match=r"not reachable.*keep-warm") as caught:
        await deployments.proxy(LONG, instance, "api/free")
    assert caught.value.code == 404001


async def test_instances_live_until_keep_warm_ends(api: rc.AsyncRunComfy) -> None:
    deployments = api.deployments
    cold = await finished_instance(api, COLD)
    with pytest.raises(rc.NotFound, match=f"instance {cold} of deployment {COLD} is not reachable"):
        await deployments.proxy(COLD, cold, "api/free")
    assert await finished_instance(api, COLD) != cold  # a cold start: a new instance
    warm = await finished_instance(api, WARM)
    assert await deployments.proxy(WARM, warm, "api/free") is None  # idle but kept warm
    assert await finished_instance(api, WARM) == warm  # and it takes the next request


async def test_object_info_falls_back_to_the_payload(api: rc.AsyncRunComfy, fresh: Emulator) -> None:
    deployments = api.deployments
    instance = await finished_instance(api, POST_ONLY)
    info = await deployments.object_info(POST_ONLY, instance, refresh=True)
    assert calls(fresh, "GET", f"/{POST_ONLY}/instances/{instance}/proxy/object_info")[-1].status == 405
    fetched = calls(fresh, "GET", f"/prod/v2/deployments/{POST_ONLY}/object_info")
    assert len(fetched) == 1 and fetched[0].has_authorization
    assert await deployments.object_info(POST_ONLY) is info  # cached per deployment
    assert len(calls(fresh, "GET", f"/prod/v2/deployments/{POST_ONLY}/object_info")) == 1
    gone = await finished_instance(api, COLD)  # a gone instance: the payload's URL too
    assert "KSampler" in await deployments.object_info(COLD, gone, refresh=True)
    assert len(calls(fresh, "GET", f"/prod/v2/deployments/{COLD}/object_info")) == 1
    # an object_info_url elsewhere than the API's routes is fetched without our credentials
    public = await deployments.object_info(PUBLIC)
    assert CHECKPOINT in public["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    (read,) = calls(fresh, "GET", f"/storage/object_info/{PUBLIC}.json")
    assert read.status == 200 and not read.has_authorization
    assert not [path for path in fresh.leaks if PUBLIC in path]
    with pytest.raises(rc.APIError, match="no object_info_url"):
        await deployments.object_info(LORA)


# --- validation before the paid POST --------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    ({"99": {"seed": 1}}, r"No node '99' in the workflow\. Did you mean '9'\?"),
    ({"31": {"sede": 1}}, r"Node 31 \(KSampler\) has no input 'sede'\. Did you mean 'seed'\?"),
    ({"31": {"steps": "20"}}, r"input 'steps': it takes an integer, not str '20'"),
    ({"31": {"seed": True}}, r"input 'seed': it takes an integer, not bool True"),
    ({"31": {"cfg": "high"}}, r"input 'cfg': it takes a number"),
    ({"6": {"text": 42}}, r"input 'text': it takes text"),
    ({"31": {"sampler_name": "eulr"}}, r"'eulr' is not one of its values .*Did you mean 'euler'\?"),
    ({"4": {"ckpt_name": "sdxl.safetensors"}}, r"'sdxl\.safetensors' is not one of its values"),
    ({"31": {"steps": 0}}, r"input 'steps': 0 is out of range \(1 to 10000\)"),
    ({"31": {"denoise": 1.5}}, r"input 'denoise': 1\.5 is out of range \(0\.0 to 1\.0\)"),
    ({"6": {"clip": "ViT-L"}}, r"input 'clip': it takes a CLIP connection from another node"),
    ({"Nope Sampler": {"seed": 1}}, r"No node 'Nope Sampler' in the workflow"),
])
async def test_bad_overrides_are_caught_before_any_post(api: rc.AsyncRunComfy, fresh: Emulator,
                                                        overrides: dict[str, Any], message: str) -> None:
    before = posts(fresh, FLUX)
    with pytest.raises(rc.ValidationError, match=message) as caught:
        await api.deployments.submit(FLUX, overrides, validate=True)
    assert str(caught.value).endswith("Nothing was sent.")
    with pytest.raises(rc.ValidationError, match=message):
        await api.deployments.validate(FLUX, overrides)
    assert posts(fresh, FLUX) == before


async def test_every_problem_in_one_message(api: rc.AsyncRunComfy, fresh: Emulator) -> None:
    before = posts(fresh, FLUX)
    with pytest.raises(rc.ValidationError) as caught:
        await api.deployments.submit(FLUX, {"31": {"sede": 1, "steps": -1}, "KSampler": {"cfg": "x"}},
                                     validate=True)
    text = str(caught.value)
    assert text.startswith("3 problems with the overrides for deployment dep-flux-kontext; nothing was sent")
    assert "'sede'" in text and "'steps'" in text and "'cfg'" in text
    assert posts(fresh, FLUX) == before


async def test_valid_overrides_are_resolved_and_sent(api: rc.AsyncRunComfy, fresh: Emulator) -> None:
    mark = len(calls(fresh, "GET", f"/prod/v2/deployments/{FLUX}/object_info"))
    job = await api.deployments.submit(
        FLUX, {"KSampler": {"seed": 5, "cfg": 2, "sampler_name": "dpmpp_2m"},
               "CLIP Text Encode (Positive Prompt)": {"text": "a harbour"},
               "4": {"ckpt_name": CHECKPOINT}}, validate=True)
    sent = next(r for r in fresh.requests_for(FLUX) if r.id == job.id).body["overrides"]
    assert sent == {"31": {"inputs": {"seed": 5, "cfg": 2, "sampler_name": "dpmpp_2m"}},
                    "6": {"inputs": {"text": "a harbour"}}, "4": {"inputs": {"ckpt_name": CHECKPOINT}}}
    assert (await job.result(timeout=30)).text == ["a caption of: a harbour"]
    await api.deployments.submit(FLUX, {"31": {"seed": 6}}, validate=True)
    # each validation reads the deployment; its node schemas only once while it is unchanged
    assert len(calls(fresh, "GET", f"/prod/v2/deployments/{FLUX}/object_info")) == mark + 1


async def test_workflow_and_lora_validation(api: rc.AsyncRunComfy, fresh: Emulator) -> None:
    workflow = fresh.saved_workflow(FLUX)
    workflow["50"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x.pth"}}
    workflow["31"]["inputs"]["scheduler"] = "karas"
    before = posts(fresh, FLUX)
    with pytest.raises(rc.ValidationError) as caught:
        await api.deployments.submit(FLUX, workflow=workflow, validate=True)
    assert "'UpscaleModelLoader' is not installed" in str(caught.value)
    assert "Did you mean 'karras'?" in str(caught.value)
    assert posts(fresh, FLUX) == before
    assert await api.deployments.validate(FLUX, workflow=fresh.saved_workflow(FLUX)) == {}
    await api.deployments.submit(LORA, inputs={"prompt": "x"}, validate=True)  # not checked: sent
    with pytest.raises(rc.ValidationError, match="no saved ComfyUI workflow"):
        await api.deployments.validate(LORA, {"1": {"x": 1}})


def test_check_overrides_accepts_what_the_api_takes() -> None:
    info = {
        "LoadImage": {"input": {"required": {"image": [["example.png"], {"image_upload": True}]}}},
        "KSampler": {"input": {"required": {"seed": ["INT", {"min": 0}], "cfg": ["FLOAT", {}],
                                            "model": ["MODEL", {}], "scheduler": ["COMBO", {
                                                "options": ["simple", "karras"]}]}}},
    }
    workflow = Workflow({
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "KSampler", "inputs": {"seed": 1, "cfg": 1.0, "model": ["3", 0],
                                                   "scheduler": "simple", "extra_widget": {"x": 1}}},
        "3": {"class_type": "CheckpointLoaderSimple", "inputs": {}},
    })
    good = {"1": {"image": "https://example.org/in/cat.jpg"},
            "2": {"seed": 7.0, "cfg": 3, "model": ["3", 0], "scheduler": "karras", "extra_widget": 2}}
    assert check_overrides(workflow, good, info)["2"]["inputs"]["scheduler"] == "karras"
    assert check_overrides(workflow, {"1": {"image": "data:image/png;base64,iVBOR"}}, info)
    with pytest.raises(rc.ValidationError, match=r"'plain\.png' is not one of its values"):
        check_overrides(workflow, {"1": {"image": "plain.png"}}, info)
    with pytest.raises(rc.ValidationError, match=r"it takes an integer, not float 7\.5"):
        check_overrides(workflow, {"2": {"seed": 7.5}}, info)
    with pytest.raises(rc.ValidationError, match="'CheckpointLoaderSimple' is not installed"):
        check_overrides(workflow, {"3": {"ckpt_name": "a"}}, info)


# --- gating codes -------------------------------------------------------------------------------


async def test_disabled_and_deleted_deployments_say_so(api: rc.AsyncRunComfy, fresh: Emulator) -> None:
    before = posts(fresh, DISABLED)
    with pytest.raises(rc.BadRequest, match=f"deployment {DISABLED} is disabled .*10002.*enable it") as off:
        await api.deployments.submit(DISABLED, {})
    assert off.value.code == 10002 and posts(fresh, DISABLED) == before + 1  # refused, not retried
    with pytest.raises(rc.NotFound, match=f"deployment {DELETED} was deleted .*10003.*list\\(\\)") as gone:
        await api.deployments.submit(DELETED, {})
    assert gone.value.code == 10003
    with pytest.raises(rc.NotFound, match="was deleted"):
        await api.deployments.status(DELETED, "5b0c1a8e-2f7d-4c1e-9a55-0d6f3e2b7c11")
    assert await api.deployments.get(DISABLED) == (await api.deployments.list([DISABLED]))[0]
    assert (await api.deployments.get(DISABLED)).is_enabled is False


async def test_gating_codes_under_any_http_status(api: rc.AsyncRunComfy, fresh: Emulator) -> None:
    fresh.set_fault(FLUX, "http_error", status=403, error_code=10002, message="DisabledDeployment")
    with pytest.raises(rc.AuthError, match="is disabled") as caught:
        await api.deployments.submit(FLUX, {})
    assert "RUNCOMFY_TOKEN" not in str(caught.value)  # not mistaken for a credentials problem
    fresh.set_fault(FLUX, "http_error", status=400, error_code=10003, message="DeletedDeployment")
    with pytest.raises(rc.NotFound, match="was deleted"):
        await api.deployments.submit(FLUX, {})
