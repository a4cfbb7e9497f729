"""The emulator's aiohttp app and the `Emulator` that serves it from a background thread.

Each emulated API is a module with `routes(...)`; `create_app` mounts them all in one place.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from . import comfyui, machines, serverless
from .faults import Fault, Faults


@dataclass
class Record:
    method: str
    path: str
    query: dict[str, str]
    has_authorization: bool
    status: int = 0
    time: float = field(default_factory=time.time)


class Clock:
    """Virtual time: `speed` virtual seconds pass per real second."""

    def __init__(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


@dataclass
class State:
    token: str
    clock: Clock
    presets: dict[str, Any]
    faults: Faults = field(default_factory=Faults)
    log: list[Record] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)


STATE = web.AppKey("state", State)
MACHINES = web.AppKey("machines", machines.Machines)


def load_config(config: dict[str, Any] | str | Path | None) -> dict[str, Any]:
    if config is None:
        return json.loads(resources.files(__package__).joinpath("deployments.json").read_text())
    if isinstance(config, (str, Path)):
        return json.loads(Path(config).read_text())
    return copy.deepcopy(config)


@web.middleware
async def _log_and_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    state = request.app[STATE]
    record = Record(request.method, request.path, dict(request.query),
                    "Authorization" in request.headers)
    state.log.append(record)
    if request.path.startswith("/prod/") and request.headers.get(
            "Authorization") != f"Bearer {state.token}":
        record.status = 401
        return serverless.error(401, 401001, "Unauthorized: missing or invalid token")
    response = await handler(request)
    record.status = response.status
    return response


def _control_routes(state: State) -> web.RouteTableDef:
    table = web.RouteTableDef()

    @table.post("/_emulator/faults")
    async def add_fault(request: web.Request) -> web.Response:
        body = await request.json()
        params = {k: v for k, v in body.items() if k not in ("fault", "deployment", "count", "on")}
        try:
            state.faults.add(Fault(body["fault"], body.get("deployment", "*"), body.get("count", 1),
                                   body.get("on", ""), params))
        except (KeyError, ValueError) as exc:
            return web.json_response({"message": str(exc)}, status=400)
        return web.json_response({"ok": True})

    @table.delete("/_emulator/faults")
    async def clear_faults(request: web.Request) -> web.Response:
        state.faults.clear()
        return web.json_response({"ok": True})

    @table.get("/_emulator/log")
    async def log(request: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in state.log])

    return table


def create_app(state: State, config: dict[str, Any]) -> tuple[web.Application, serverless.Serverless]:
    app = web.Application(middlewares=[_log_and_auth], client_max_size=64 * 1024**2)
    app[STATE] = state
    deployments = serverless.Serverless(state)
    for entry in config.get("deployments", []):
        deployments.add(entry)
    fleet = machines.Machines(state, config)
    app[MACHINES] = fleet
    app.add_routes(_control_routes(state))
    app.add_routes(serverless.routes(deployments))
    app.add_routes(machines.routes(fleet))
    app.add_routes(comfyui.routes(fleet.backend, state))

    async def close_machines(app: web.Application) -> None:  # open WebSockets would stall cleanup
        await fleet.shutdown()

    app.on_shutdown.append(close_machines)
    return app, deployments


class Emulator:
    """The emulated RunComfy APIs on 127.0.0.1, served from a background thread.

    `Emulator(speed=20).start()` returns the base URL; `with Emulator() as emu:` starts and stops.
    """

    def __init__(self, *, speed: float = 1.0, token: str | None = None, port: int = 0,
                 config: dict[str, Any] | str | Path | None = None) -> None:
        self.token = token or f"emu-{secrets.token_hex(12)}"
        raw = load_config(config)
        self.state = State(self.token, Clock(speed), raw.get("presets", {}))
        if not self.state.presets:
            self.state.presets = load_config(None)["presets"]
        self._config = raw
        self._port = port
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._serverless: serverless.Serverless | None = None
        self._machines: machines.Machines | None = None

    def __repr__(self) -> str:
        return f"<Emulator {self.url or 'stopped'}>"

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> str:
        if self._thread is not None:
            return self.url
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            app, self._serverless = create_app(self.state, self._config)
            self._machines = app[MACHINES]
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", self._port)
            await site.start()
            host, port = self._runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"

        def main() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(serve())
            except BaseException as exc:  # report start-up failures to the caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, name="runcomfy-emulator", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            self._thread = None
            raise RuntimeError(f"the emulator could not start: {failure[0]}")
        return self.url

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        self._thread.join(10)
        loop.close()
        self._thread = None
        self.url = ""

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Any) -> Any:
        """Run `fn` on the emulator's loop (its state lives there)."""
        assert self._loop is not None, "start the emulator first"
        async def wrapped() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(10)

    # --- inspection and control ------------------------------------------------------------
    @property
    def log(self) -> list[Record]:
        return list(self.state.log)

    @property
    def leaks(self) -> list[str]:
        return list(self.state.leaks)

    def set_fault(self, deployment: str, fault: str, count: int = 1, *, on: str = "",
                  **params: Any) -> None:
        self.state.faults.add(Fault(fault, deployment, count, on, params))

    def clear_faults(self) -> None:
        self.state.faults.clear()

    def add_deployment(self, config: dict[str, Any]) -> None:
        self._call(lambda: self._serverless.add(config))

    def deployment_ids(self) -> list[str]:
        return list(self._serverless.deployments) if self._serverless else []

    def deployment_config(self, deployment_id: str) -> dict[str, Any]:
        return copy.deepcopy(self._serverless.deployments[deployment_id])

    def saved_workflow(self, deployment_id: str) -> dict[str, Any]:
        return copy.deepcopy(self._serverless.deployments[deployment_id]["workflow"])

    def requests_for(self, deployment_id: str) -> list[serverless.Request]:
        return [r for r in self._serverless.requests.values() if r.deployment == deployment_id]

    # --- machines (Server API) and their ComfyUI ---------------------------------------------
    @property
    def user_id(self) -> str:
        """The account's user_id in the Server API paths (config "machines.user_id")."""
        return self._machines.user_id if self._machines else str(machines.DEFAULTS["user_id"])

    def machines(self) -> list[dict[str, Any]]:
        """Every machine launched so far: server_id, status (Starting, Ready, Deleting, or Deleted once
        gone), server_type, workflow_version_id, estimated_duration, billed_seconds (virtual)."""
        return self._call(self._machines.records) if self._machines else []

    def comfy_url(self, server_id: str) -> str | None:
        """The machine's main_service_url (its ComfyUI) while it is Ready, else None."""
        machine = self._machines.machines.get(server_id) if self._machines else None
        if machine is None or machine.status != "Ready":
            return None
        return f"{self.url}/machines/{server_id}"

    def machine_workflow(self, version_id: str) -> dict[str, Any]:
        """The API-format workflow a saved workflow version runs (its config preset)."""
        workflow = self._machines.workflow(version_id) if self._machines else None
        if workflow is None:
            raise KeyError(f"no workflow version {version_id!r}")
        return copy.deepcopy(self.state.presets[workflow.get("preset", "image")])
