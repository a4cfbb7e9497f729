"""The emulator's aiohttp app and the `Emulator` that serves it from a background thread.

`create_app` builds one app: the request log and bearer-token middleware, the control endpoints
(`/_emulator/...`, no token), then each emulated API in MODULES, mounted by its own
`register(app, state)`. A module mounts its route table (routing.py: rows of method, path, handler
and the fault operation, the request faults applied in one place), keeps its own objects under its
own `web.AppKey`, and names the path prefixes that need the bearer token in `state.bearer_prefixes`.

Control endpoints: POST `/_emulator/faults` `{"deployment": target, "fault": name, "count": 1,
"on": ..., **params}` arms a fault (faults.py), DELETE `/_emulator/faults` clears them all, GET
`/_emulator/faults` lists them, GET `/_emulator/log` returns the request log.
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

from . import cloud, comfyui, machines, models, serverless
from .envelope import error
from .faults import Fault, Faults

# Each module: register(app, state). Order matters only where one needs another's objects
# (comfyui serves the backends machines creates).
MODULES = (serverless, machines, comfyui, models, cloud)


@dataclass
class Record:
    """One request the emulator received (and the HTTP status it answered; 0: none, e.g. dropped)."""

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
    """What every emulated API shares."""

    token: str = field(repr=False)
    clock: Clock
    presets: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    comfy_api_key: str = field(default="", repr=False)  # Comfy Cloud's main account (cloud/)
    faults: Faults = field(default_factory=Faults)
    log: list[Record] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    bearer_prefixes: list[str] = field(default_factory=list)


STATE = web.AppKey("state", State)


def load_config(config: dict[str, Any] | str | Path | None) -> dict[str, Any]:
    """The packaged deployments.json (None), a JSON file, or a copy of a dict."""
    if config is None:
        return json.loads(resources.files(__package__).joinpath("deployments.json").read_text())
    if isinstance(config, (str, Path)):
        return json.loads(Path(config).read_text())
    return copy.deepcopy(config)


@web.middleware
async def _log_and_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    state = request.app[STATE]
    query = {k: "<redacted>" if k == "token" else v for k, v in request.query.items()}  # Cloud's WS key
    record = Record(request.method, request.path, query, "Authorization" in request.headers)
    state.log.append(record)
    if request.path.startswith(tuple(state.bearer_prefixes)) and request.headers.get(
            "Authorization") != f"Bearer {state.token}":
        record.status = 401
        return error(401, 401001, "Unauthorized: missing or invalid token")
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        record.status = exc.status
        raise
    record.status = response.status
    return response


def _control_routes(state: State) -> web.RouteTableDef:
    table = web.RouteTableDef()

    @table.post("/_emulator/faults")
    async def add_fault(request: web.Request) -> web.Response:
        try:
            state.faults.add(Fault.from_spec(await request.json()))
        except (ValueError, TypeError) as exc:
            return web.json_response({"message": str(exc)}, status=400)
        return web.json_response({"ok": True})

    @table.get("/_emulator/faults")
    async def list_faults(request: web.Request) -> web.Response:
        return web.json_response([asdict(f) for f in state.faults.armed()])

    @table.delete("/_emulator/faults")
    async def clear_faults(request: web.Request) -> web.Response:
        state.faults.clear()
        return web.json_response({"ok": True})

    @table.get("/_emulator/log")
    async def log(request: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in state.log])

    return table


def create_app(state: State) -> web.Application:
    app = web.Application(middlewares=[_log_and_auth], client_max_size=64 * 1024**2)
    app[STATE] = state
    state.bearer_prefixes.clear()  # each module names its own again
    app.add_routes(_control_routes(state))
    for module in MODULES:
        module.register(app, state)
    return app


class Emulator:
    """The emulated RunComfy APIs on 127.0.0.1, served from a background daemon thread with its own
    event loop.

    `Emulator(speed=20).start()` returns the base URL; `with Emulator() as emu:` starts and stops.
    `speed`: virtual seconds per real second (all durations in the config are virtual). `token`: the
    bearer token it accepts (default: a random `emu-…`). `comfy_api_key`: the Comfy Cloud account's
    key (default: a random `comfyui-…`); Comfy Cloud is served at `cloud_url` (`{url}/cloud`, cloud/).
    `config`: None (the packaged deployments.json), a dict of the same shape, or a path to one (an
    optional "cloud" object holds Comfy Cloud's settings). `port`: 0 picks a free one.
    """

    def __init__(self, *, speed: float = 1.0, token: str | None = None, port: int = 0,
                 config: dict[str, Any] | str | Path | None = None, comfy_api_key: str | None = None) -> None:
        self.token = token or f"emu-{secrets.token_hex(12)}"
        self.comfy_api_key = comfy_api_key or f"comfyui-{secrets.token_hex(32)}"
        raw = load_config(config)
        presets = raw.get("presets") or load_config(None)["presets"]
        self.state = State(self.token, Clock(speed), presets, raw, comfy_api_key=self.comfy_api_key)
        self._config = raw
        self._port = port
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._serverless: serverless.Serverless | None = None
        self._machines: machines.Machines | None = None
        self._models: models.Models | None = None
        self._cloud: cloud.Cloud | None = None
        self._killed = False  # kill(): the port closed, the loop and its jobs going on

    def __repr__(self) -> str:
        return f"<Emulator {self.url or 'stopped'}>"

    @property
    def speed(self) -> float:
        return self.state.clock.speed

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> str:
        """Serve (once; a second call returns the same URL) and return the base URL. After `kill()`,
        serve again on the same port, with the state and the jobs that went on meanwhile."""
        if self._thread is not None:
            if self._killed:
                self._call_async(self._listen)
                self._killed = False
            return self.url
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            app = create_app(self.state)
            self._serverless, self._machines = app[serverless.KEY], app[machines.KEY]
            self._models, self._cloud = app[models.KEY], app[cloud.KEY]
            # in-flight answers (a `delay` fault, say) get a moment, not aiohttp's default minute
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await self._runner.setup()
            await self._listen()
            host, port = self._runner.addresses[0][:2]
            self._port, self.url = port, f"http://{host}:{port}"

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(serve())
            except BaseException as exc:  # report start-up failures to the caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=main, name="runcomfy-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(30) or failure:
            self._thread = None
            loop.call_soon_threadsafe(loop.stop)
            raise RuntimeError(f"the emulator could not start: {failure[0] if failure else 'timeout'}")
        return self.url

    async def _listen(self) -> None:
        assert self._runner is not None
        await web.TCPSite(self._runner, "127.0.0.1", self._port).start()

    def kill(self) -> None:
        """The service vanishes, as a killed process does for its clients: the port closes and every
        open connection (WebSockets too) is cut, while the state and the jobs in flight go on, so
        `start()` serves them again on the same port (then `stop()` ends it all); idempotent."""
        runner = self._runner
        if self._thread is None or runner is None or self._killed:
            return

        async def cut() -> None:
            for site in list(runner.sites):
                await site.stop()
            for connection in runner.server.connections if runner.server else ():
                if connection.transport is not None:
                    connection.transport.abort()

        self._call_async(cut)
        self._killed = True

    def stop(self) -> None:
        """Stop serving (jobs in flight are dropped); idempotent."""
        if self._thread is None or self._loop is None:
            return
        loop, thread = self._loop, self._thread
        self._thread, self._killed = None, False

        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            await loop.shutdown_default_executor()  # media still being drawn
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()
        self._runner = None
        self.url = ""

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Any) -> Any:
        """Run `fn` on the emulator's loop (its state lives there)."""
        if self._loop is None or self._thread is None:
            raise RuntimeError("start the emulator first")

        async def wrapped() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(10)

    def _call_async(self, fn: Any) -> Any:
        """Await the coroutine function `fn` on the emulator's loop."""
        if self._loop is None or self._thread is None:
            raise RuntimeError("start the emulator first")
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(10)

    # --- inspection and control ------------------------------------------------------------
    @property
    def log(self) -> list[Record]:
        """Every request received: method, path, query, has_authorization, status, time."""
        return list(self.state.log)

    @property
    def leaks(self) -> list[str]:
        """Paths of output-file requests that carried credentials (they were refused with 403)."""
        return list(self.state.leaks)

    def set_fault(self, deployment: str, fault: str, count: int = 1, *, on: str = "",
                  **params: Any) -> None:
        """Arm `fault` for the next `count` (-1: every) matching request to `deployment` ("*": any);
        see faults.py for the names, their `on` defaults and params."""
        self.state.faults.add(Fault(fault, deployment, count, on, params))

    def clear_faults(self) -> None:
        self.state.faults.clear()

    def add_deployment(self, config: dict[str, Any]) -> None:
        """Add (or replace) a serverless deployment: a dict shaped like a deployments.json entry."""
        entry = copy.deepcopy(config)
        if self._serverless is not None and self._thread is not None:
            self._call(lambda: self._serverless.add(entry))  # type: ignore[union-attr]
        listed = self._config.setdefault("deployments", [])  # for a start to come, or a restart
        listed[:] = [*(d for d in listed if d.get("id") != entry.get("id")), entry]

    def deployment_ids(self) -> list[str]:
        if self._serverless is None:
            return [d["id"] for d in self._config.get("deployments", [])]
        return list(self._serverless.deployments)

    def deployment_config(self, deployment_id: str) -> dict[str, Any]:
        if self._serverless is None:
            raise RuntimeError("start the emulator first")
        return copy.deepcopy(self._serverless.deployments[deployment_id])

    def saved_workflow(self, deployment_id: str) -> dict[str, Any]:
        """The API-format workflow a ComfyUI deployment runs when no workflow_api_json is sent."""
        return self.deployment_config(deployment_id)["workflow"]

    def requests_for(self, deployment_id: str) -> list[serverless.Request]:
        """The emulator's records of the deployment's requests, oldest first (.id, .status,
        .created, .started_wall, .finished_wall, .instance_id, .body, ...)."""
        if self._serverless is None:
            return []
        return [r for r in list(self._serverless.requests.values()) if r.deployment == deployment_id]

    # --- Model API ----------------------------------------------------------------------------
    def model_ids(self) -> list[str]:
        if self._models is None:
            return [m["model_id"] for m in self._config.get("models", [])]
        return list(self._models.models)

    def model_requests(self, model_id: str | None = None) -> list[models.ModelRequest]:
        """The emulator's records of Model API requests (of `model_id`, or all), oldest first
        (.id, .model, .status, .inputs, .created, .started_wall, .finished_wall, ...)."""
        if self._models is None:
            return []
        return [r for r in list(self._models.requests.values()) if model_id in (None, r.model)]

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

    # --- Comfy Cloud ----------------------------------------------------------------------------
    @property
    def cloud_url(self) -> str:
        """Comfy Cloud's base URL: `{cloud_url}/api/...`, `{cloud_url}/ws?clientId=&token=`."""
        if not self.url:
            raise RuntimeError("start the emulator first")
        return f"{self.url}{cloud.BASE}"

    def cloud_account(self, key: str | None = None, **changes: Any) -> dict[str, Any]:
        """The Comfy Cloud account of `key` (default: comfy_api_key; an unknown key gets a new account)
        after changing its `tier` ("standard", "creator", "pro"), `active` or `credits`: its user_id,
        tier, active, credits."""
        service = self._cloud
        if service is None or self._thread is None:
            raise RuntimeError("start the emulator first")
        return self._call(lambda: service.account(key or self.comfy_api_key, **changes).settings())

    def cloud_settings(self, **changes: Any) -> dict[str, Any]:
        """Comfy Cloud's settings after `changes` (cloud/): status_vocabulary ("guide", "openapi",
        "newer"), step_seconds, node_seconds, load_seconds, partner_seconds, previews, url_seconds,
        checkpoints."""
        service = self._cloud
        if service is None or self._thread is None:
            raise RuntimeError("start the emulator first")
        return self._call(lambda: service.configure(**changes))
