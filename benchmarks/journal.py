"""What the job journal costs, in a journal file of its own (never the user's).

1. Per job: `--jobs` serverless jobs (submit and result, `--concurrency` at a time) against the
   emulator, which runs in a subprocess (so the client's CPU time is the client's), with the journal
   on and with it made a no-op (the baseline, its `Journal` methods patched out), in alternating
   rounds of the same run: client CPU time and wall time per job, and the time spent in the journal's
   own calls (begin, follow, update, forget, saved) per job.
2. Reading: a journal filled with 100,000 realistic rows (kinds, statuses, parameters and outputs
   as the clients write them, over 90 days), then `%runcomfy jobs`, `--since 1d` and `--kind
   serverless --status succeeded` in an IPython shell with the extension loaded (the magic's call and
   its HTML table), best of 5, as they are and without the magic's probes of the listed jobs'
   machines and services (the emulator's, its rate limit included); also `journal().entries(...)`
   (the queries under the magic), cold and warm, and all 100,000 entries once; the file's size a row.

Ends with `RESULT journal_ms_per_job=… journal_cpu_ms_per_job=… cpu_overhead_ms_per_job=…
wall_overhead_ms_per_job=… jobs_magic_100k_s=… jobs_since_1d_100k_s=… jobs_kind_status_100k_s=…
jobs_magic_noprobe_100k_s=… entries20_100k_s=… bytes_per_row=… magic_on_journal=yes|no` (were
`%runcomfy jobs` not reading the journal, the `jobs_*` figures would be those of the same queries
through `journal().entries`).
`--serve` is the emulator subprocess: it prints its URL and serves until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import inspect
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TOKEN = "bench-token"
DEP = "bench-journal"
ROWS = 100_000
DAY = 86_400.0
WRAPPED = ("begin", "follow", "update", "forget", "saved")  # the Journal methods clients call


def serve(speed: float) -> None:
    """The emulator subprocess: a deployment fast enough that the client's work dominates."""
    from runcomfy_nb.emulator import Emulator

    with Emulator(speed=speed, token=TOKEN) as emulator:
        emulator.add_deployment({"id": DEP, "type": "comfyui", "preset": "image", "instances": 200,
                                 "queue_size": 1, "run_seconds": 0.02 * speed, "caption": False})
        print(json.dumps({"url": emulator.url, "user_id": emulator.user_id}), flush=True)
        sys.stdin.read()  # until the parent closes it


# -- 1. the cost per job --
class Timing:
    """Time spent inside the journal's methods while `on`."""

    def __init__(self) -> None:
        self.seconds, self.cpu, self.calls = 0.0, 0.0, 0
        self.each: list[float] = []

    def wrap(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.each.append(time.perf_counter() - started)
                self.seconds += self.each[-1]
                self.cpu += time.thread_time() - cpu
                self.calls += 1
        return timed


@contextlib.contextmanager
def journaling(on: bool, timing: Timing) -> Iterator[None]:
    """The journal as it is (its calls timed), or made a no-op: `begin` gives a Pending without a
    journal (so `taken`, `lost`, `refused` do nothing) and the other methods return at once."""
    from runcomfy_nb.journal import Journal, Pending

    saved = {name: getattr(Journal, name) for name in WRAPPED}
    for name, method in saved.items():
        if on:
            setattr(Journal, name, timing.wrap(method))
        elif name == "begin":
            setattr(Journal, name, lambda self, **_: Pending(None, 0))
        else:
            setattr(Journal, name, lambda self, *a, **k: None)
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(Journal, name, method)


async def round_of_jobs(url: str, jobs: int, concurrency: int) -> tuple[float, float]:
    """`jobs` submits and results; the client's CPU seconds and the wall seconds they took."""
    import runcomfy_nb as rc

    gate = asyncio.Semaphore(concurrency)
    cpu, wall = time.process_time(), time.perf_counter()
    async with rc.AsyncRunComfy(token=TOKEN, base_url=url) as client:
        async def one(seed: int) -> None:
            async with gate:
                job = await client.deployments.submit(DEP, {"31": {"inputs": {"seed": seed}}})
                await job.result(timeout=120)

        await asyncio.gather(*(one(seed) for seed in range(jobs)))
    return time.process_time() - cpu, time.perf_counter() - wall


async def per_job(url: str, jobs: int, concurrency: int, rounds: int) -> dict[str, float]:
    """Alternating rounds without and with the journal (after one warm-up round): medians per job."""
    await round_of_jobs(url, concurrency, concurrency)  # imports, connections, the journal file
    figures: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    timing = Timing()
    for _ in range(rounds):
        for on in (False, True):
            with journaling(on, timing):
                figures[on].append(await round_of_jobs(url, jobs, concurrency))
    found = {}
    for on, name in ((False, "off"), (True, "on")):
        found[f"cpu_{name}"] = statistics.median(c for c, _ in figures[on]) / jobs * 1000
        found[f"wall_{name}"] = statistics.median(w for _, w in figures[on]) / jobs * 1000
    found["calls_ms"] = timing.seconds / (jobs * rounds) * 1000
    found["calls_cpu_ms"] = timing.cpu / (jobs * rounds) * 1000
    found["calls_per_job"] = timing.calls / (jobs * rounds)
    each = sorted(timing.each) or [0.0]
    found["call_p50_ms"], found["call_p99_ms"] = (each[int(q * (len(each) - 1))] * 1000 for q in (0.5, 0.99))
    return found


def print_per_job(found: dict[str, float], jobs: int, concurrency: int, rounds: int) -> None:
    print(f"1. {jobs} serverless jobs a round, {concurrency} at a time, {rounds} rounds each way "
          "(medians, per job):")
    print(f"   {'':24}{'client CPU ms':>14}{'wall ms':>10}")
    print(f"   {'journal a no-op':24}{found['cpu_off']:>14.3f}{found['wall_off']:>10.3f}")
    print(f"   {'journal on':24}{found['cpu_on']:>14.3f}{found['wall_on']:>10.3f}")
    print(f"   {'difference':24}{found['cpu_on'] - found['cpu_off']:>14.3f}"
          f"{found['wall_on'] - found['wall_off']:>10.3f}")
    print(f"   the journal's own calls: {found['calls_ms']:.3f} ms per job (target <= 2 ms), "
          f"{found['calls_cpu_ms']:.3f} ms of it CPU; {found['calls_per_job']:.1f} calls a job, each "
          f"{found['call_p50_ms']:.3f} ms (p50), {found['call_p99_ms']:.3f} ms (p99)")


# -- 2. reading 100,000 rows --
def realistic_rows(count: int, now: float, base_url: str) -> Iterator[tuple[Any, ...]]:
    """Rows as the clients write them: mostly serverless jobs (their overrides), ComfyUI and Cloud
    jobs (their whole workflow), model and LoRA jobs (their inputs); over 90 days, most succeeded."""
    kinds = ["serverless"] * 12 + ["comfyui"] * 3 + ["cloud"] * 2 + ["model"] * 2 + ["lora"]
    statuses = ["succeeded"] * 16 + ["failed", "cancelled", "unknown", "running"]
    chance = random.Random(15)
    made = Params()
    for n in range(count):
        kind, status = chance.choice(kinds), chance.choice(statuses)
        job_id, seed = str(uuid.UUID(int=chance.getrandbits(128), version=4)), chance.getrandbits(40)
        at = now - chance.random() * 90 * DAY
        target, params, server = made(kind, job_id, seed)
        outputs = [] if status != "succeeded" else [
            {"filename": f"ComfyUI_{n:05d}_{i}.png", "kind": "image", "subfolder": "", "type": "output",
             **({"url": f"https://storage.example.org/outputs/{job_id}/ComfyUI_{i}.png"}
                if kind in ("serverless", "model") else {})} for i in range(2)]
        yield (job_id, kind, target, server, None if kind == "comfyui" else base_url, status, at, at + 40.0,
               at + 40.0 if status in ("succeeded", "failed", "cancelled") else None, f"seed {seed}",
               None, "studies.ipynb", 4242, json.dumps(params), json.dumps(outputs),
               "out of memory" if status == "failed" else None, None)


class Params:
    """A row's target, params (a job's provenance as the journal keeps it: a serverless, model or
    LoRA job's overrides or inputs, a ComfyUI or Cloud job's whole workflow) and server. The
    provenance of each kind is recorded once, then given each row's id and seed (recording a
    workflow's provenance row by row would make filling 100,000 rows slow)."""

    MACHINE = "0b6d1c2e-8f3a-4d5b-9e7f-1a2b3c4d5e6f"

    def __init__(self) -> None:
        from runcomfy_nb.emulator.app import load_config
        from runcomfy_nb.provenance import record

        workflow = load_config(None)["presets"]["image"]
        inputs = {"prompt": "a lighthouse at dusk, oil painting", "seed": 1,
                  "image_url": "https://example.org/in.webp"}
        overrides = {"31": {"inputs": {"seed": 1, "steps": 20}}, "6": {"inputs": {"text": "a lighthouse"}}}
        self.targets = {"serverless": "dep-flux-kontext", "comfyui": "comfyui", "cloud": "comfy cloud",
                        "model": "blackforestlabs/flux-1-kontext/pro/edit", "lora": "dep-lora-portrait"}
        self.recorded = {
            kind: record(target=target, kind=kind, job_id="", **(
                {"workflow": workflow} if kind in ("comfyui", "cloud") else
                {"inputs": inputs} if kind in ("model", "lora") else {"overrides": overrides}))
            for kind, target in self.targets.items()}

    def __call__(self, kind: str, job_id: str, seed: int) -> tuple[str, dict[str, Any], str | None]:
        kept = self.recorded[kind]
        params = {**kept, "job_id": job_id, "seeds": {"31": {"seed": seed}}}
        if "workflow" in kept:
            sampler = kept["workflow"]["31"]
            params["workflow"] = {**kept["workflow"],
                                  "31": {**sampler, "inputs": {**sampler["inputs"], "seed": seed}}}
        elif "inputs" in kept:
            params.update(inputs={**kept["inputs"], "seed": seed}, seeds={"seed": seed})
        else:
            params["overrides"] = {**kept["overrides"], "31": {"inputs": {"seed": seed, "steps": 20}}}
        return self.targets[kind], params, self.MACHINE if kind == "comfyui" else None


def fill(path: Path, count: int, base_url: str) -> float:
    """A journal file of `count` rows (its schema made by the journal itself); seconds taken."""
    import sqlite3

    from runcomfy_nb.journal import COLUMNS, Journal

    started = time.perf_counter()
    made = Journal(path)
    made.forget(made.begin(kind="serverless", target="schema").row)
    made.close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                       realistic_rows(count, time.time(), base_url))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - started


def best(call: Callable[[], Any], times: int = 5) -> float:
    found = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        found.append(time.perf_counter() - started)
    return min(found)


def magic_reads_journal() -> bool:
    import runcomfy_nb.magics.jobs as jobs_magic

    return "journal" in inspect.getsource(jobs_magic)


def magic_timer(line: str) -> Callable[[], Any]:
    """`%runcomfy jobs LINE` in an IPython shell with the extension loaded, and its HTML table."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    with contextlib.redirect_stdout(io.StringIO()):  # "already loaded" from the second query on
        shell.run_line_magic("load_ext", "runcomfy_nb")

    def run() -> Any:
        with contextlib.redirect_stdout(io.StringIO()):
            found = shell.run_line_magic("runcomfy", f"jobs {line}".strip())
        html = getattr(found, "_repr_html_", None)
        assert found is not None and html is not None, f"%runcomfy jobs {line} listed nothing"
        return html()
    return run


@contextlib.contextmanager
def without_probes() -> Iterator[None]:
    """`%runcomfy jobs` without its look at whether the listed jobs' machines and services still
    answer (a Server API call, rate-limited to 1 a second, and TCP connects): the journal's part."""
    import runcomfy_nb.magics.jobs as jobs_magic

    probes = jobs_magic.gone_places
    jobs_magic.gone_places = lambda entries: set()
    try:
        yield
    finally:
        jobs_magic.gone_places = probes


LINES = {"all20": "", "since": "--since 1d", "kind_status": "--kind serverless --status succeeded"}


def reading(path: Path) -> dict[str, Any]:
    from runcomfy_nb.journal import Journal, journal

    os.environ["RUNCOMFY_JOURNAL"] = str(path)
    since = time.time() - DAY
    queries = {"all20": {"limit": 20}, "since": {"since": since},
               "kind_status": {"kind": "serverless", "status": "succeeded", "limit": 20}}
    found: dict[str, Any] = {"on_journal": magic_reads_journal()}
    found["cold"] = best(lambda: Journal(path).entries(limit=20))
    for name, query in queries.items():
        found[f"entries_{name}"] = best(lambda q=query: journal().entries(**q))  # type: ignore[misc]
    found["since_rows"] = len(journal().entries(since=since))
    started = time.perf_counter()
    found["every_row"] = len(journal().entries())
    found["every_s"] = time.perf_counter() - started
    for name, line in LINES.items():
        found[f"magic_{name}"] = best(magic_timer(line)) if found["on_journal"] else None
    with without_probes():
        for name, line in LINES.items():
            found[f"bare_{name}"] = best(magic_timer(line)) if found["on_journal"] else None
    return found


def print_reading(found: dict[str, Any], rows: int, took: float, size: int) -> None:
    print(f"2. a journal of {rows:,} rows (filled in {took:.1f} s): {size / rows:.0f} bytes a row, "
          f"{size / 1e6:.1f} MB; seconds, best of 5 back to back:")
    print(f"   {'query':40}{'%runcomfy jobs':>15}{'without probes':>15}{'entries()':>11}")
    labels = {"all20": "the newest 20", "since": f"--since 1d ({found['since_rows']} rows)",
              "kind_status": "--kind serverless --status succeeded"}
    for name, label in labels.items():
        magic, bare = found[f"magic_{name}"], found[f"bare_{name}"]
        shown = [f"{v:.4f}" if v is not None else "n/a" for v in (magic, bare)]
        print(f"   {label:40}{shown[0]:>15}{shown[1]:>15}{found[f'entries_{name}']:>11.4f}")
    print(f"   entries(limit=20) on a new connection: {found['cold']:.4f} s; all {found['every_row']:,} "
          f"entries: {found['every_s']:.2f} s")
    print("   (probes: the magic asks the Server API, rate-limited to 1 call a second with bursts of 5, "
          "whether the listed ComfyUI jobs' machines are ready, and connects to active jobs' services)")
    if not found["on_journal"]:
        print("   %runcomfy jobs does not read the journal yet: jobs_* below are entries() figures")


def main(options: argparse.Namespace) -> None:
    scratch = tempfile.TemporaryDirectory(prefix="bench-journal-")  # removed at exit (100k rows: ~110 MB)
    workdir = Path(scratch.name)
    os.environ["RUNCOMFY_JOURNAL"] = str(workdir / "jobs.sqlite3")  # never the user's journal
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--speed", str(options.speed)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        emulator = json.loads(server.stdout.readline())
        cost = asyncio.run(per_job(emulator["url"], options.jobs, options.concurrency, options.rounds))
        print_per_job(cost, options.jobs, options.concurrency, options.rounds)
        # the magic checks whether the machines and services of active jobs still answer: here the
        # emulator's, never the network's (the settings of the shell's session)
        os.environ.update(RUNCOMFY_TOKEN=TOKEN, RUNCOMFY_BASE_URL=emulator["url"],
                          RUNCOMFY_USER_ID=emulator["user_id"])
        big = workdir / "100k.sqlite3"
        took = fill(big, options.rows, emulator["url"])
        size = sum(p.stat().st_size for p in workdir.glob("100k.sqlite3*"))
        read = reading(big)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(30)
    print_reading(read, options.rows, took, size)
    pick = "magic" if read["on_journal"] else "entries"
    print(f"RESULT journal_ms_per_job={cost['calls_ms']:.3f} "
          f"journal_cpu_ms_per_job={cost['calls_cpu_ms']:.3f} "
          f"cpu_overhead_ms_per_job={cost['cpu_on'] - cost['cpu_off']:.3f} "
          f"wall_overhead_ms_per_job={cost['wall_on'] - cost['wall_off']:.3f} "
          f"jobs_magic_100k_s={read[f'{pick}_all20']:.4f} jobs_since_1d_100k_s={read[f'{pick}_since']:.4f} "
          f"jobs_kind_status_100k_s={read[f'{pick}_kind_status']:.4f} "
          f"jobs_magic_noprobe_100k_s={read[f'{pick}_all20' if pick == 'entries' else 'bare_all20']:.4f} "
          f"entries20_100k_s={read['entries_all20']:.4f} bytes_per_row={size / options.rows:.0f} "
          f"magic_on_journal={'yes' if read['on_journal'] else 'no'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100, help="jobs a round")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="rounds with and without the journal")
    parser.add_argument("--rows", type=int, default=ROWS, help="rows of the journal read")
    parser.add_argument("--speed", type=float, default=100.0, help="the emulator's virtual s per real s")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.serve:
        serve(parsed.speed)
    else:
        main(parsed)
