"""Adaptive polling vs fixed 0.5 s polling, against the emulator on 127.0.0.1.

50 jobs of one deployment whose run time varies ±20% around 2.5 s (real time), two at a time,
for each strategy, both strategies in the same run. Prints status calls per job and the
completion→result latency (p50/p95), measured from the server's own `finished_at` to the
moment the client holds the result. Ends with `RESULT calls_ratio=<ours/fixed> p95_latency_s=<ours>`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.timefmt import parse_timestamp

RUN_SECONDS, JITTER = 2.5, 0.2


def deployment(dep_id: str) -> dict:
    return {"id": dep_id, "type": "comfyui", "preset": "image", "run_seconds": RUN_SECONDS,
            "jitter": JITTER, "instances": 8}


async def ours(url: str, token: str, dep: str, jobs: int, concurrency: int) -> list[tuple[str, float]]:
    gate = asyncio.Semaphore(concurrency)
    async with rc.AsyncRunComfy(token=token, base_url=url) as client:
        async def one() -> tuple[str, float]:
            async with gate:
                job = await client.deployments.submit(dep, {"31": {"inputs": {"steps": 4}}})
                result = await job.result(timeout=60)
                held = time.time()
                return job.id, held - parse_timestamp(result.raw["finished_at"])
        return await asyncio.gather(*(one() for _ in range(jobs)))


async def fixed(url: str, token: str, dep: str, jobs: int, concurrency: int) -> list[tuple[str, float]]:
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"{url}/prod/v1/deployments/{dep}", headers=headers) as http:
        async def one() -> tuple[str, float]:
            async with gate:
                rid = (await http.post("/inference", json={"overrides": {}})).json()["request_id"]
                while (await http.get(f"/requests/{rid}/status")).json()["status"] not in (
                        "completed", "cancelled", "succeeded", "failed", "canceled"):
                    await asyncio.sleep(0.5)
                reply = (await http.get(f"/requests/{rid}/result")).json()
                return rid, time.time() - parse_timestamp(reply["finished_at"])
        return await asyncio.gather(*(one() for _ in range(jobs)))


def figures(emulator: Emulator, runs: list[tuple[str, float]]) -> dict[str, float]:
    calls = [sum(1 for r in emulator.log if r.path.endswith(f"/requests/{rid}/status"))
             for rid, _ in runs]
    latencies = sorted(lat for _, lat in runs)
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    return {"calls": statistics.mean(calls), "p50": statistics.median(latencies), "p95": p95,
            "max": latencies[-1]}


async def main(jobs: int, concurrency: int) -> None:
    with Emulator(speed=1.0) as emulator:
        for dep in ("bench-adaptive", "bench-fixed"):
            emulator.add_deployment(deployment(dep))
        started = time.time()
        mine, baseline = await asyncio.gather(
            ours(emulator.url, emulator.token, "bench-adaptive", jobs, concurrency),
            fixed(emulator.url, emulator.token, "bench-fixed", jobs, concurrency),
        )
        a, b = figures(emulator, mine), figures(emulator, baseline)
    print(f"{jobs} jobs per strategy, {concurrency} at a time, run time {RUN_SECONDS} s ±"
          f"{JITTER:.0%}, {time.time() - started:.0f} s wall")
    print(f"{'strategy':<16}{'status calls/job':>18}{'p50 latency s':>15}{'p95 latency s':>15}"
          f"{'max s':>8}")
    for name, f in (("adaptive (ours)", a), ("fixed 0.5 s", b)):
        print(f"{name:<16}{f['calls']:>18.2f}{f['p50']:>15.3f}{f['p95']:>15.3f}{f['max']:>8.3f}")
    print(f"RESULT calls_ratio={a['calls'] / b['calls']:.3f} p95_latency_s={a['p95']:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=2)
    options = parser.parse_args()
    asyncio.run(main(options.jobs, options.concurrency))
