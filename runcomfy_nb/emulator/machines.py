"""The RunComfy Server API (dedicated machines), as api/server-api.md has it.

Routes under `/prod/api/users/{user_id}` (bearer token checked by the app's middleware): GET
`/workflows`, GET/POST `/servers`, GET/DELETE `/servers/{server_id}`, POST
`/servers/{server_id}/update-estimated-duration`. A machine is `Starting` for `ready_seconds`, then
`Ready` with `main_service_url = {origin}/machines/{server_id}` (a ComfyUI backend, comfyui.py),
billed per virtual second from Ready until DELETE or `estimated_stopping_at`; then `Deleting` for
`deleting_seconds`, then gone (404).

Settings (the config's "machines" object): `user_id`, `ready_seconds`, `deleting_seconds`,
`launch_404_seconds` (a fresh machine's GET answers 404 for that long, as clients have seen),
`rate_per_second` and `rate_burst` (a token bucket per account in REAL seconds; 0 turns it off),
and the backend's `step_seconds`, `node_seconds`, `load_seconds`, `previews`, `checkpoints`.
Workflows: the config's "workflows" list; each names a `preset` (the API-format workflow its
environment runs; its checkpoints are installed on the machine).

Choices where the docs are silent (api/server-api.md "Uncertain"): a wrong `user_id` answers 403
`{"error_code": 403001, ...}`; the 429 body is `{"error_code": "rate_limited", ...}` with a
`Retry-After` header; timestamps are virtual (they advance `speed` times faster than the wall clock,
so `estimated_stopping_at = service_ready_at + estimated_duration` holds) and the Server API's `Date`
header carries the same virtual now.

Faults (target: the server_id; the workflow version id or "*" for a launch): `never_ready` (on
"ready": the machine stays Starting), `slow_ready` (param `seconds`), and the request faults
`rate_limit`, `server_error`, `http_error`, `body_error`, `drop`, `delay` on launch and
update-estimated-duration ("submit"; `drop`/`delay` after the machine was taken), status, list and
workflows ("status"), and stop ("cancel"); `not_json` on status and list: HTTP 200 with an HTML
page, as a proxy in front of the API may answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from . import comfyui
from .envelope import error
from .envelope import origin as _origin
from .faults import REQUEST_FAULTS
from .faults import reply as _request_fault

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


# --- routes ------------------------------------------------------------------------------------


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if value > 0 else None


KEY = web.AppKey("machines", Machines)


def register(app: web.Application, state: Any) -> None:
    """Mount the Server API (bearer auth on `/prod/api/`) and hand comfyui.py the machines' backends."""
    fleet = Machines(state, state.config)
    app[KEY] = fleet
    app[comfyui.BACKENDS] = fleet.backend
    state.bearer_prefixes.append("/prod/api/")
    app.add_routes(routes(fleet))

    async def close_machines(app: web.Application) -> None:  # open WebSockets would stall cleanup
        await fleet.shutdown()

    app.on_shutdown.append(close_machines)


def routes(machines: Machines) -> web.RouteTableDef:
    table = web.RouteTableDef()
    base = "/prod/api/users/{user_id}"

    def reply(body: Any, status: int = 200) -> web.Response:
        response = web.json_response(body, status=status)
        response.headers["Date"] = format_datetime(
            datetime.fromtimestamp(machines.time.now(), timezone.utc), usegmt=True)
        return response

    async def gate(request: web.Request, target: str, operation: str,
                   deferred: bool = False) -> tuple[web.StreamResponse | None, Any]:
        """Rate limit, user check and armed faults: a reply to send at once, or a fault for later."""
        wait = machines.rate_limited(request.headers.get("Authorization", ""))
        if wait:
            return _rate_limited(wait), None
        if request.match_info["user_id"] != machines.user_id:
            return error(403, 403001, "Forbidden: the user_id does not belong to this token"), None
        if operation == "status" and machines.faults.take(target, operation, {"not_json"}):
            return web.Response(text=NOT_JSON, content_type="text/html"), None
        fault = machines.faults.take(target, operation, REQUEST_FAULTS)
        if fault is None:
            return None, None
        if deferred and fault.name in ("drop", "delay"):
            return None, fault
        if fault.name == "rate_limit":
            return _rate_limited(float(fault.params.get("retry_after", 1))), None
        return await _request_fault(request, fault), None

    def lookup(request: web.Request) -> tuple[Machine | None, web.Response | None]:
        machine = machines.visible(request.match_info["server_id"])
        return (machine, None) if machine else (None, error(404, 404001, "Server not found"))

    @table.get(f"{base}/workflows")
    async def workflows(request: web.Request) -> web.StreamResponse:
        if (refused := (await gate(request, "*", "status"))[0]):
            return refused
        keys = ("workflow_id", "workflow_name", "version_id", "created_at", "updated_at")
        return reply([{k: w[k] for k in keys if k in w} for w in machines.workflows])

    @table.get(f"{base}/servers")
    async def list_servers(request: web.Request) -> web.StreamResponse:
        if (refused := (await gate(request, "*", "status"))[0]):
            return refused
        origin = _origin(request)
        return reply([m.body(origin) for m in machines.machines.values() if machines.visible(m.id)])

    @table.post(f"{base}/servers")
    async def launch(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        version = body.get("workflow_version_id", body.get("version_id")) if isinstance(body, dict) else None
        refused, later = await gate(request, str(version or "*"), "submit", deferred=True)
        if refused:
            return refused
        if not isinstance(body, dict):
            return error(400, 400001, "Request body must be a JSON object")
        if not version:
            return error(400, 400001, "workflow_version_id is required (the version_id from the "
                                      "workflows list)")
        workflow = machines.workflow(str(version))
        if workflow is None:
            return error(404, 404001, f"Workflow version not found: {version}")
        server_type = body.get("server_type")
        if server_type not in SERVER_TYPES:
            return error(400, 400001, f"server_type must be one of {', '.join(SERVER_TYPES)}; "
                                      f"got {server_type!r}")
        duration = _positive_int(body.get("estimated_duration"))
        if duration is None:
            return error(400, 400001, "estimated_duration must be a positive whole number of seconds; "
                                      f"got {body.get('estimated_duration')!r}")
        machine = machines.launch(workflow, server_type, duration)
        await _request_fault(request, later)  # drop / delay happen after the machine was taken
        return reply(machine.body(_origin(request)))

    @table.get(f"{base}/servers/{{server_id}}")
    async def status(request: web.Request) -> web.StreamResponse:
        if (refused := (await gate(request, request.match_info["server_id"], "status"))[0]):
            return refused
        machine, missing = lookup(request)
        return missing or reply(machine.body(_origin(request)))  # type: ignore[union-attr]

    @table.post(f"{base}/servers/{{server_id}}/update-estimated-duration")
    async def update_duration(request: web.Request) -> web.StreamResponse:
        refused, later = await gate(request, request.match_info["server_id"], "submit", deferred=True)
        if refused:
            return refused
        machine, missing = lookup(request)
        if missing:
            return missing
        assert machine is not None
        try:
            body = await request.json()
        except ValueError:
            body = None
        duration = _positive_int(body.get("update_estimated_duration")) if isinstance(body, dict) else None
        if duration is None:
            return error(400, 400001, "update_estimated_duration must be a positive whole number of seconds")
        if machine.status != "Ready" and machine.status != "Starting":
            return error(400, 400001, f"Cannot change the duration of a machine that is {machine.status}")
        machines.extend(machine, duration)
        await _request_fault(request, later)
        return reply(machine.body(_origin(request)))

    @table.delete(f"{base}/servers/{{server_id}}")
    async def stop(request: web.Request) -> web.StreamResponse:
        if (refused := (await gate(request, request.match_info["server_id"], "cancel"))[0]):
            return refused
        machine, missing = lookup(request)
        if missing:
            return missing
        assert machine is not None
        machines.stop(machine)
        return reply(machine.body(_origin(request)))

    return table


def _rate_limited(wait: float) -> web.Response:
    response = web.json_response({"error_code": "rate_limited",
                                  "error_message": "Rate limit exceeded: 1 request per second per account"},
                                 status=429)
    response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return response
