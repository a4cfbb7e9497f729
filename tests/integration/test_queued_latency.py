"""Queued jobs get their results as soon as unqueued ones: six jobs at once on one instance of an
emulated deployment, each result held within a bound of the server's own finish, nothing sent twice."""

from __future__ import annotations

import asyncio
import time
import uuid

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator

from ..helpers import TOKEN

RUN_SECONDS = 30.0  # virtual: 1.5 s real at the suite's speed 20


async def test_queued_jobs_learn_of_their_completion_promptly(fresh: Emulator) -> None:
    dep = f"dep-queued-{uuid.uuid4().hex[:8]}"
    fresh.add_deployment({"id": dep, "type": "comfyui", "preset": "image", "run_seconds": RUN_SECONDS,
                          "instances": 1})
    async with rc.AsyncRunComfy(token=TOKEN, base_url=fresh.url) as client:
        jobs = await asyncio.gather(*(client.deployments.submit(dep, {"31": {"inputs": {"seed": n}}})
                                      for n in range(6)))

        async def held(job: rc.Job) -> float:
            await job.result(timeout=60)
            return time.time()

        got = dict(zip((j.id for j in jobs), await asyncio.gather(*(held(j) for j in jobs)), strict=True))
    finished = {r.id: r.finished_wall for r in fresh.requests_for(dep)}
    late = {rid: round(at - finished[rid], 2) for rid, at in got.items()}  # type: ignore[operator]
    # 0.5 s polling gap plus a loaded machine's slack; polls backing off while queued were seconds late
    assert max(late.values()) < 1.2, late
    posts = [r for r in fresh.log if r.method == "POST" and r.path.endswith(f"/{dep}/inference")]
    assert len(posts) == 6  # nothing submitted twice
