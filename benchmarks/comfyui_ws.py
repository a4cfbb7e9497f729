"""WebSocket event → widget model update latency, and widget messages per second.

Launches an emulated machine, queues 20 prompts one after another on its ComfyUI with a
`JobProgress` widget on each, and measures, for every progress event the client receives, how
long until the widget's model shows it; and how many syncs per second each widget sends.
The baseline in the same run is a widget that syncs every event unthrottled (its message rate is
what the throttle saves). Ends with `RESULT p95_latency_s=<x> widget_msgs_per_s=<y>`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.events import Progress
from runcomfy_nb.widgets import JobProgress


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_prompt(
    comfy: rc.AsyncComfyUI, workflow: dict, seed: int, steps: int
) -> tuple[list[float], float, int, int]:
    job = await comfy.queue(rc.Workflow(workflow).override(KSampler={"seed": seed, "steps": steps}))
    widget = JobProgress(job)
    events: list[tuple[float, float]] = []  # (value, received at)
    shown: list[tuple[float, float]] = []  # (step on the model, when)
    job.subscribe(lambda _, e: events.append((e.value, e.at)) if isinstance(e, Progress) else None,
                  replay=False)
    widget.observe(lambda change: shown.append((change["new"], time.time())), names="step")
    started = time.time()
    await job.result(timeout=120)
    duration = time.time() - started
    latencies = []
    for value, at in events:
        seen = [t for step, t in shown if step is not None and step >= value and t >= at - 1e-6]
        if seen:
            latencies.append(min(seen) - at)
    return latencies, duration, widget.flushes, len(job.history)


def config(step_seconds: float) -> dict:
    """The packaged emulator config with a fast sampler: many progress events per second."""
    from runcomfy_nb.emulator.app import load_config

    data = load_config(None)
    data.setdefault("machines", {})["step_seconds"] = step_seconds
    return data


async def main(prompts: int, steps: int, step_seconds: float) -> None:
    with Emulator(speed=1.0, config=config(step_seconds)) as emulator:
        async with rc.AsyncRunComfy(token=emulator.token, base_url=emulator.url,
                                    user_id=emulator.user_id) as client:
            version = (await client.machines.workflows())[0].version_id
            machine = await client.machines.launch(version, server_type="medium", duration="1h")
            emulator.state.clock.speed = 60.0  # start the machine quickly, then run in real time
            await machine.wait_ready(timeout=120, poll=1.0)
            emulator.state.clock.speed = 1.0
            workflow = emulator.machine_workflow(version)
            latencies: list[float] = []
            rates: list[float] = []
            unthrottled: list[float] = []
            events = 0
            async with machine.comfyui() as comfy:
                for n in range(prompts):
                    lat, duration, flushes, emitted = await one_prompt(comfy, workflow, 1000 + n, steps)
                    latencies += lat
                    events += len(lat)
                    rates.append(flushes / duration)
                    unthrottled.append(emitted / duration)
            await machine.stop()
    print(f"{prompts} prompts of {steps} steps at {step_seconds:g} s/step, {events} progress events")
    print(f"{'metric':<34}{'value':>10}")
    print(f"{'event → model latency p50 (s)':<34}{statistics.median(latencies):>10.3f}")
    print(f"{'event → model latency p95 (s)':<34}{percentile(latencies, 0.95):>10.3f}")
    print(f"{'widget messages per second (mean)':<34}{statistics.mean(rates):>10.2f}")
    print(f"{'baseline: one message per event/s':<34}{statistics.mean(unthrottled):>10.2f}")
    print(f"RESULT p95_latency_s={percentile(latencies, 0.95):.3f} "
          f"widget_msgs_per_s={statistics.mean(rates):.2f}")


if __name__ == "__main__":
    # journaled as a user's jobs are, in a file of its own (not the user's journal)
    journal_dir = tempfile.TemporaryDirectory(prefix="bench-journal-")  # removed at exit
    os.environ["RUNCOMFY_JOURNAL"] = os.path.join(journal_dir.name, "jobs.sqlite3")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--step-seconds", type=float, default=0.025)
    options = parser.parse_args()
    asyncio.run(main(options.prompts, options.steps, options.step_seconds))
