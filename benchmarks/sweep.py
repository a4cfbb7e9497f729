"""Sweeps against the emulator, which runs in a subprocess (so its memory is not the client's).

1. 100 jobs on a deployment of 10 instances, 1 s (real) each: the makespan of `client.sweep` (its
   default concurrency) ÷ the ideal, and the same for an `asyncio.gather` by hand (a semaphore of
   one job per instance), in the same run. The ideal is what the emulator's own records allow:
   ceil(jobs / instances) rounds of the slowest instance's mean run time (a run includes making its
   images, which shares the two cores with the client, so instances differ by a few per cent).
2. `--jobs` (default 10,000) jobs on 100 instances, 0.5 s each, with a fast emulator: failed
   submits, the client's peak RSS, the event loop's lag p99 (a ticker measuring its own oversleep)
   and status calls per job (the emulator's own log).

Ends with `RESULT makespan_ratio=… gather_ratio=… jobs10k_failed=… rss10k_mb=… lag10k_p99_ms=…
calls10k_per_job=…`. `--serve` is the subprocess: it reads one command a line on stdin
(`add <deployment json>`, `stats <deployment id>`) and answers one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import runcomfy_nb as rc

TOKEN = "bench-token"
SPEED = 20.0  # virtual seconds per real second
SMALL = {"jobs": 100, "instances": 10, "seconds": 1.0}
LARGE = {"instances": 100, "seconds": 0.5}


def serve(speed: float) -> None:
    """The emulator subprocess: prints its URL, then answers commands on stdin."""
    from runcomfy_nb.emulator import Emulator

    with Emulator(speed=speed, token=TOKEN) as emulator:
        print(json.dumps({"url": emulator.url}), flush=True)
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "add":
                emulator.add_deployment(json.loads(argument))
                print(json.dumps({"ok": True}), flush=True)
            elif command == "stats":
                records = emulator.requests_for(argument)
                status_calls = sum(1 for r in emulator.log if "/requests/" in r.path
                                   and r.path.endswith("/status") and f"/{argument}/" in r.path)
                ends = [r.finished_wall for r in records if r.finished_wall] or [0.0]
                span = max(ends) - min((r.created for r in records), default=0.0)
                by_instance: dict[str, list[float]] = {}  # each instance's run times
                for r in records:
                    if r.finished_wall and r.started_wall:
                        by_instance.setdefault(r.instance_id, []).append(r.finished_wall - r.started_wall)
                runs = [r.finished_wall - r.started_wall for r in records
                        if r.finished_wall and r.started_wall] or [0.0]
                print(json.dumps({"requests": len(records), "status_calls": status_calls,
                                  "server_span": span, "service": statistics.fmean(runs),
                                  "slowest": max(map(statistics.fmean, by_instance.values()), default=0.0)}),
                      flush=True)


class Server:
    """The emulator subprocess and its command line."""

    def __init__(self, speed: float) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--serve", "--speed", str(speed)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = self._answer()["url"]

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        return json.loads(self.process.stdout.readline())

    def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._answer()

    def add(self, dep_id: str, instances: int, seconds: float, speed: float) -> str:
        config = {"id": dep_id, "type": "comfyui", "preset": "image", "instances": instances,
                  "queue_size": 1, "run_seconds": seconds * speed, "caption": False}
        self.ask("add " + json.dumps(config))
        return dep_id

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


async def by_sweep(client: rc.AsyncRunComfy, dep: str, jobs: int) -> tuple[float, dict[str, int]]:
    started = time.perf_counter()
    sweep = await client.sweep(dep, None, {"31.seed": list(range(jobs))})
    counts = await sweep.wait()
    return time.perf_counter() - started, counts


async def by_gather(client: rc.AsyncRunComfy, dep: str, jobs: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(seed: int) -> None:
        async with gate:
            job = await client.deployments.submit(dep, {"31": {"inputs": {"seed": seed}}})
            await job.result(timeout=600)

    started = time.perf_counter()
    await asyncio.gather(*(one(seed) for seed in range(jobs)))
    return time.perf_counter() - started


async def ticker(lags: list[float], stop: asyncio.Event, every: float = 0.01) -> None:
    """How late each 10 ms sleep wakes up: the event loop's lag."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(every)
        lags.append(max(0.0, loop.time() - before - every))


def p99(values: list[float]) -> float:
    ordered = sorted(values) or [0.0]
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


async def main(jobs: int, speed: float) -> None:
    server = Server(speed)
    try:
        async with rc.AsyncRunComfy(token=TOKEN, base_url=server.url) as client:
            n, instances, seconds = SMALL["jobs"], int(SMALL["instances"]), SMALL["seconds"]
            small = server.add("bench-sweep", instances, seconds, speed)
            ours, counts = await by_sweep(client, small, int(n))
            baseline = server.add("bench-gather", instances, seconds, speed)
            theirs = await by_gather(client, baseline, int(n), instances)
            stats = [server.ask(f"stats {dep}") for dep in (small, baseline)]
            spans = [s["server_span"] for s in stats]
            # the ideal with the service times the emulator really gave (its own records), so the ratio
            # measures the client's scheduling, not the emulator's timer on a busy machine: rounds of
            # the slowest instance's mean run time (making the images shares two cores with the client;
            # an instance given more jobs than its share is not excused); for each run its own
            service = statistics.fmean(s["service"] for s in stats)
            ideals = [math.ceil(n / instances) * s["slowest"] for s in stats]
            ideal = ideals[0]
            print(f"{n} jobs, {instances} instances, {seconds:g} s each (measured {service:.3f} s): sweep "
                  f"{ours:.2f} s (ideal {ideals[0]:.2f} s: {ours / ideals[0]:.3f}; {counts['succeeded']} "
                  f"succeeded; on the server {spans[0]:.2f} s; ÷ rounds of the mean run time "
                  f"{ours / (math.ceil(n / instances) * stats[0]['service']):.3f}); asyncio.gather by hand "
                  f"{theirs:.2f} s (ideal {ideals[1]:.2f} s: {theirs / ideals[1]:.3f}; on the server "
                  f"{spans[1]:.2f} s)")

            dep = server.add("bench-large", int(LARGE["instances"]), LARGE["seconds"], speed)
            lags: list[float] = []
            stop = asyncio.Event()
            tick = asyncio.create_task(ticker(lags, stop))
            cpu = time.process_time()
            took, large = await by_sweep(client, dep, jobs)
            cpu = time.process_time() - cpu
            stop.set()
            await tick
        stats = server.ask(f"stats {dep}")
    finally:
        server.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    failed = large["failed"] + large["cancelled"]
    per_job = stats["status_calls"] / max(1, stats["requests"])
    ideal_large = math.ceil(jobs / LARGE["instances"]) * LARGE["seconds"]
    print(f"{jobs} jobs, {LARGE['instances']} instances, {LARGE['seconds']:g} s each: {took:.1f} s "
          f"(ideal {ideal_large:.1f} s), {large['succeeded']} succeeded, {failed} failed; client CPU "
          f"{cpu:.1f} s, peak RSS {rss:.0f} MB, loop lag p99 {p99(lags) * 1000:.0f} ms (max "
          f"{max(lags, default=0) * 1000:.0f} ms, mean {statistics.fmean(lags or [0]) * 1000:.1f} ms), "
          f"{per_job:.2f} status calls per job, {stats['requests']} requests on the server")
    print(f"RESULT makespan_ratio={ours / ideal:.3f} gather_ratio={theirs / ideals[1]:.3f} "
          f"jobs10k_failed={failed} rss10k_mb={rss:.0f} lag10k_p99_ms={p99(lags) * 1000:.0f} "
          f"calls10k_per_job={per_job:.2f}")


if __name__ == "__main__":
    # journaled as a user's jobs are, in a file of its own (not the user's journal)
    journal_dir = tempfile.TemporaryDirectory(prefix="bench-journal-")  # removed at exit
    os.environ["RUNCOMFY_JOURNAL"] = os.path.join(journal_dir.name, "jobs.sqlite3")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs of the large sweep")
    parser.add_argument("--speed", type=float, default=SPEED, help="the emulator's virtual s per real s")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        serve(options.speed)
    else:
        asyncio.run(main(options.jobs, options.speed))
