"""The job journal without a server: its file (private, WAL), where it lives, what a row keeps of a
server URL, finding a job by the start of its id, listing, the few writes a job makes, and a
journal that cannot be written, which never breaks a submit or a job."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import platformdirs
import pytest

import runcomfy_nb.journal as journal_module
from runcomfy_nb.errors import ConfigError, JobFailed, SubmitUncertain, ValidationError
from runcomfy_nb.events import JobResult, NodeStarted, Output, Preview, Progress, Queued, Started
from runcomfy_nb.jobs import Job
from runcomfy_nb.journal import Journal, journal, journal_path, server_of, submitting
from runcomfy_nb.media import Media

MACHINE_ID = "0b6d1c2e-8f3a-4d5b-9e7f-1a2b3c4d5e6f"


class Script:
    """A stand-in backend: emits `events`, then succeeds with one image, or raises `fail`; it
    waits for `release` first when one is given."""

    def __init__(self, *events: object, fail: Exception | None = None,
                 release: asyncio.Event | None = None) -> None:
        self.events, self.fail, self.release = events, fail, release

    async def run(self, job: Job) -> JobResult:
        if self.release is not None:
            await self.release.wait()
        for event in self.events:
            job.emit(event)  # type: ignore[arg-type]
            await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        return JobResult(job.id, media=[Media(url="https://storage.example/o/a.png", filename="a.png",
                                              kind="image")])

    async def cancel(self) -> bool:
        return True


@pytest.fixture
def book(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal(tmp_path / "jobs.sqlite3")
    yield opened
    opened.close()


@pytest.fixture
def warned(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The journal's warnings of this test (the module warns once per process: reset here)."""
    monkeypatch.setattr(journal_module, "_warned", [])
    caplog.set_level(logging.WARNING, logger="runcomfy_nb")
    return caplog


def journal_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "job journal could not be written" in r.getMessage()]


def commits(book: Journal) -> list[str]:
    """The COMMIT statements run on the journal's connection from now on (one per write)."""
    seen: list[str] = []
    assert book._db is not None
    book._db.set_trace_callback(lambda sql: seen.append(sql) if sql.strip().upper() == "COMMIT" else None)
    return seen


def add(book: Journal, job_id: str, *, kind: str = "serverless", status: str = "succeeded",
        at: float = 1_000.0) -> int:
    """A finished row with this id, kind, status and submit time."""
    pending = book.begin(kind=kind, target="dep-x")
    book.update(pending.row, job_id=job_id, status=status, submitted_at=at)
    return pending.row


# -- the file --
def test_the_file_and_its_wal_and_shm_are_private_and_in_wal_mode(tmp_path: Path) -> None:
    before = os.umask(0)  # the widest umask: SQLite's own files would be 0666
    try:
        book = Journal(tmp_path / "deep" / "jobs.sqlite3")
        add(book, "req-1")
        names = ["jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm"]
        modes = {n: stat.S_IMODE((tmp_path / "deep" / n).stat().st_mode) for n in names}
        with sqlite3.connect(book.path) as other:
            mode = other.execute("PRAGMA journal_mode").fetchone()[0]
        book.close()
    finally:
        os.umask(before)
    assert modes == dict.fromkeys(names, 0o600)
    assert mode == "wal"


def test_reading_a_journal_that_is_not_there_creates_nothing(tmp_path: Path) -> None:
    book = Journal(tmp_path / "none.sqlite3")
    assert book.entries() == [] and book.count() == 0
    assert not book.path.exists()


def test_the_path_is_runcomfy_journal_else_in_the_user_data_dir(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCOMFY_JOURNAL", str(tmp_path / "moved.sqlite3"))
    assert journal_path() == tmp_path / "moved.sqlite3"
    assert journal().path == tmp_path / "moved.sqlite3"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RUNCOMFY_JOURNAL", "~/j.sqlite3")
    assert journal_path() == tmp_path / "j.sqlite3"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for unset in ("  ", None):
        if unset is None:
            monkeypatch.delenv("RUNCOMFY_JOURNAL")
        else:
            monkeypatch.setenv("RUNCOMFY_JOURNAL", unset)
        assert journal_path() == platformdirs.user_data_path("runcomfy_nb") / "jobs.sqlite3"
        if sys.platform.startswith("linux"):  # platformdirs follows XDG there
            assert journal_path() == tmp_path / "data" / "runcomfy_nb" / "jobs.sqlite3"


# -- what a row keeps of a server --
@pytest.mark.parametrize(("url", "kept"), [
    (f"https://{MACHINE_ID}-comfyui.runcomfy.com", MACHINE_ID),
    (f"https://{MACHINE_ID.upper()}-comfyui.runcomfy.com/prompt?token=s3cret", MACHINE_ID),
    ("http://me:pa55@127.0.0.1:8188/comfy/?token=s3cret#frag", "http://127.0.0.1:8188/comfy"),
    ("https://comfy.example.org/", "https://comfy.example.org"),
    (f"https://{MACHINE_ID}-comfyui.runcomfy.com.evil.example/x?k=s3cret",
     f"https://{MACHINE_ID}-comfyui.runcomfy.com.evil.example/x"),
])
def test_server_of_keeps_a_machine_id_and_strips_secrets_from_other_urls(url: str, kept: str) -> None:
    assert server_of(url) == kept
    assert "s3cret" not in server_of(url) and "pa55" not in server_of(url)


# -- finding and listing --
def test_find_by_a_unique_prefix_and_say_when_several_or_none_match(book: Journal) -> None:
    add(book, "abc-111", at=1.0)
    add(book, "abc-222", at=2.0)
    add(book, "xyz-333", at=3.0)
    assert book.find("xyz").id == "xyz-333"
    assert book.find("  abc-1 ").id == "abc-111"
    with pytest.raises(ValidationError, match=r"2 journaled jobs start with 'abc' \(abc-222, abc-111\)"):
        book.find("abc")
    with pytest.raises(ValidationError, match="No journaled job has an id starting with 'q'"):
        book.find("q")
    with pytest.raises(ValidationError, match="Give a job id"):
        book.find("")
    for n in range(7):
        add(book, f"many-{n}", at=10.0 + n)
    with pytest.raises(ValidationError, match="Several journaled jobs start with 'many'"):
        book.find("many")


def test_find_a_whole_id_that_starts_a_newer_one(book: Journal) -> None:
    add(book, "job-1", at=1.0)
    add(book, "job-10", at=2.0)  # newer, and "job-1" starts it
    assert book.find("job-1").id == "job-1"


def test_entries_are_newest_first_and_filtered(book: Journal) -> None:
    add(book, "s-old", at=100.0)
    add(book, "m-fail", kind="model", status="failed", at=200.0)
    add(book, "s-run", status="running", at=300.0)
    add(book, "c-new", kind="cloud", at=400.0)
    assert [e.id for e in book.entries()] == ["c-new", "s-run", "m-fail", "s-old"]
    assert [e.id for e in book.entries(kind="serverless")] == ["s-run", "s-old"]
    assert [e.id for e in book.entries(status="succeeded")] == ["c-new", "s-old"]
    assert [e.id for e in book.entries(kind="serverless", status="succeeded")] == ["s-old"]
    assert [e.id for e in book.entries(since=200.0)] == ["c-new", "s-run", "m-fail"]
    assert [e.id for e in book.entries(limit=2)] == ["c-new", "s-run"]
    assert [e.id for e in book.entries(since=150.0, kind="model", limit=5)] == ["m-fail"]
    assert [e.active for e in book.entries()] == [False, True, False, False]
    assert book.count() == 4


# -- a job's row --
async def test_a_job_writes_its_status_changes_error_and_outputs_not_its_previews(book: Journal) -> None:
    release = asyncio.Event()
    chatter = [Queued(position=2), Started(), NodeStarted("31")]
    chatter += [Progress(value=i, max=60, node="31") for i in range(60)]
    chatter += [Preview(data=b"\xff\xd8jpeg", node="31") for _ in range(30)]
    job = Job(Script(*chatter, release=release), kind="serverless", id="req-ok", label="seed 1")
    job.provenance = {"target": "dep-x", "overrides": {"31": {"inputs": {"seed": 1}}}}
    pending = book.begin(kind="serverless", target="dep-x", base_url="http://127.0.0.1:9")
    seen = commits(book)
    pending.taken(job, target="dep-x", base_url="http://127.0.0.1:9")
    release.set()
    await job.result(10)
    # the reply (id, params), running, succeeded with its outputs: 3 writes for ~95 events
    assert len(seen) == 3
    [entry] = book.entries()
    assert (entry.id, entry.status, entry.label, entry.error) == ("req-ok", "succeeded", "seed 1", None)
    assert entry.params["overrides"] == {"31": {"inputs": {"seed": 1}}}
    assert entry.outputs == [{"filename": "a.png", "kind": "image", "subfolder": "", "type": "output",
                              "url": "https://storage.example/o/a.png"}]
    assert entry.finished_at is not None and entry.finished_at >= entry.submitted_at
    assert entry.pid == os.getpid()
    raw = book.path.read_bytes() + book.path.with_name(book.path.name + "-wal").read_bytes()
    assert b"jpeg" not in raw  # no preview bytes


async def test_a_failed_job_writes_its_first_error_line_and_a_comfyui_row_no_output_url(
        book: Journal) -> None:
    failed = Job(Script(Started(), fail=JobFailed("out of memory\nTraceback ...")), kind="serverless",
                 id="req-bad")
    book.follow(failed, target="dep-x")
    comfy = Job(Script(Output(Media(url="http://m/view?f=a.png", filename="a.png", kind="image"))),
                kind="comfyui", id="p-1")
    book.follow(comfy, target="comfyui", server=MACHINE_ID)
    await failed.wait(10)
    await comfy.wait(10)
    entries = {e.id: e for e in book.entries()}
    assert (entries["req-bad"].status, entries["req-bad"].error) == ("failed", "out of memory")
    assert entries["p-1"].server == MACHINE_ID and entries["p-1"].status == "succeeded"
    assert entries["p-1"].outputs and all("url" not in o for o in entries["p-1"].outputs)


async def test_following_a_job_again_keeps_one_row(book: Journal) -> None:
    release = asyncio.Event()
    first = Job(Script(release=release), kind="serverless", id="req-again")
    book.follow(first, target="dep-x")
    again = Job(Script(), kind="serverless", id="req-again")
    book.follow(again, target="dep-x")
    await again.wait(10)
    release.set()
    await first.wait(10)
    assert [(e.id, e.status) for e in book.entries()] == [("req-again", "succeeded")]


def test_a_lost_submit_stays_unknown_and_a_refused_one_leaves_no_row(book: Journal,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    lost = book.begin(kind="serverless", target="dep-x")
    lost.lost("reply lost: check the service")
    refused = book.begin(kind="serverless", target="dep-y")
    refused.refused()
    [entry] = book.entries()
    assert (entry.id, entry.status, entry.target, entry.note) == ("", "unknown", "dep-x",
                                                                   "reply lost: check the service")
    monkeypatch.setattr(journal_module, "journal", lambda: book)
    with pytest.raises(SubmitUncertain), submitting("model", "m/x"):
        raise SubmitUncertain("read timed out")
    with pytest.raises(ValueError), submitting("model", "m/y"):
        raise ValueError("refused")
    rows = {e.target: e for e in book.entries()}
    assert set(rows) == {"dep-x", "m/x"}
    assert rows["m/x"].status == "unknown" and "SubmitUncertain" in (rows["m/x"].note or "")


# -- a journal that cannot be written --
def _directory(path: Path) -> None:
    path.mkdir()


def _not_a_database(path: Path) -> None:
    path.write_bytes(b"this is not an SQLite file " * 200)


@pytest.mark.parametrize("spoil", [_directory, _not_a_database])
async def test_an_unwritable_journal_warns_once_and_submits_and_jobs_go_on(
        spoil: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        warned: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "jobs.sqlite3"
    spoil(path)  # type: ignore[operator]
    monkeypatch.setenv("RUNCOMFY_JOURNAL", str(path))
    jobs = []
    for n in range(3):
        with submitting("serverless", "dep-x") as pending:
            job = Job(Script(Started()), kind="serverless", id=f"req-{n}")
        pending.taken(job, target="dep-x")
        jobs.append(job)
    with pytest.raises(KeyError), submitting("serverless", "dep-x"):
        raise KeyError("a refused submit still raises its own error")
    with pytest.raises(SubmitUncertain), submitting("serverless", "dep-x"):
        raise SubmitUncertain("and a lost one its own")
    journal().follow(jobs[0], target="dep-x")
    assert all(isinstance(r, JobResult) for r in [await j.result(10) for j in jobs])
    assert len(journal_warnings(warned)) == 1


async def test_a_journal_that_fails_mid_job_never_breaks_the_job(
        book: Journal, monkeypatch: pytest.MonkeyPatch, warned: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()
    job = Job(Script(Started(), release=release), kind="serverless", id="req-mid")
    book.follow(job, target="dep-x")

    def locked(row: int, **values: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(book, "update", locked)
    release.set()
    assert (await job.result(10)).media
    assert len(journal_warnings(warned)) == 1
    assert book.find("req-mid").status == "queued"  # the last status written before it failed


@pytest.mark.parametrize("spoil", [_directory, _not_a_database])
def test_an_unreadable_journal_is_one_config_error_saying_what_to_do(spoil: object, tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    spoil(path)  # type: ignore[operator]
    for read in (lambda j: j.entries(), lambda j: j.find("req")):
        with pytest.raises(ConfigError, match=r"cannot be read .* RUNCOMFY_JOURNAL"):
            read(Journal(path))
