"""`%%runcomfy cloud` in a real IPython shell, against the Comfy Cloud of the emulator the magics
start (`%runcomfy emulate` points COMFY_CLOUD_URL and COMFY_CLOUD_API_KEY at it)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from runcomfy_nb.emulator.app import load_config
from runcomfy_nb.emulator.cloud import PARTNER_NODE
from runcomfy_nb.magics.session import SESSION

from ..helpers import emulating_shell, run_cell

USER_KEY = "comfyui-user-key-SENTINEL-magic-77"
WORKFLOW = load_config(None)["presets"]["image"]
BAD_STEPS = copy.deepcopy(WORKFLOW)
BAD_STEPS["31"]["inputs"]["steps"] = -1
PARTNER = {"1": {"class_type": PARTNER_NODE, "inputs": {"prompt": "a fox", "prompt_upsampling": False,
                                                          "seed": 3, "aspect_ratio": "1:1", "raw": False}},
           "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "p"}}}


@pytest.fixture(scope="module")
def ip() -> Iterator[InteractiveShell]:
    with emulating_shell(40, COMFY_CLOUD_API_KEY=USER_KEY) as shell:
        yield shell


def run(ip: InteractiveShell, cell: str, capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    return run_cell(ip, cell, capsys, USER_KEY, SESSION.emulator.comfy_api_key)


def seeded(seed: int) -> dict:
    wf = copy.deepcopy(WORKFLOW)
    wf["31"]["inputs"].update(seed=seed, steps=3)
    return wf


def test_cloud_runs_a_json_workflow(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    result, text = run(ip, f"%%runcomfy cloud --out shot\n{json.dumps(seeded(11))}\n", capsys)
    assert result.success, text
    shot = ip.user_ns["shot"]
    assert result.result is shot and len(shot.images) == 2
    assert SESSION.config.comfy_api_key.get() == SESSION.emulator.comfy_api_key  # not the user's


def test_cloud_override_lines_on_a_workflow_file(ip: InteractiveShell, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(seeded(1)))
    ip.user_ns["seed"] = 4242
    result, text = run(ip, f"%%runcomfy cloud --workflow {path} --no-wait --out pending\n"
                           "KSampler.seed = {{seed}}\n", capsys)
    assert result.success, text
    job = ip.user_ns["pending"]
    assert job.kind == "cloud" and job.wait(30).value == "succeeded"
    entry = SESSION.cloud.history(job.id)
    assert entry.workflow["31"]["inputs"]["seed"] == 4242


def test_partner_node_key_is_sent_by_itself(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    result, text = run(ip, f"%%runcomfy cloud --out partner\n{json.dumps(PARTNER)}\n", capsys)
    assert result.success, text
    assert len(ip.user_ns["partner"].images) == 1
    unkeyed = copy.deepcopy(PARTNER)
    unkeyed["1"]["inputs"]["seed"] = 4  # a new seed: Cloud would reuse the cached output
    result, text = run(ip, f"%%runcomfy cloud --partner-key no\n{json.dumps(unkeyed)}\n", capsys)
    assert not result.success and "Traceback" not in text
    assert "Please login first" in text and "partner_key" in text  # what happened and what to do
    entry = ip.run_cell("%runcomfy jobs --kind cloud").result[0]  # the newest first
    assert entry.status == "failed" and "Please login first" in entry.error


@pytest.mark.parametrize(("cell", "message"), [
    ("%%runcomfy cloud\n\n", "cell is empty"),
    ("%%runcomfy cloud\n31.seed = 1\n", "--workflow FILE"),
    ('%%runcomfy cloud\n{"nodes": [], "links": []}\n', "API format"),
    ('%%runcomfy cloud\n{"prompt": {}, "extra_data": {"api_key_comfy_org": "x"}}\n', "Do not put a key"),
    (f"%%runcomfy cloud\n{json.dumps(BAD_STEPS)}\n", "steps"),
    ("%%runcomfy cloud --timeout 0\n{}\n", "positive"),
    ("%runcomfy cloud", "cell magic"),
])
def test_cloud_errors_are_one_line(ip: InteractiveShell, capsys: pytest.CaptureFixture[str],
                                   cell: str, message: str) -> None:
    result, text = run(ip, cell, capsys)
    assert not result.success
    assert message in text and "Traceback" not in text
