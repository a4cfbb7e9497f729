"""The Server API's route table (the package docstring has the API)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from ..envelope import error
from ..envelope import origin as _origin
from ..faults import REQUEST_FAULTS, Fault, Faults
from ..faults import reply as _request_fault
from ..routing import Refused, Route
from .fleet import NOT_JSON, SERVER_TYPES, Machine, Machines


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if value > 0 else None


class ServerAPI:
    """The Server API's handlers over `machines`, and its table."""

    fault_names = REQUEST_FAULTS

    def __init__(self, machines: Machines) -> None:
        self.machines = machines

    @property
    def faults(self) -> Faults:
        return self.machines.faults

    async def fault_reply(self, request: web.Request, fault: Fault) -> web.StreamResponse | None:
        if fault.name == "rate_limit":
            return _rate_limited(float(fault.params.get("retry_after", 1)))
        return await _request_fault(request, fault)

    def routes(self) -> list[Route]:
        base = "/prod/api/users/{user_id}"
        return [
            Route("GET", f"{base}/workflows", self.workflows, "status", self.reads),
            Route("GET", f"{base}/servers", self.list_servers, "status", self.reads),
            Route("POST", f"{base}/servers", self.launch, "submit", self.launching, after_taken=True),
            Route("GET", f"{base}/servers/{{server_id}}", self.status, "status", self.server_read),
            Route("POST", f"{base}/servers/{{server_id}}/update-estimated-duration", self.update_duration,
                  "submit", self.server, after_taken=True),
            Route("DELETE", f"{base}/servers/{{server_id}}", self.stop, "cancel", self.server),
        ]

    # --- what a route works on: the account's gate, then the fault target ---------------------
    async def gate(self, request: web.Request, target: str, read: bool = False) -> tuple[None, str]:
        """The rate limit and the user check (Refused), then, on a read, the `not_json` fault."""
        wait = self.machines.rate_limited(request.headers.get("Authorization", ""))
        if wait:
            raise Refused(_rate_limited(wait))
        if request.match_info["user_id"] != self.machines.user_id:
            raise Refused(error(403, 403001, "Forbidden: the user_id does not belong to this token"))
        if read and self.faults.take(target, "status", {"not_json"}):
            raise Refused(web.Response(text=NOT_JSON, content_type="text/html"))
        return None, target

    async def reads(self, request: web.Request) -> tuple[None, str]:
        return await self.gate(request, "*", read=True)

    async def server_read(self, request: web.Request) -> tuple[None, str]:
        return await self.gate(request, request.match_info["server_id"], read=True)

    async def server(self, request: web.Request) -> tuple[None, str]:
        return await self.gate(request, request.match_info["server_id"])

    async def launching(self, request: web.Request) -> tuple[None, str]:
        body = await _body(request)
        version = body.get("workflow_version_id", body.get("version_id")) if isinstance(body, dict) else None
        return await self.gate(request, str(version or "*"))

    def visible(self, request: web.Request) -> Machine:
        machine = self.machines.visible(request.match_info["server_id"])
        if machine is None:
            raise Refused(error(404, 404001, "Server not found"))
        return machine

    def reply(self, body: Any) -> web.Response:
        """A JSON answer whose `Date` header carries the virtual now."""
        response = web.json_response(body)
        response.headers["Date"] = format_datetime(
            datetime.fromtimestamp(self.machines.time.now(), timezone.utc), usegmt=True)
        return response

    # --- handlers ------------------------------------------------------------------------------
    async def workflows(self, request: web.Request, _: None) -> web.StreamResponse:
        keys = ("workflow_id", "workflow_name", "version_id", "created_at", "updated_at")
        return self.reply([{k: w[k] for k in keys if k in w} for w in self.machines.workflows])

    async def list_servers(self, request: web.Request, _: None) -> web.StreamResponse:
        origin = _origin(request)
        fleet = self.machines
        return self.reply([m.body(origin) for m in fleet.machines.values() if fleet.visible(m.id)])

    async def launch(self, request: web.Request, _: None) -> web.StreamResponse:
        body = await _body(request)
        if not isinstance(body, dict):
            return error(400, 400001, "Request body must be a JSON object")
        version = body.get("workflow_version_id", body.get("version_id"))
        if not version:
            return error(400, 400001, "workflow_version_id is required (the version_id from the "
                                      "workflows list)")
        workflow = self.machines.workflow(str(version))
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
        machine = self.machines.launch(workflow, server_type, duration)
        return self.reply(machine.body(_origin(request)))

    async def status(self, request: web.Request, _: None) -> web.StreamResponse:
        return self.reply(self.visible(request).body(_origin(request)))

    async def update_duration(self, request: web.Request, _: None) -> web.StreamResponse:
        machine = self.visible(request)
        body = await _body(request)
        duration = _positive_int(body.get("update_estimated_duration")) if isinstance(body, dict) else None
        if duration is None:
            return error(400, 400001, "update_estimated_duration must be a positive whole number of seconds")
        if machine.status != "Ready" and machine.status != "Starting":
            return error(400, 400001, f"Cannot change the duration of a machine that is {machine.status}")
        self.machines.extend(machine, duration)
        return self.reply(machine.body(_origin(request)))

    async def stop(self, request: web.Request, _: None) -> web.StreamResponse:
        machine = self.visible(request)
        self.machines.stop(machine)
        return self.reply(machine.body(_origin(request)))


async def _body(request: web.Request) -> Any:
    """The request's JSON, or None when it is not JSON."""
    try:
        return await request.json()
    except ValueError:
        return None


def _rate_limited(wait: float) -> web.Response:
    response = web.json_response({"error_code": "rate_limited",
                                  "error_message": "Rate limit exceeded: 1 request per second per account"},
                                 status=429)
    response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return response
