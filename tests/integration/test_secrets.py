"""No secret — the RunComfy token, the Comfy API key, a partner-node key, a machine's URL — appears
in any output, repr, exception, log line or the job journal. Each is a sentinel value; the test drives
every kind of run (successes and failures) with every logger at DEBUG, then searches everything it
captured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.app import load_config
from runcomfy_nb.emulator.cloud import PARTNER_NODE
from runcomfy_nb.errors import RunComfyError

TOKEN = "rc_tok_SENTINEL_a1b2c3d4e5"
PARTNER_KEY = "comfyui-partner_SENTINEL_f6a7b8"
CLOUD_KEY = "comfyui-cloud_SENTINEL_9e0d1c"
MODEL = "blackforestlabs/flux-1-kontext/pro/edit"


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    config = load_config(None)
    config["machines"].update(rate_per_second=0, ready_seconds=1, deleting_seconds=1)
    with Emulator(speed=40, token=TOKEN, config=config, comfy_api_key=CLOUD_KEY) as emulator:
        yield emulator


def everything(seen: list[str], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr()
    lines = [r.getMessage() for r in caplog.records]
    lines += [str(r.exc_info[1]) for r in caplog.records if r.exc_info and r.exc_info[1]]
    return "\n".join([*seen, *lines, out.out, out.err])


def shown(value: Any) -> str:
    """What a notebook could show of `value`: its repr, str and rich reprs."""
    parts = [repr(value), str(value)]
    bundle = getattr(value, "_repr_mimebundle_", None)
    if callable(bundle):
        data = bundle()
        data = data[0] if isinstance(data, tuple) else data
        parts += [str(v) for v in data.values()]
    return "\n".join(parts)


def test_no_secret_anywhere(emu: Emulator, debug_logs: pytest.LogCaptureFixture,
                            capsys: pytest.CaptureFixture[str], journal: Path) -> None:
    seen: list[str] = []
    client = rc.RunComfy(token=TOKEN, base_url=emu.url, model_api_url=emu.url, user_id=emu.user_id)
    seen += [shown(client), shown(client.config), str(client.config.masked())]

    # serverless: a partner key in extra_data; a failure; a refused body
    job = client.deployments.submit("dep-partner", overrides={"31": {"inputs": {"seed": 2}}},
                                    extra_data={"api_key_comfy_org": PARTNER_KEY})
    result = job.result(timeout=60)
    seen += [shown(job), shown(result), *(shown(m) for m in result.media)]
    seen += [shown(rc.JobProgress(job)), shown(rc.Gallery(result.media))]
    failing = client.deployments.submit("dep-partner", overrides={"31": {"inputs": {"seed": 3}}})
    with pytest.raises(rc.JobFailed) as failed:
        failing.result(timeout=60)
    seen += [shown(failed.value), shown(rc.JobProgress(failing))]

    # Model API: a run and a refused input
    model_job = client.models.submit(MODEL, {"prompt": "x", "image_url": "https://example.org/a.png"})
    seen += [shown(model_job), shown(model_job.result(timeout=60))]
    with pytest.raises(rc.ValidationError) as refused:
        client.models.submit(MODEL, {"prompt": "x", "image_url": "/home/me/a.png"})
    seen.append(shown(refused.value))

    # a machine and its ComfyUI: the URL is the secret
    version = next(w["version_id"] for w in load_config(None)["workflows"] if w["preset"] == "image")
    machine = client.machines.launch(version, server_type="medium", duration="30m")
    info = machine.wait_ready(timeout=30, poll=0.05)
    url = emu.comfy_url(machine.id)
    assert url and info.url is not None
    seen += [shown(machine), shown(info), shown(client.machines.list())]
    comfy = machine.comfyui()
    prompt = comfy.queue(rc.Workflow(emu.machine_workflow(version)).override({"31": {"seed": 9}}),
                         extra_data={"api_key_comfy_org": PARTNER_KEY})
    comfy_result = prompt.result(timeout=60)
    seen += [shown(comfy), shown(prompt), shown(comfy_result), shown(rc.JobProgress(prompt))]
    seen += [shown(comfy.history(prompt.id)), shown(comfy.queue_status())]
    machine.stop()

    # Comfy Cloud: the key in X-API-Key, in the socket's URL and as a partner key in extra_data
    cloud = rc.ComfyCloud(api_key=CLOUD_KEY, base_url=emu.cloud_url)
    seen += [shown(cloud), shown(cloud.user())]
    partner = {"1": {"class_type": PARTNER_NODE, "inputs": {"prompt": "a fox", "prompt_upsampling": False,
                                                            "seed": 5, "aspect_ratio": "1:1", "raw": False}},
               "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "p"}}}
    cloud_job = cloud.queue(partner)
    cloud_result = cloud_job.result(timeout=60)
    seen += [shown(cloud_job), shown(cloud_result), shown(rc.JobProgress(cloud_job)),
             shown(cloud.job(cloud_job.id)), shown(cloud.history(cloud_job.id)), shown(cloud.queue_status())]
    assert cloud_result.images[0].read()[:4] == b"\x89PNG"  # via the 302, without the key
    partner["1"]["inputs"]["seed"] = 6
    refused = cloud.queue(partner, partner_key=False)
    with pytest.raises(rc.JobFailed) as partner_failed:
        refused.result(timeout=60)
    seen += [shown(partner_failed.value), shown(rc.JobProgress(refused))]
    cloud.aclose()

    # wrong credentials: the error names the variable, never the value
    wrong = rc.RunComfy(token=TOKEN + "x", base_url=emu.url, model_api_url=emu.url)
    for call in (lambda: wrong.deployments.submit("dep-partner", overrides={}),
                 lambda: wrong.models.submit(MODEL, {"prompt": "x"})):
        with pytest.raises(RunComfyError) as denied:
            call()
        seen.append(shown(denied.value))
    wrong_cloud = rc.ComfyCloud(api_key=CLOUD_KEY + "x", base_url=emu.cloud_url)
    with pytest.raises(rc.AuthError) as denied:
        wrong_cloud.jobs()
    seen.append(shown(denied.value))
    wrong_cloud.aclose()
    wrong.aclose()
    client.aclose()
    comfy.aclose()

    kept = b"".join(p.read_bytes() for p in journal.parent.glob(journal.name + "*"))  # with -wal
    assert kept.count(b"dep-partner") >= 2 and MODEL.encode() in kept and machine.id.encode() in kept
    seen.append(kept.decode("utf-8", "replace"))  # the job journal: every job above, nothing secret
    text = everything(seen, debug_logs, capsys)
    assert len(debug_logs.records) > 10, "the loggers should have had something to say"
    for secret in (TOKEN, PARTNER_KEY, CLOUD_KEY, url):
        assert secret not in text, f"a secret leaked: {secret[:12]}…"
    assert "/machines/" not in text.replace("/machines/{", "")  # no machine URL path either
    assert not emu.state.leaks, "credentials were sent to an output URL"
