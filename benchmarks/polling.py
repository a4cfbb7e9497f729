"""Adaptive polling vs fixed 0.5 s polling, against the emulator on 127.0.0.1.

Two cases in the same run, run time ±20% around 2.5 s (real time): "never queued", 50 jobs of a
deployment with 8 instances, two at a time (both strategies side by side); "queued", 100 jobs
submitted at once to a deployment with 10 instances, most of them waiting in its queue (one
strategy after the other). Prints status calls per job and the completion→result latency
(p50/p95), measured from the server's own `finished_at` to the moment the client holds the
result, and the queued case's makespan against the ideal. Ends with `RESULT calls_ratio=<ours/fixed,
never queued> p95_latency_s=<ours> queued_calls_ratio=… queued_p95_latency_s=…
queued_makespan_ratio=…`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable

import httpx

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.timefmt import parse_timestamp

RUN_SECONDS, JITTER = 2.5, 0.2
Runs = list[tuple[str, float]]


def deployment(dep_id: str, instances: int) -> dict:
    return {"id": dep_id, "type": "comfyui", "preset": "image", "run_seconds": RUN_SECONDS,
            "jitter": JITTER, "instances": instances}


async def ours(url: str, token: str, dep: str, jobs: int, concurrency: int) -> Runs:
    gate = asyncio.Semaphore(concurrency)
    async with rc.AsyncRunComfy(token=token, base_url=url) as client:
        async def one() -> tuple[str, float]:
            async with gate:
                job = await client.deployments.submit(dep, {"31": {"inputs": {"steps": 4}}})
                result = await job.result(timeout=600)
                held = time.time()
                return job.id, held - parse_timestamp(result.raw["finished_at"])
        return await asyncio.gather(*(one() for _ in range(jobs)))


async def fixed(url: str, token: str, dep: str, jobs: int, concurrency: int) -> Runs:
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=f"{url}/prod/v1/deployments/{dep}", headers=headers,
                                 limits=limits, timeout=60) as http:
        async def one() -> tuple[str, float]:
            async with gate:
                rid = (await http.post("/inference", json={"overrides": {}})).json()["request_id"]
                while (await http.get(f"/requests/{rid}/status")).json()["status"] not in (
                        "completed", "cancelled", "succeeded", "failed", "canceled"):
                    await asyncio.sleep(0.5)
                reply = (await http.get(f"/requests/{rid}/result")).json()
                return rid, time.time() - parse_timestamp(reply["finished_at"])
        return await asyncio.gather(*(one() for _ in range(jobs)))


def figures(emulator: Emulator, runs: Runs) -> dict[str, float]:
    ids = {rid for rid, _ in runs}
    calls = sum(1 for r in emulator.log if r.path.endswith("/status") and r.path.split("/")[-2] in ids)
    latencies = sorted(lat for _, lat in runs)
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    return {"calls": calls / len(runs), "p50": statistics.median(latencies), "p95": p95,
            "max": latencies[-1]}


async def timed(run: Awaitable[Runs]) -> tuple[Runs, float]:
    started = time.monotonic()
    runs = await run
    return runs, time.monotonic() - started


async def main(jobs: int, concurrency: int, queued_jobs: int, instances: int) -> None:
    with Emulator(speed=1.0) as emulator:
        for dep in ("adaptive", "fixed"):
            emulator.add_deployment(deployment(f"bench-{dep}", 8))
            emulator.add_deployment(deployment(f"bench-queued-{dep}", instances))
        url, token = emulator.url, emulator.token
        started = time.time()
        a, b = await asyncio.gather(ours(url, token, "bench-adaptive", jobs, concurrency),
                                    fixed(url, token, "bench-fixed", jobs, concurrency))
        # one strategy at a time: 200 jobs at once on one machine would load it more than the polling
        qa, span_a = await timed(ours(url, token, "bench-queued-adaptive", queued_jobs, queued_jobs))
        qb, span_b = await timed(fixed(url, token, "bench-queued-fixed", queued_jobs, queued_jobs))
        rows = {"never queued": (figures(emulator, a), figures(emulator, b)),
                "queued": (figures(emulator, qa), figures(emulator, qb))}
    ideal = math.ceil(queued_jobs / instances) * RUN_SECONDS
    print(f"never queued: {jobs} jobs, {concurrency} at a time; queued: {queued_jobs} jobs at once on "
          f"{instances} instances; run time {RUN_SECONDS} s ±{JITTER:.0%}; "
          f"{time.time() - started:.0f} s wall")
    print(f"{'case':<14}{'strategy':<17}{'status calls/job':>17}{'p50 latency s':>15}{'p95 latency s':>15}"
          f"{'max s':>8}")
    for case, pair in rows.items():
        for name, f in zip(("adaptive (ours)", "fixed 0.5 s"), pair, strict=True):
            print(f"{case:<14}{name:<17}{f['calls']:>17.2f}{f['p50']:>15.3f}{f['p95']:>15.3f}{f['max']:>8.3f}")
    print(f"queued makespan ÷ ideal ({ideal:.1f} s): ours {span_a / ideal:.3f}, fixed {span_b / ideal:.3f}")
    (mine, base), (qmine, qbase) = rows["never queued"], rows["queued"]
    print(f"RESULT calls_ratio={mine['calls'] / base['calls']:.3f} p95_latency_s={mine['p95']:.3f} "
          f"queued_calls_ratio={qmine['calls'] / qbase['calls']:.3f} queued_p95_latency_s={qmine['p95']:.3f} "
          f"queued_makespan_ratio={span_a / ideal:.3f}")


if __name__ == "__main__":
    # journaled as a user's jobs are, in a file of its own (not the user's journal)
    journal_dir = tempfile.TemporaryDirectory(prefix="bench-journal-")  # removed at exit
    os.environ["RUNCOMFY_JOURNAL"] = os.path.join(journal_dir.name, "jobs.sqlite3")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50, help="never-queued jobs per strategy")
    parser.add_argument("--concurrency", type=int, default=2, help="never-queued jobs at a time")
    parser.add_argument("--queued-jobs", type=int, default=100, help="queued-case jobs per strategy")
    parser.add_argument("--instances", type=int, default=10, help="the queued case's instances")
    options = parser.parse_args()
    asyncio.run(main(options.jobs, options.concurrency, options.queued_jobs, options.instances))
