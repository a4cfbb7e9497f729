"""The account's machines: their lives from Starting to gone, billing, and the rate limit."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .. import comfyui

SERVER_TYPES = ("medium", "large", "extra-large", "2x-large", "2xl-turbo")
NOT_JSON = "<html><body><h1>502 Bad Gateway</h1></body></html>"  # the `not_json` fault's page
DEFAULTS: dict[str, Any] = {
    "user_id": "user-emu-0001", "ready_seconds": 60.0, "deleting_seconds": 10.0, "launch_404_seconds": 0.0,
    "rate_per_second": 1.0, "rate_burst": 5, "step_seconds": 0.5, "node_seconds": 0.2, "load_seconds": 3.0,
    "previews": True, "checkpoints": ["sd_xl_base_1.0.safetensors", "v1-5-pruned-emaonly-fp16.safetensors"],
}


def iso_z(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class VirtualTime:
    """Wall-clock-like timestamps that advance `clock.speed` times faster than real time."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._wall, self._mono = time.time(), time.monotonic()

    def now(self) -> float:
        return self._wall + (time.monotonic() - self._mono) * self.clock.speed


class TokenBucket:
    """`rate` requests per real second with bursts of `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> float:
        """0 when the request may pass, else the seconds until it could."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass
class Machine:
    """One emulated machine."""

    id: str
    user_id: str
    server_type: str
    estimated_duration: int
    version_id: str
    created: float
    status: str = "Starting"  # Starting | Ready | Deleting | Deleted (emulator only: gone, 404)
    ready_at: float | None = None
    billing_end: float | None = None
    backend: comfyui.ComfyUI | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def stopping_at(self) -> float | None:
        return None if self.ready_at is None else self.ready_at + self.estimated_duration

    def body(self, origin: str) -> dict[str, Any]:
        return {"server_id": self.id, "user_id": self.user_id, "server_type": self.server_type,
                "estimated_duration": self.estimated_duration, "current_status": self.status,
                "main_service_url": f"{origin}/machines/{self.id}" if self.ready_at is not None else None,
                "service_ready_at": iso_z(self.ready_at), "estimated_stopping_at": iso_z(self.stopping_at),
                "workflow_version_id": self.version_id}


class Machines:
    """The account's workflows and machines."""

    def __init__(self, state: Any, config: dict[str, Any]) -> None:
        self.state = state
        self.settings = {**DEFAULTS, **config.get("machines", {})}
        self.user_id = str(self.settings["user_id"])
        self.time = VirtualTime(state.clock)
        self.workflows: list[dict[str, Any]] = [dict(w) for w in config.get("workflows", [])]
        self.machines: dict[str, Machine] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def faults(self) -> Any:
        return self.state.faults

    def workflow(self, version_id: str) -> dict[str, Any] | None:
        return next((w for w in self.workflows if w["version_id"] == version_id), None)

    def rate_limited(self, account: str) -> float:
        rate = float(self.settings["rate_per_second"])
        if rate <= 0:
            return 0.0
        bucket = self._buckets.setdefault(account, TokenBucket(rate, float(self.settings["rate_burst"])))
        return bucket.take()

    # --- lifecycle -------------------------------------------------------------------------
    def launch(self, workflow: dict[str, Any], server_type: str, duration: int) -> Machine:
        machine = Machine(str(uuid.uuid4()), self.user_id, server_type, duration, workflow["version_id"],
                          self.time.now())
        self.machines[machine.id] = machine
        slow = self.faults.take(workflow["version_id"], "ready", {"slow_ready"})
        extra = float(slow.params.get("seconds", 600)) if slow else 0.0
        machine.task = asyncio.get_running_loop().create_task(self._live(machine, workflow, extra))
        return machine

    async def _live(self, machine: Machine, workflow: dict[str, Any], extra: float) -> None:
        clock = self.state.clock
        await clock.sleep(float(self.settings["ready_seconds"]) + extra)
        if self.faults.take(machine.id, "ready", {"never_ready"}) or \
                self.faults.take(workflow["version_id"], "ready", {"never_ready"}):
            await asyncio.Event().wait()  # stays Starting until stopped
        machine.backend = comfyui.ComfyUI(machine.id, self.state, self.settings, machine.server_type,
                                          self._checkpoints(workflow))
        machine.backend.start()
        machine.ready_at = self.time.now()
        machine.status = "Ready"
        while True:
            remaining = (machine.stopping_at or 0) - self.time.now()
            if remaining <= 0:
                break
            machine.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(machine.wake.wait(), remaining / clock.speed)
        self._begin_delete(machine, machine.stopping_at)

    def _checkpoints(self, workflow: dict[str, Any]) -> list[str]:
        names = list(self.settings["checkpoints"])
        preset = self.state.presets.get(workflow.get("preset", ""), {})
        for node in preset.values():
            if node.get("class_type") == "CheckpointLoaderSimple":
                names.append(node["inputs"]["ckpt_name"])
        return names

    def stop(self, machine: Machine) -> None:
        if machine.status in ("Deleting", "Deleted"):
            return
        if machine.task is not None and machine.task is not asyncio.current_task():
            machine.task.cancel()
        self._begin_delete(machine, self.time.now() if machine.ready_at is not None else None)

    def _begin_delete(self, machine: Machine, billing_end: float | None) -> None:
        machine.status = "Deleting"
        machine.billing_end = billing_end
        if machine.backend is not None:
            machine.backend.shutdown()
        machine.backend = None

        async def gone() -> None:
            await self.state.clock.sleep(float(self.settings["deleting_seconds"]))
            machine.status = "Deleted"

        task = asyncio.get_running_loop().create_task(gone())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def extend(self, machine: Machine, duration: int) -> None:
        machine.estimated_duration = duration
        machine.wake.set()

    def billed_seconds(self, machine: Machine) -> float:
        if machine.ready_at is None:
            return 0.0
        end = machine.billing_end if machine.billing_end is not None else self.time.now()
        return max(0.0, end - machine.ready_at)

    def backend(self, server_id: str) -> comfyui.ComfyUI | None:
        machine = self.machines.get(server_id)
        return machine.backend if machine is not None and machine.status == "Ready" else None

    def visible(self, server_id: str) -> Machine | None:
        machine = self.machines.get(server_id)
        if machine is None or machine.status == "Deleted":
            return None
        if self.time.now() - machine.created < float(self.settings["launch_404_seconds"]):
            return None
        return machine

    def records(self) -> list[dict[str, Any]]:
        return [{"server_id": m.id, "status": m.status, "server_type": m.server_type,
                 "workflow_version_id": m.version_id, "estimated_duration": m.estimated_duration,
                 "billed_seconds": round(self.billed_seconds(m), 3)} for m in self.machines.values()]

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for machine in self.machines.values():
            if machine.task is not None:
                machine.task.cancel()
            if machine.backend is not None:
                machine.backend.shutdown()
