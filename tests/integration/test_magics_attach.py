"""`%runcomfy jobs` and `%runcomfy attach` in a real IPython shell against the emulator: jobs this
kernel no longer follows are listed with how to attach them, attached by the start of their id to
their result, and a finished job whose outputs the service deleted says so in one line."""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from runcomfy_nb import jobs
from runcomfy_nb.journal import journal as the_journal
from runcomfy_nb.magics.jobs import JobList

from ..helpers import emulating_shell, run_cell

EMU_TOKEN = "rc_emulator_SENTINEL_token_attach_73"
FLUX = "dep-flux-kontext"


@pytest.fixture(scope="module")
def ip() -> Iterator[InteractiveShell]:
    with emulating_shell(40, RUNCOMFY_EMULATOR_TOKEN=EMU_TOKEN) as shell:
        yield shell


def run(ip: InteractiveShell, cell: str, capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    return run_cell(ip, cell, capsys, EMU_TOKEN)


def test_a_job_left_behind_is_listed_then_attached_by_its_id_prefix(
        ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    result, text = run(ip, f"%%runcomfy run {FLUX} --no-wait --out job\n31.seed = 11\n", capsys)
    job = ip.user_ns["job"]
    job.detach()  # what a kernel restart does to the jobs it followed
    listed = ip.run_cell("%runcomfy jobs").result
    assert isinstance(listed, JobList) and listed[0].id == job.id
    assert listed.rows()[0][-1] == f"not followed: %runcomfy attach {job.id[:8]}"
    result, text = run(ip, f"%runcomfy attach {job.id[:8]} --out again", capsys)
    assert result.success, text  # type: ignore[attr-defined]
    again = ip.user_ns["again"]
    assert again.media and again.job_id == job.id
    assert the_journal().find(job.id).status == "succeeded"
    listed = ip.run_cell("%runcomfy jobs --status succeeded").result
    assert [e.id for e in listed] == [job.id] and listed.rows()[0][-1] == ""


def test_attaching_a_finished_job_shows_its_result_again(ip: InteractiveShell,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    run(ip, f"%%runcomfy run {FLUX} --out first\n31.seed = 12\n", capsys)
    first = ip.user_ns["first"]
    result, text = run(ip, f"%runcomfy attach {first.job_id[:8]} --out shown", capsys)
    assert result.success, text  # type: ignore[attr-defined]
    assert [m.filename for m in ip.user_ns["shown"].media] == [m.filename for m in first.media]



def test_an_attached_result_links_the_copies_saved_before(ip: InteractiveShell, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run(ip, f"%%runcomfy run {FLUX} --out kept\n31.seed = 14\n", capsys)
    kept = ip.user_ns["kept"]
    copy = kept.media[0].save(tmp_path)
    monkeypatch.setattr(jobs, "_RECENT", deque())  # as in a new kernel: known from the journal only
    result, text = run(ip, f"%runcomfy attach {kept.job_id[:8]} --out back", capsys)
    assert result.success, text  # type: ignore[attr-defined]
    back = ip.user_ns["back"].media  # new objects, from the service: the journal knows the copy
    assert back[0].saved == copy.resolve() and all(m.saved is None for m in back[1:])


def test_outputs_the_service_deleted_are_said_gone_with_the_saved_copies(
        ip: InteractiveShell, capsys: pytest.CaptureFixture[str], journal: Path, tmp_path: Path) -> None:
    run(ip, f"%%runcomfy run {FLUX} --out old\n31.seed = 13\n", capsys)
    old = ip.user_ns["old"]
    saved = old.media[0].save(tmp_path)
    with sqlite3.connect(journal) as db:  # as if it ended 8 days ago
        db.execute("UPDATE jobs SET finished_at = ? WHERE job_id = ?", (time.time() - 8 * 86400, old.job_id))
    listed, _ = run(ip, "%runcomfy jobs", capsys)
    row = listed.result.rows()[0]  # type: ignore[attr-defined]
    assert row[-1] == "outputs deleted by the service (7 days after the end)"
    assert row[7] == f"{len(old.media)} (1 saved)"
    result, text = run(ip, f"%runcomfy attach {old.job_id[:8]}", capsys)
    said = [line for line in text.splitlines() if line.strip()]
    assert not result.success and len(said) == 1 and "Traceback" not in text  # type: ignore[attr-defined]
    assert "ended 8 days ago" in said[0] and "deletes outputs after 7 days" in said[0]
    assert str(saved.resolve()) in said[0]


def test_unknown_ids_get_one_line(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    result, text = run(ip, "%runcomfy attach zzz-no-such-job", capsys)
    assert not result.success and "No journaled job" in text and "Traceback" not in text  # type: ignore[attr-defined]
    result, text = run(ip, "%runcomfy jobs --since yesterday", capsys)
    assert not result.success and "--since" in text and "Traceback" not in text  # type: ignore[attr-defined]
