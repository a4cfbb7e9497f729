"""The shared status loop without a server: one task makes the status calls of many jobs, a 429 pauses
them all, a cancelled or finished job leaves it, and a queued job's plan learns from the others."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runcomfy_nb.clients.models import Models
from runcomfy_nb.errors import RateLimited
from runcomfy_nb.polling import DurationModel, PollPlan
from runcomfy_nb.status import Status
from runcomfy_nb.status_loop import StatusLoop


def loop_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "runcomfy-status-loop"]


class Server:
    """Status replies: each request is in progress for `polls` calls, then completed."""

    base_url = "https://api.example.invalid"

    def __init__(self, polls: int = 3) -> None:
        self.polls, self.calls = polls, {}  # type: ignore[var-annotated]
        self.inside = self.peak = self.loops = 0

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        rid, action = path.rsplit("/", 2)[-2:]
        if action == "result":
            return {"status": "succeeded", "output": {"text": "done"}}
        self.inside += 1
        self.peak, self.loops = max(self.peak, self.inside), max(self.loops, len(loop_tasks()))
        await asyncio.sleep(0)
        self.inside -= 1
        self.calls[rid] = self.calls.get(rid, 0) + 1
        return {"status": "completed" if self.calls[rid] > self.polls else "in_progress"}


async def test_one_task_polls_every_job_of_a_model_with_bounded_concurrency() -> None:
    server = Server()
    models = Models(server, None)  # type: ignore[arg-type]
    models.durations("o/m").record(0.1)  # polls every 0.5 s gap from about 0.1 s on
    jobs = [models.attach(f"r{n}", model_id="o/m") for n in range(40)]
    await asyncio.sleep(0)
    assert len(loop_tasks()) == 1
    results = await asyncio.gather(*(job.result(timeout=30) for job in jobs))
    assert all(r.text == ["done"] for r in results) and all(job.status is Status.SUCCEEDED for job in jobs)
    assert server.calls == {f"r{n}": 4 for n in range(40)}  # each polled at its own pace, none twice
    assert 1 <= server.peak <= 16 and server.loops == 1  # bounded, and never a second loop
    assert not models.status_loop("o/m").plans  # finished jobs left the loop


async def test_a_429_pauses_every_call_of_the_loop() -> None:
    shared = StatusLoop()
    made: list[tuple[str, float]] = []

    async def refused() -> Any:
        made.append(("refused", shared.loop.time()))
        raise RateLimited("slow down", status=429, retry_after=0.6)

    async def fine() -> Any:
        made.append(("fine", shared.loop.time()))
        return "ok"

    start = shared.loop.time()
    first = asyncio.create_task(shared.call("a", refused, 0.0, 5))
    others = [asyncio.create_task(shared.call(f"b{n}", fine, 0.05, 5)) for n in range(5)]
    with pytest.raises(RateLimited):
        await first
    assert await asyncio.gather(*others) == ["ok"] * 5
    assert [name for name, _ in made] == ["refused"] + ["fine"] * 5
    assert all(at - start >= 0.55 for _, at in made[1:])  # all waited out the Retry-After


async def test_a_cancelled_job_leaves_the_loop_and_the_loop_ends() -> None:
    shared = StatusLoop()
    made: list[str] = []

    async def status() -> Any:
        made.append("call")
        return "ok"

    waiting = asyncio.create_task(shared.call("gone", status, 0.3, 5))
    kept = asyncio.create_task(shared.call("kept", status, 0.1, 5))
    await asyncio.sleep(0)
    waiting.cancel()
    assert await kept == "ok"
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.wait_for(asyncio.gather(*loop_tasks()), 5)
    assert made == ["call"] and not shared.running


def test_a_queued_plan_starts_when_the_job_before_it_finishes() -> None:
    model = DurationModel()
    model.record(2.0)
    plan = PollPlan(model, start=100.0)
    plan.observe(100.5, queued=True, position=1)
    assert plan.next_pause(100.5) == 0.5  # queued: backing off from 0.5 s
    plan.other_finished(101.0)  # the job ahead of it started
    assert plan.next_pause(101.1) == 0.75  # still queued: pauses keep growing
    plan.other_finished(103.0)  # now it was next: planned as started at 103
    low = 2.0 * (1 - 0.35)
    assert plan.next_pause(103.1) == pytest.approx(103.0 + low + 0.5 - 103.1)
    plan.observe(104.8, queued=False)  # seen running: the guessed start stands
    assert plan.origin == 103.0 and plan.queue_wait() == pytest.approx(3.0)
    plan.observe(105.6, queued=True, position=0)  # the guess was wrong: queued again
    assert not plan.guessed and plan.next_pause(105.6) > 0


async def test_an_expedited_job_is_polled_sooner_than_its_plan_said() -> None:
    server = Server(polls=0)
    models = Models(server, None)  # type: ignore[arg-type]
    models.durations("o/m").record(1.0)  # first status call about 1.15 s in, 0.75 s when expedited
    order: list[str] = []
    jobs = {rid: models.attach(rid, model_id="o/m") for rid in ("slow", "fast")}
    for rid, job in jobs.items():
        job.subscribe(lambda j, _e, rid=rid: order.append(rid) if j.done and rid not in order else None)
    await asyncio.sleep(0)
    jobs["fast"].expedite()
    await asyncio.gather(*(job.result(timeout=30) for job in jobs.values()))
    assert order == ["fast", "slow"]  # attached last, planned first
    assert server.calls == {"slow": 1, "fast": 1}
