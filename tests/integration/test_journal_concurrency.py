"""Two real kernels and a script write one job journal at once: no row is lost and no write meets
"database is locked" (the journal warns and goes on when a write fails, so the warnings are
counted too).

Each process runs two threads (as a kernel with the blocking facade has: its loop thread and the
main thread), one making stand-in jobs through `submitting` + `Pending.taken`, the other real
submits to the emulator; all wait at one barrier file before they start writing, so the first
writes (the file's creation, WAL and schema included) race as well."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from runcomfy_nb.emulator import Emulator
from runcomfy_nb.journal import Journal

from ..helpers import TOKEN, wait_for
from .kernels import cell_text

DEP = "dep-journal-race"
FAKE, REAL = 240, 60  # jobs per process: stand-in, real submits (300 rows)
WRITER = textwrap.dedent('''
    import asyncio, logging, os, threading, time
    from pathlib import Path
    import runcomfy_nb as rc
    from runcomfy_nb.events import JobResult, Started
    from runcomfy_nb.jobs import Job
    from runcomfy_nb.journal import journal, submitting

    class _Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.seen = []
        def emit(self, record):
            self.seen.append(record.getMessage())

    class _Script:
        async def run(self, job):
            job.emit(Started())
            await asyncio.sleep(0)
            return JobResult(job.id)
        async def cancel(self):
            return True

    async def _fake(who, n):
        jobs = []
        for i in range(n):
            with submitting("serverless", "dep-fake-" + who) as pending:
                job = Job(_Script(), kind="serverless", id=f"{who}-fake-{i}")
            pending.taken(job, target="dep-fake-" + who)
            jobs.append(job)
            await asyncio.sleep(0)
        return [await j.wait(60) for j in jobs]

    async def _real(who, n, url, dep):
        gate = asyncio.Semaphore(8)
        async with rc.AsyncRunComfy(token=os.environ["RUNCOMFY_TOKEN"], base_url=url) as client:
            async def one(i):
                async with gate:
                    job = await client.deployments.submit(dep, {"31": {"inputs": {"seed": i}}},
                                                          validate=False)
                    await job.result(60)
                    return job.id
            return await asyncio.gather(*(one(i) for i in range(n)))

    def _race(who, barrier, fake, real, url, dep):
        records = _Records()
        logging.getLogger("runcomfy_nb").addHandler(records)
        Path(barrier + "." + who).touch()  # ready
        while not Path(barrier).exists():  # the barrier: every writer starts at once
            time.sleep(0.002)
        found = {}
        def run(name, coro):
            try:
                found[name] = asyncio.run(coro)
            except BaseException as exc:
                found[name] = exc
        threads = [threading.Thread(target=run, args=("fake", _fake(who, fake))),
                   threading.Thread(target=run, args=("real", _real(who, real, url, dep)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        errors = [repr(v) for v in found.values() if isinstance(v, BaseException)]
        real_ids = found["real"] if not isinstance(found["real"], BaseException) else []
        print("RACE-REAL", who, " ".join(real_ids))
        print("RACE-END", who, len(errors), len(records.seen), repr(errors + records.seen)[:2000], flush=True)
''')


def race_call(who: str, barrier: Path, url: str) -> str:
    return f"_race({who!r}, {str(barrier)!r}, {FAKE}, {REAL}, {url!r}, {DEP!r})"


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(speed=1000.0, token=TOKEN) as emulator:
        emulator.add_deployment({"id": DEP, "type": "comfyui", "preset": "image", "instances": 100,
                                 "queue_size": 1, "run_seconds": 20.0, "caption": False})
        yield emulator


@pytest.fixture
def kernels(emu: Emulator) -> Iterator[list[Any]]:
    env = {**os.environ, "RUNCOMFY_TOKEN": TOKEN, "RUNCOMFY_BASE_URL": emu.url}
    started: list[tuple[KernelManager, Any]] = []
    try:
        for _ in range(2):
            manager = KernelManager(kernel_name="python3")  # ipykernel's own spec: this interpreter
            manager.start_kernel(env=env)
            client = manager.client()
            client.start_channels()
            started.append((manager, client))
        for _, client in started:
            client.wait_for_ready(timeout=60)
        yield [client for _, client in started]
    finally:
        for manager, client in started:
            client.stop_channels()
            manager.shutdown_kernel(now=True)


def ended(output: str, who: str) -> list[str]:
    """The real job ids a writer reported, after checking it met no error and no journal warning."""
    lines = output.splitlines()
    ends = [line for line in lines if line.startswith(f"RACE-END {who} ")]
    assert len(ends) == 1, output[-2000:]
    assert ends[0].split()[2:4] == ["0", "0"], ends[0]  # no error, no journal warning
    [real] = [line for line in lines if line.startswith(f"RACE-REAL {who}")]
    return real.split()[2:]


def test_two_kernels_and_a_script_writing_at_once_lose_no_row(
        kernels: list[Any], emu: Emulator, journal: Path, tmp_path: Path) -> None:
    barrier = tmp_path / "go"
    script = subprocess.Popen(
        [sys.executable, "-c", WRITER + race_call("script", barrier, emu.url)],
        env={**os.environ, "RUNCOMFY_TOKEN": TOKEN}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        cells = {}
        for n, client in enumerate(kernels):
            cells[f"kernel{n}"] = (client, client.execute(WRITER + race_call(f"kernel{n}", barrier, emu.url)))
        writers = [*cells, "script"]
        wait_for(lambda: all(Path(f"{barrier}.{who}").exists() for who in writers), 60, "every writer ready")
        assert not journal.exists()  # nobody wrote before the barrier: the file's creation races too
        barrier.touch()
        outputs = {who: cell_text(client, msg_id, timeout=60) for who, (client, msg_id) in cells.items()}
        outputs["script"] = script.communicate(timeout=60)[0]
    finally:
        if script.poll() is None:
            script.kill()
    assert script.returncode == 0, outputs["script"][-2000:]
    real_ids = {who: ended(text, who) for who, text in outputs.items()}
    book = Journal(journal)
    try:
        entries = book.entries()
    finally:
        book.close()
    assert len(entries) == 3 * (FAKE + REAL)
    expected = {f"{who}-fake-{i}" for who in writers for i in range(FAKE)}
    for ids in real_ids.values():
        assert len(ids) == REAL
        expected |= set(ids)
    assert {e.id for e in entries} == expected
    assert {e.status for e in entries} == {"succeeded"}
    spans = [(min(e.submitted_at for e in entries if e.pid == pid), max(e.updated_at for e in entries
              if e.pid == pid)) for pid in {e.pid for e in entries}]
    assert len(spans) == 3
    assert max(start for start, _ in spans) < min(end for _, end in spans)  # they wrote at once
