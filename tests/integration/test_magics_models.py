"""`%runcomfy model`, `%runcomfy models` and `%runcomfy jobs` in a real IPython shell, against the
emulator the magics start."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

import runcomfy_nb as rc
from runcomfy_nb import sync
from runcomfy_nb.errors import ValidationError
from runcomfy_nb.events import JobResult
from runcomfy_nb.jobs import Job
from runcomfy_nb.journal import journal
from runcomfy_nb.magics.jobs import JobList
from runcomfy_nb.magics.models import parse_inputs
from runcomfy_nb.magics.session import SESSION

from ..helpers import emulating_shell, run_cell

EMU_TOKEN = "rc_emulator_SENTINEL_token_models_41"
EDIT = "blackforestlabs/flux-1-kontext/pro/edit"
T2I = "blackforestlabs/flux-1/dev/text-to-image"


@pytest.fixture(scope="module")
def ip() -> Iterator[InteractiveShell]:
    with emulating_shell(40, RUNCOMFY_EMULATOR_TOKEN=EMU_TOKEN) as shell:
        yield shell


def run(ip: InteractiveShell, cell: str, capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    return run_cell(ip, cell, capsys, EMU_TOKEN)


def test_parse_inputs_reads_json_where_it_parses() -> None:
    inputs = parse_inputs(["prompt=a red fox", "seed=7", "strength=0.5", "safe=true",
                           'image_urls=["https://example.org/a.png"]', "note=NaN", "empty="])
    assert inputs == {"prompt": "a red fox", "seed": 7, "strength": 0.5, "safe": True,
                      "image_urls": ["https://example.org/a.png"], "note": "NaN", "empty": ""}


@pytest.mark.parametrize(("pairs", "message"), [
    (["prompt"], "not key=value"),
    (["=x"], "not key=value"),
    (["seed=1", "seed=2"], "twice"),
    (["image_url=@cat.png"], "public https URL"),
    (["image_urls=@frames/"], "public https URL"),
])
def test_parse_inputs_refuses(pairs: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_inputs(pairs)


def test_model_runs_stores_and_returns(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    emu = SESSION.emulator
    before = len(emu.model_requests(EDIT))
    result, text = run(ip, f'%runcomfy model {EDIT} prompt="she holds an orange umbrella" '
                           f'image_url=https://example.org/in.webp seed=81030369 aspect_ratio=16:9 '
                           f'--out edited', capsys)
    assert result.success, text
    edited = ip.user_ns["edited"]
    assert result.result is edited and len(edited.images) == 1
    request = emu.model_requests(EDIT)[before]
    assert request.inputs["prompt"] == "she holds an orange umbrella"
    assert request.inputs["seed"] == 81030369 and request.inputs["aspect_ratio"] == "16:9"


def test_model_list_output_and_no_wait(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    result, text = run(ip, f"%runcomfy model {T2I} prompt=fox num_images=3 --no-wait --out pending",
                       capsys)
    assert result.success, text
    job = ip.user_ns["pending"]
    assert result.result is job
    assert sync.run(sync.unwrap(job).wait(30)).value == "succeeded"
    assert len(sync.run(sync.unwrap(job).result()).images) == 3


@pytest.mark.parametrize(("line", "message"), [
    (f"%runcomfy model {EDIT} prompt=x image_url=@local.png", "public https URL"),
    (f"%runcomfy model {EDIT} prompt=x image_url=/tmp/in.png", "local file path"),
    (f"%runcomfy model {EDIT} prompt=x image_url=data:image/png;base64,iVBOR", "data: URI"),
    ("%runcomfy model not-a-model-id prompt=x", "not a Model API model id"),
    ("%runcomfy model nobody/nothing prompt=x", "nobody/nothing"),
    (f"%runcomfy model {EDIT} prompt=x --timeout 0", "positive"),
    (f"%runcomfy model {EDIT} prompt=x image_url=https://example.org/a.png aspect_ratio=5:1",
     "aspect_ratio"),
])
def test_model_errors_are_one_line_and_nothing_is_sent(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str], line: str, message: str,
) -> None:
    emu = SESSION.emulator
    taken = len(emu.model_requests())
    result, text = run(ip, line, capsys)
    assert not result.success
    assert message in text and "Traceback" not in text
    assert len(emu.model_requests()) == taken  # refused before any request was queued


def test_models_lists_the_catalog(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    result, text = run(ip, "%runcomfy models --out catalog", capsys)
    catalog = ip.user_ns["catalog"]
    assert result.success and result.result is catalog and catalog.total == len(catalog) >= 4
    shown = repr(catalog)
    assert EDIT in shown and T2I in shown and "$0.04 / output" in shown
    assert "<table>" in catalog._repr_html_() and catalog[0].model_id in shown
    result, text = run(ip, "%runcomfy models --category image-to-video", capsys)
    shown = repr(result.result)
    assert "wan-ai/wan-2-2/image-to-video" in shown and EDIT not in shown
    result, text = run(ip, "%runcomfy models --limit 1", capsys)
    assert "1 of" in text and "shown" in text
    result, text = run(ip, "%runcomfy models zebra-unicorn", capsys)
    assert "No model matches" in text


def test_jobs_lists_every_kind(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    run(ip, f"%runcomfy model {EDIT} prompt=x image_url=https://example.org/a.png --out m", capsys)
    run(ip, "%%runcomfy run dep-flux-kontext --out s\n31.seed = 5\n", capsys)
    result, _ = run(ip, "%runcomfy jobs --out listed", capsys)
    listed = ip.user_ns["listed"]
    assert isinstance(listed, JobList) and result.result is listed
    kinds = {job.kind for job in listed}
    assert {"model", "serverless"} <= kinds
    shown = repr(listed)
    assert "succeeded" in shown and "model" in shown and "serverless" in shown
    assert "<table>" in listed._repr_html_()
    only = ip.run_cell("%runcomfy jobs --kind model").result
    assert only and {job.kind for job in only} == {"model"}
    done = ip.run_cell("%runcomfy jobs --status succeeded").result
    assert done and all(entry.status == "succeeded" for entry in done)
    assert ip.run_cell("%runcomfy jobs --status failed --since 1h").result is None


class _Forever:
    async def run(self, job: Job) -> JobResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def cancel(self) -> bool:
        return False


async def test_a_detached_job_is_listed_as_such_with_how_to_attach_it() -> None:
    job = Job(_Forever(), kind="model", id="req-detached-1", label="m · req-deta")
    journal().follow(job, target="o/m")
    await asyncio.sleep(0)
    assert not job.detached
    job.detach()
    await job.wait(1)
    assert job.detached and not job.done and job.status.value == "queued"
    row = JobList(journal().entries(), {job.id: job}, set()).rows()[0]
    assert row[4] == "queued" and row[-1] == "not followed: %runcomfy attach req-deta"


async def test_result_of_a_detached_job_says_so_and_cancels_nothing() -> None:
    backend = _Forever()
    job = Job(backend, kind="cloud", id="p-detached-2")
    job.detach()
    with pytest.raises(rc.JobError, match="detached"):
        await job.result(timeout=1)
    assert job.status.value == "queued" and job.detached
