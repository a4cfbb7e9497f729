"""The %runcomfy magics in a real IPython shell, against an emulator the magic starts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

from runcomfy_nb import sync
from runcomfy_nb.config import SETTINGS
from runcomfy_nb.magics.session import SESSION

from ..helpers import emulating_shell, run_cell

EMU_TOKEN = "rc_emulator_SENTINEL_token_77aa"
REAL_TOKEN = "rc_real_SENTINEL_token_88bb"


@pytest.fixture(scope="module")
def ip() -> Iterator[InteractiveShell]:
    with emulating_shell(25, RUNCOMFY_EMULATOR_TOKEN=EMU_TOKEN, RUNCOMFY_TOKEN=REAL_TOKEN) as shell:
        yield shell


def run(ip: InteractiveShell, cell: str, capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    return run_cell(ip, cell, capsys, EMU_TOKEN, REAL_TOKEN)


def test_help_lists_every_subcommand(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    for line in ("%runcomfy", "%runcomfy --help"):
        _, text = run(ip, line, capsys)
        for name in ("emulate", "config", "run"):
            assert f"runcomfy {name}" in text


def test_config_masks_secrets(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    _, text = run(ip, "%runcomfy config", capsys)
    assert "[secure]" in text and "127.0.0.1" in text


def test_run_overrides_stores_and_returns(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.user_ns.update(style="neon", seed=42)
    result, text = run(ip, '%%runcomfy run dep-flux-kontext --out city\n31.seed = {{seed}}\n'
                           '6.text = "a {{style}} city"\n', capsys)
    assert result.success, text
    city = ip.user_ns["city"]
    assert result.result is city and len(city.images) == 2
    assert "JobProgress" in text or "succeeded" in text


def test_no_wait_returns_job(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    result, _ = run(ip, "%%runcomfy run dep-flux-kontext --no-wait --out pending\n31.seed = 3\n", capsys)
    job = ip.user_ns["pending"]
    assert result.result is job
    assert sync.run(sync.unwrap(job).wait(30)).value == "succeeded"


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("%%runcomfy run dep-flux-kontext\n31 seed 42\n", "not an override"),
        ('%%runcomfy run dep-flux-kontext\n6.text = "{{undefined_name}}"\n', "is not defined"),
        ("%%runcomfy run dep-flux-kontext\n31.sede = 1\n", "sede"),
        ("%%runcomfy run dep-missing\n31.seed = 1\n", "not found"),
        ('%%runcomfy run dep-flux-kontext\n{"workflow_api_json": {"nodes": [], "links": []}}\n',
         "API format"),
        ("%%runcomfy run dep-flux-kontext --timeout 0.05\n31.seed = 1\n", "did not finish"),
        ("%%runcomfy run\n31.seed = 1\n", "deployment"),
        ("%runcomfy run dep-flux-kontext", "cell magic"),
        ("%runcomfy bogus", "Unknown subcommand"),
    ],
)
def test_bad_input_is_one_line(ip: InteractiveShell, capsys: pytest.CaptureFixture[str], cell: str,
                               message: str) -> None:
    result, text = run(ip, cell, capsys)
    assert not result.success
    assert message in text
    assert "Traceback" not in text
    assert "UsageError" in text


def test_failed_job_shows_server_text(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    SESSION.emulator.set_fault("dep-flux-kontext", "job_fails", message="CUDA out of memory (test)")
    result, text = run(ip, "%%runcomfy run dep-flux-kontext\n31.seed = 1\n", capsys)
    assert not result.success and "CUDA out of memory (test)" in text and "Traceback" not in text


def test_missing_token_is_one_line(ip: InteractiveShell, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(SETTINGS, "token")  # the emulator's, set by %runcomfy emulate
    monkeypatch.delenv("RUNCOMFY_TOKEN")
    result, text = run(ip, "%%runcomfy run dep-flux-kontext\n31.seed = 1\n", capsys)
    assert not result.success and "RUNCOMFY_TOKEN" in text and "Traceback" not in text


@pytest.mark.parametrize(("auto_cancel", "expected"), [(True, "cancelled"), (False, "runs on")])
def test_ctrl_c_in_a_waiting_cell(ip: InteractiveShell, capsys: pytest.CaptureFixture[str],
                                  auto_cancel: bool, expected: str) -> None:
    import _thread
    import threading

    run(ip, f"%config RunComfyMagics.auto_cancel = {auto_cancel}", capsys)
    SESSION.emulator.set_fault("dep-flux-kontext", "slow_queue", seconds=100)
    threading.Timer(0.5, _thread.interrupt_main).start()
    try:
        _, text = run(ip, "%%runcomfy run dep-flux-kontext --out interrupted\n31.seed = 9\n", capsys)
    finally:
        run(ip, "%config RunComfyMagics.auto_cancel = True", capsys)
    assert "Interrupted: job" in text and expected in text and "Traceback" not in text
    remote = SESSION.emulator.requests_for("dep-flux-kontext")[-1]
    assert (remote.status == "cancelled") is auto_cancel
    if not auto_cancel:
        SESSION.client.deployments.cancel("dep-flux-kontext", remote.id)


def test_sweep_runs_every_combination_as_one_grid(ip: InteractiveShell,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    before = len(SESSION.emulator.requests_for("dep-flux-kontext"))
    result, text = run(ip, '%%runcomfy run dep-flux-kontext --sweep seed=1,2 '
                           '--sweep "CLIP Text Encode (Positive Prompt).text"="a, fox","a city" --out grid\n'
                           "KSampler.steps = 4\n", capsys)
    assert result.success and "Traceback" not in text, text
    grid = ip.user_ns["grid"]
    assert grid.counts["succeeded"] == 4 and grid.done
    sent = SESSION.emulator.requests_for("dep-flux-kontext")[before:]
    assert sorted((r.body["overrides"]["31"]["inputs"]["seed"], r.body["overrides"]["6"]["inputs"]["text"])
                  for r in sent) == [(1, "a city"), (1, "a, fox"), (2, "a city"), (2, "a, fox")]
    assert all(r.body["overrides"]["31"]["inputs"]["steps"] == 4 for r in sent)


def test_a_bad_sweep_value_sends_nothing(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    before = len(SESSION.emulator.requests_for("dep-flux-kontext"))
    result, text = run(ip, "%%runcomfy run dep-flux-kontext --sweep KSampler.sede=1,2\n# the sweep alone\n",
                       capsys)
    assert not result.success and "sede" in text and "Traceback" not in text
    assert len(SESSION.emulator.requests_for("dep-flux-kontext")) == before


def test_help_shows_the_sweep_options(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    from runcomfy_nb.magics import cloud, prompt
    from runcomfy_nb.magics import run as run_magic

    _, text = run(ip, "%runcomfy --help", capsys)
    assert text.count("[--sweep KEY=VALUES]") == 3  # run, prompt and cloud
    for args in (run_magic._run_args, prompt._prompt_args, cloud._cloud_args):
        usage = args.parser.format_help()  # type: ignore[attr-defined]  # what `%%runcomfy run?` shows
        assert "--sweep KEY=VALUES" in usage and "--zip" in usage and "--concurrency N" in usage


def test_an_empty_body_is_explained_and_a_comment_runs_the_saved_workflow(
        ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    """IPython refuses `%%runcomfy run DEP` with nothing below and points at the line magic; the
    line magic's message then says how to run the deployment as it is, and that works."""
    result, text = run(ip, "%%runcomfy run dep-flux-kontext\n", capsys)
    assert not result.success and "single %" in text  # IPython's own message
    result, text = run(ip, "%runcomfy run dep-flux-kontext", capsys)
    assert not result.success and "Traceback" not in text
    assert "(# as saved)" in text and "the deployment's saved workflow" in text
    result, text = run(ip, "%%runcomfy run dep-flux-kontext --out as_saved\n# as saved\n", capsys)
    assert result.success, text
    assert len(ip.user_ns["as_saved"].images) == 2
