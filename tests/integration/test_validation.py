"""Checked by default before every paid submit: serverless (the emulator), a stock ComfyUI (the
independent double) and Comfy Cloud (the emulator). Each kind of problem is refused with nothing
sent, asserted on the server's own log; `validate=False` sends."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

import runcomfy_nb as rc
from runcomfy_nb.clients.cloud import AsyncComfyCloud
from runcomfy_nb.clients.comfyui import AsyncComfyUI
from runcomfy_nb.clients.comfyui import client as comfyui_client
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.errors import TransportError, ValidationError
from runcomfy_nb.magics.session import SESSION

from ..doubles import comfyui_double
from ..doubles.comfyui_double import ComfyDouble
from ..helpers import TOKEN, emulating_shell, image_workflow, posts, run_cell

FLUX, LORA = "dep-flux-kontext", "dep-lora-portrait"
CLOUD_KEY = "comfyui-validation-key-SENTINEL-77"
Edit = Callable[[dict[str, Any]], Any]


def _set(node: str, name: str, value: Any) -> Edit:
    return lambda wf: wf[node]["inputs"].__setitem__(name, value)


def _drop(node: str, name: str) -> Edit:
    return lambda wf: wf[node]["inputs"].pop(name)


def _add_node(node: str, cls: str) -> Edit:
    return lambda wf: wf.__setitem__(node, {"class_type": cls, "inputs": {}})


# (edit of a whole workflow whose sampler is node S and saver node V, message) — S/V are filled in
KINDS: list[tuple[str, Callable[[str, str], Edit], str]] = [
    ("float for INT", lambda s, v: _set(s, "seed", 7.5),
     r"input 'seed': it takes an integer, not float 7\.5"),
    ("string for INT", lambda s, v: _set(s, "steps", "20"), r"input 'steps': it takes an integer, not str"),
    ("bool for INT", lambda s, v: _set(s, "steps", True), r"it takes an integer, not bool True"),
    ("misspelt input", lambda s, v: _set(v, "filename_prefx", "x"),
     r"has no input 'filename_prefx'\. Did you mean 'filename_prefix'\?"),
    ("not in list", lambda s, v: _set(s, "sampler_name", "eulr"),
     r"input 'sampler_name': 'eulr' is not one of its values .*Did you mean 'euler'\?"),
    ("out of range", lambda s, v: _set(s, "steps", 100000), r"input 'steps': 100000 is out of range"),
    ("link replaced", lambda s, v: _set(s, "model", "sd15.safetensors"),
     r"input 'model': it takes a MODEL connection from another node"),
    ("required missing", lambda s, v: _drop(s, "steps"), r"input 'steps' is required"),
    ("unknown node", lambda s, v: _add_node("77", "NoSuchNode"), r"'NoSuchNode' is not installed"),
]


def _wrong(base: dict[str, Any], edit: Edit) -> dict[str, Any]:
    wf = copy.deepcopy(base)
    edit(wf)
    return wf


# --- a stock ComfyUI: the independent double --------------------------------------------------

DOUBLE_WORKFLOW: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]},
          "_meta": {"title": "Positive Prompt"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 7, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "nb", "images": ["8", 0]},
          "_meta": {"title": "Save"}},
}


@pytest.fixture
async def double() -> AsyncIterator[ComfyDouble]:
    async with ComfyDouble() as d:
        yield d


@pytest.fixture
async def comfy(double: ComfyDouble) -> AsyncIterator[AsyncComfyUI]:
    async with AsyncComfyUI(double.url) as client:
        await client.object_info(refresh=True)  # a fresh read for this double's address
        yield client


@pytest.mark.parametrize(("edit", "message"), [(k(("3"), "9"), m) for _, k, m in KINDS],
                         ids=[name for name, _, _ in KINDS])
async def test_comfyui_refuses_before_the_post(comfy: AsyncComfyUI, double: ComfyDouble, edit: Edit,
                                               message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        await comfy.queue(_wrong(DOUBLE_WORKFLOW, edit))
    assert str(caught.value).endswith("Nothing was sent.")
    assert double.count("POST", "/prompt") == 0


async def test_comfyui_lists_every_problem_naming_title_id_and_input(comfy: AsyncComfyUI,
                                                                     double: ComfyDouble) -> None:
    wf = _wrong(DOUBLE_WORKFLOW, _set("3", "seed", 7.5))
    wf["9"]["inputs"]["filename_prefx"] = "x"
    wf["6"]["inputs"]["text"] = 3
    with pytest.raises(ValidationError) as caught:
        await comfy.queue(wf)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("3 problems with the workflow") and lines[0].endswith("nothing was sent:")
    assert len(lines) == 4 and all(line.startswith("  - Node ") for line in lines[1:])
    assert any("Node 3 (KSampler), input 'seed'" in line for line in lines)
    assert any("Node 6 (Positive Prompt), input 'text': it takes text" in line for line in lines)
    assert any("Node 9 (Save) has no input 'filename_prefx'" in line for line in lines)
    assert double.count("POST", "/prompt") == 0


async def test_comfyui_sends_valid_and_unchecked_workflows(comfy: AsyncComfyUI, double: ComfyDouble) -> None:
    job = await comfy.queue(DOUBLE_WORKFLOW)
    await job.result(timeout=30)
    assert double.count("POST", "/prompt") == 1
    # hidden inputs and a frontend's control widget are not errors
    wf = _wrong(DOUBLE_WORKFLOW, _set("3", "control_after_generate", "fixed"))
    wf["9"]["inputs"]["prompt"] = {}
    await (await comfy.queue(wf)).result(timeout=30)
    sloppy = _wrong(DOUBLE_WORKFLOW, _set("9", "filename_prefx", "x"))
    await (await comfy.queue(sloppy, validate=False)).result(timeout=30)
    assert double.count("POST", "/prompt") == 3
    assert double.count("GET", "/object_info") == 1  # cached per server


async def test_comfyui_rereads_object_info_once_for_a_class_it_lacks(
        comfy: AsyncComfyUI, double: ComfyDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(comfyui_double.NODES, "ImageInvert", comfyui_double._schema(
        "ImageInvert", {"image": ["IMAGE", {}]}, ["IMAGE"], category="image"))
    wf = copy.deepcopy(DOUBLE_WORKFLOW)
    wf["10"] = {"class_type": "ImageInvert", "inputs": {"image": ["8", 0]}}
    wf["9"]["inputs"]["images"] = ["10", 0]
    await (await comfy.queue(wf)).result(timeout=30)  # installed since the first read
    assert double.count("GET", "/object_info") == 2
    wf["11"] = {"class_type": "NoSuchNode", "inputs": {}}
    with pytest.raises(ValidationError, match="'NoSuchNode' is not installed"):
        await comfy.queue(wf)
    assert double.count("GET", "/object_info") == 3  # once per submit that lacks a class, no more
    assert double.count("POST", "/prompt") == 1


async def test_comfyui_without_object_info_checks_the_workflow_itself(
        comfy: AsyncComfyUI, double: ComfyDouble, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    async def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise TransportError("The ComfyUI server did not answer.")

    monkeypatch.setattr(comfy, "object_info", unreadable)
    wf = _wrong(DOUBLE_WORKFLOW, _set("8", "samples", ["33", 0]))
    with pytest.raises(ValidationError, match=r"Node 8 \(VAEDecode\), input 'samples': it links to node "
                                              r"'33', which is not in the workflow\. Did you mean '3'\?"):
        await comfy.queue(wf)
    assert double.count("POST", "/prompt") == 0
    with caplog.at_level(logging.INFO, logger="runcomfy_nb"):
        job = await comfy.queue(_wrong(DOUBLE_WORKFLOW, _set("3", "sampler_name", "euler_ancestral")))
    assert [r.message for r in caplog.records if "full check was skipped" in r.message]
    await job.result(timeout=30)
    assert double.count("POST", "/prompt") == 1


# --- serverless: the emulator -----------------------------------------------------------------


@pytest.fixture
async def api(fresh: Emulator) -> AsyncIterator[rc.AsyncRunComfy]:
    async with rc.AsyncRunComfy(token=TOKEN, base_url=fresh.url) as client:
        yield client


@pytest.mark.parametrize(("edit", "message"), [(k("31", "9"), m) for _, k, m in KINDS],
                         ids=[name for name, _, _ in KINDS])
async def test_serverless_workflow_refused_by_default(api: rc.AsyncRunComfy, fresh: Emulator, edit: Edit,
                                                      message: str) -> None:
    before = posts(fresh, FLUX)
    with pytest.raises(ValidationError, match=message) as caught:
        await api.deployments.submit(FLUX, workflow=_wrong(fresh.saved_workflow(FLUX), edit))
    assert str(caught.value).endswith("Nothing was sent.")
    assert posts(fresh, FLUX) == before


@pytest.mark.parametrize(("overrides", "message"), [
    ({"KSampler": {"seed": 7.5}}, r"Node 31 \(KSampler\), input 'seed': it takes an integer, not float"),
    ({"9": {"filename_prefx": "x"}}, r"Node 9 \(Save Image\) has no input 'filename_prefx'\. Did you mean"),
    ({"31": {"sampler_name": "eulr"}}, r"'eulr' is not one of its values"),
    ({"31": {"steps": 100000}}, r"100000 is out of range \(1 to 10000\)"),
    ({"31": {"model": "flux.safetensors"}}, r"input 'model': it takes a MODEL connection from another node "
                                            r"\(node 4 in the saved workflow\), not a value"),
    ({"KSamplr": {"seed": 1}}, r"No node 'KSamplr' in the workflow\. Did you mean 'KSampler'\?"),
])
async def test_serverless_overrides_refused_by_default(api: rc.AsyncRunComfy, fresh: Emulator,
                                                       overrides: dict[str, Any], message: str) -> None:
    before = posts(fresh, FLUX)
    with pytest.raises(ValidationError, match=message):
        await api.deployments.submit(FLUX, overrides)
    assert posts(fresh, FLUX) == before


async def test_serverless_opt_out_lora_and_cached_workflow(api: rc.AsyncRunComfy, fresh: Emulator) -> None:
    before = posts(fresh, FLUX)
    reads = sum(1 for r in fresh.log if r.method == "GET" and r.path.endswith(f"/deployments/{FLUX}"))
    job = await api.deployments.submit(FLUX, {"KSampler": {"seed": 7.5}}, validate=False)
    sent = next(r for r in fresh.requests_for(FLUX) if r.id == job.id).body["overrides"]
    assert sent == {"31": {"inputs": {"seed": 7.5}}}  # titles still resolved without the check
    await api.deployments.submit(FLUX, {"CLIP Text Encode (Positive Prompt)": {"text": "a harbour"}})
    assert posts(fresh, FLUX) == before + 2
    saved = await api.deployments.workflow(FLUX)
    assert saved is not None and saved.find("KSampler") == "31"
    after = sum(1 for r in fresh.log if r.method == "GET" and r.path.endswith(f"/deployments/{FLUX}"))
    assert after - reads <= 1  # the saved workflow is read once, not per submit
    await api.deployments.submit(LORA, inputs={"prompt": "a portrait"})  # not checked against nodes
    assert posts(fresh, LORA) >= 1


# --- Comfy Cloud: the emulator --------------------------------------------------------------


@pytest.fixture
async def cloud(fresh: Emulator) -> AsyncIterator[AsyncComfyCloud]:
    fresh.cloud_account(CLOUD_KEY, tier="creator", active=True, credits=1000)
    async with AsyncComfyCloud(CLOUD_KEY, base_url=fresh.cloud_url) as client:
        yield client


def cloud_posts(emulator: Emulator) -> int:
    return sum(1 for r in emulator.log if r.method == "POST" and r.path == "/cloud/api/prompt")


@pytest.mark.parametrize(("edit", "message"), [(k("31", "9"), m) for _, k, m in KINDS],
                         ids=[name for name, _, _ in KINDS])
async def test_cloud_refuses_before_the_post(cloud: AsyncComfyCloud, fresh: Emulator, edit: Edit,
                                             message: str) -> None:
    before = cloud_posts(fresh)
    with pytest.raises(ValidationError, match=message):
        await cloud.queue(_wrong(image_workflow(), edit))
    assert cloud_posts(fresh) == before


# --- the run magics: one UsageError block, nothing sent; --no-validate sends -----------------------

MAGIC_KEY = "comfyui-validation-magic-SENTINEL-31"


@pytest.fixture(scope="module")
def ip() -> Iterator[InteractiveShell]:
    with emulating_shell(40, COMFY_CLOUD_API_KEY=MAGIC_KEY) as shell:
        yield shell


def refused(ip: InteractiveShell, cell: str, capsys: pytest.CaptureFixture[str]) -> str:
    result, text = run_cell(ip, cell, capsys, MAGIC_KEY)
    assert not result.success and "UsageError" in text and "Traceback" not in text
    return text


def test_run_magic_checks_and_resolves_titles(ip: InteractiveShell,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    emu = SESSION.emulator
    before = posts(emu, FLUX)
    text = refused(ip, f"%%runcomfy run {FLUX}\nKSampler.seed = 7.5\n9.filename_prefx = \"x\"\n", capsys)
    assert "2 problems with the overrides" in text and "it takes an integer, not float 7.5" in text
    assert "Node 9 (Save Image) has no input 'filename_prefx'. Did you mean 'filename_prefix'?" in text
    text = refused(ip, f'%%runcomfy run {FLUX}\nCLIPTextEncode.text = "x"\n', capsys)
    assert ("'CLIPTextEncode' names 2 nodes: 6 (CLIP Text Encode (Positive Prompt), CLIPTextEncode), "
            "7 (CLIP Text Encode (Negative Prompt), CLIPTextEncode)") in text
    assert "Did you mean 'KSampler'?" in refused(ip, f"%%runcomfy run {FLUX}\nKSamplr.seed = 1\n", capsys)
    assert posts(emu, FLUX) == before
    result, text = run_cell(ip, f'%%runcomfy run {FLUX} --no-wait --out ok\nKSampler.seed = 7\n'
                                '"CLIP Text Encode (Positive Prompt)".text = "a harbour"\n', capsys)
    assert result.success, text
    sent = next(r for r in emu.requests_for(FLUX) if r.id == ip.user_ns["ok"].id).body["overrides"]
    assert sent == {"31": {"inputs": {"seed": 7}}, "6": {"inputs": {"text": "a harbour"}}}
    result, text = run_cell(ip, f"%%runcomfy run {FLUX} --no-validate --no-wait --out sloppy\n"
                                "KSampler.seed = 7.5\n", capsys)
    assert result.success, text
    assert posts(emu, FLUX) == before + 2


def test_cloud_magic_checks(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    emu = SESSION.emulator
    wf = _wrong(image_workflow(), _set("31", "seed", 7.5))
    before = cloud_posts(emu)
    text = refused(ip, f"%%runcomfy cloud\n{json.dumps(wf)}\n", capsys)
    assert "Node 31 (KSampler), input 'seed': it takes an integer, not float 7.5. Nothing was sent." in text
    assert cloud_posts(emu) == before
    result, text = run_cell(ip, f"%%runcomfy cloud --no-validate --no-wait\n{json.dumps(wf)}\n", capsys,
                            MAGIC_KEY)
    assert result.success, text
    assert cloud_posts(emu) == before + 1


def test_prompt_magic_checks(ip: InteractiveShell, capsys: pytest.CaptureFixture[str],
                             tmp_path: Path) -> None:
    versions = [w.version_id for w in SESSION.client.machines.workflows()]
    result, text = run_cell(ip, f"%runcomfy launch {versions[0]} --type medium --duration 1h --wait "
                                "--out vm", capsys)
    assert result.success, text
    machine = ip.user_ns["vm"]
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(SESSION.emulator.machine_workflow(versions[0])))
    prompts = f"/machines/{machine.id}/prompt"

    def sent() -> int:
        return sum(1 for r in SESSION.emulator.log if r.method == "POST" and r.path == prompts)

    try:
        text = refused(ip, f"%%runcomfy prompt --machine {machine.id} --workflow {path}\n"
                           "KSampler.seed = 7.5\n", capsys)
        assert "input 'seed': it takes an integer, not float 7.5. Nothing was sent." in text
        assert sent() == 0
        result, text = run_cell(ip, f"%%runcomfy prompt --machine {machine.id} --workflow {path} "
                                    "--no-validate\nKSampler.seed = 7.5\nKSampler.steps = 2\n", capsys)
        assert sent() == 1
    finally:
        run_cell(ip, f"%runcomfy stop {machine.id[:8]}", capsys)


async def test_serverless_without_object_info_checks_the_saved_workflow(
        api: rc.AsyncRunComfy, fresh: Emulator, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    async def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise TransportError("The storage host did not answer.")

    monkeypatch.setattr(api.deployments, "_read_object_info", unreadable)
    before = posts(fresh, FLUX)
    with pytest.raises(ValidationError, match=r"(?s)2 problems.*no input .sede.*input .text.: it takes text"):
        await api.deployments.submit(FLUX, {"31": {"sede": 1}, "6": {"text": 5}})
    assert posts(fresh, FLUX) == before
    with caplog.at_level(logging.INFO, logger="runcomfy_nb"):
        await api.deployments.submit(FLUX, {"31": {"seed": 7.5}})  # needs the schemas to be refused
    assert any("the full check was skipped" in r.message for r in caplog.records)
    assert posts(fresh, FLUX) == before + 1


async def test_cloud_object_info_is_cached_per_key(cloud: AsyncComfyCloud, fresh: Emulator) -> None:
    def reads() -> int:
        return sum(1 for r in fresh.log if r.method == "GET" and r.path == "/cloud/api/object_info")

    await cloud.object_info(refresh=True)
    mark = reads()
    await cloud.check(image_workflow())
    assert reads() == mark
    other_key = f"{CLOUD_KEY}-other"
    fresh.cloud_account(other_key, tier="creator", active=True, credits=1000)
    async with AsyncComfyCloud(other_key, base_url=fresh.cloud_url) as other:
        await other.check(image_workflow())
        await other.check(image_workflow())
    assert reads() == mark + 1


async def test_many_submits_at_once_read_the_node_list_once(double: ComfyDouble, api: rc.AsyncRunComfy,
                                                            fresh: Emulator) -> None:
    async with AsyncComfyUI(double.url) as comfy:
        comfyui_client._OBJECT_INFO.pop(comfy._cache_key(), None)
        checks = await asyncio.gather(*(comfy.check(DOUBLE_WORKFLOW) for _ in range(20)))
    assert double.count("GET", "/object_info") == 1 and all(c is checks[0] for c in checks)
    dep = "dep-validation-many"
    if dep not in fresh.deployment_ids():
        fresh.add_deployment({"id": dep, "type": "comfyui", "preset": "image", "run_seconds": 1})
    before, mark = posts(fresh, dep), len(fresh.log)

    def reads(path: str) -> int:
        return sum(1 for r in fresh.log[mark:] if r.method == "GET" and r.path == path)

    jobs = await asyncio.gather(*(api.deployments.submit(dep, {"KSampler": {"seed": i}}) for i in range(20)))
    assert len(jobs) == 20 and posts(fresh, dep) == before + 20
    assert reads(f"/prod/v2/deployments/{dep}") == 1
    assert reads(f"/prod/v2/deployments/{dep}/object_info") == 1
    for job in jobs:
        await job.cancel()


async def test_a_deployment_changed_since_its_cached_read_is_read_again(api: rc.AsyncRunComfy,
                                                                       fresh: Emulator) -> None:
    dep = "dep-validation-changed"
    fresh.add_deployment({"id": dep, "type": "comfyui", "preset": "image", "run_seconds": 1})
    assert (await api.deployments.workflow(dep)) is not None  # cached
    saved = fresh.saved_workflow(dep)
    saved["31"]["_meta"] = {"title": "Main Sampler"}
    fresh.add_deployment({"id": dep, "type": "comfyui", "workflow": saved, "run_seconds": 1,
                          "workflow_version": "v2", "updated_at": "2026-01-01T00:00:00Z"})
    job = await api.deployments.submit(dep, {"Main Sampler": {"seed": 3}})  # unknown to the cached copy
    sent = next(r for r in fresh.requests_for(dep) if r.id == job.id).body["overrides"]
    assert sent == {"31": {"inputs": {"seed": 3}}}
    with pytest.raises(ValidationError, match="No node 'Nope'"):  # unchanged since: refused
        await api.deployments.submit(dep, {"Nope": {"seed": 3}})
    saved["31"]["_meta"] = {"title": "Sampler Three"}
    fresh.add_deployment({"id": dep, "type": "comfyui", "workflow": saved, "run_seconds": 1,
                          "workflow_version": "v3", "updated_at": "2026-02-01T00:00:00Z"})
    unchecked = await api.deployments.submit(dep, {"Sampler Three": {"seed": 4}}, validate=False)
    sent = next(r for r in fresh.requests_for(dep) if r.id == unchecked.id).body["overrides"]
    assert sent == {"31": {"inputs": {"seed": 4}}}
    for running in (job, unchecked):
        await running.cancel()
