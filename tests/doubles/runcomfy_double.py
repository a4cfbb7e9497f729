"""An independent double of the RunComfy Serverless and Model API queues, built only from
api/serverless.md and api/model-api.md.

It shares no code with `runcomfy_nb` (client or emulator) on purpose: its replies follow the
documents, so a client and an emulator that drift from them together are still caught. A small
aiohttp app on 127.0.0.1 (a free port), run in the test's own loop: `async with RunComfyDouble(...)
as double`, then point `base_url` and `model_api_url` at `double.url`.

Queues: serverless `/prod/v1|v2/deployments/{dep}/inference`, `.../requests/{rid}/status|result|
cancel` (documented spellings: status `in_queue` → `in_progress` → `completed` | `cancelled`, result
`succeeded` | `failed` | `cancelled`; cancel 202 with `outcome`), a ComfyUI deployment's `outputs` per
node or a LoRA deployment's `output`; Model API `POST /v1/models/{model_id}` (slashes kept),
`/v1/requests/{rid}/status|result|cancel` with `output` of URL strings. Bearer token required;
errors as `{"error_code", "error_message"}`. Output files at `/files/{rid}/{name}`, without auth
(a request carrying `Authorization` is refused with 403).

A request waits `queue_seconds` (real time) in the queue (forever while `hold` is set), runs
`run_seconds`, then succeeds. ComfyUI deployments cancel queued or running requests; LoRA
deployments and the Model API only queued ones.

Hostile answers, armed per operation ("status", "result", "cancel", "submit") for the next `times`
calls (-1: all), by `hostile(operation, mode, times)`:
- `error_body`: HTTP 200 `{"error_code": "internal_error", "error_message": ...}` and no status;
- `not_json`: HTTP 200 with an HTML page;  `no_status`: HTTP 200 JSON without `status`;
- `http_429` (with `Retry-After: 0`), `http_500`: the error envelope with that status;
- `nulls`: the real answer, with every field it leaves out present as `null` (`"outputs": null`
  beside a LoRA's `"output"`, `"error": null`, `"queue_position": null`, ...);
- `hang`: never answer (until the double stops).
`vanish()` stops the server mid-run: its port is closed, every call is refused from then on.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from PIL import Image

MODES = {"error_body", "not_json", "no_status", "http_429", "http_500", "nulls", "hang"}
STATUS_FIELDS = ("request_id", "status", "queue_position", "instance_id", "status_url", "result_url")
RESULT_FIELDS = ("request_id", "status", "outputs", "output", "error", "created_at", "finished_at",
                 "instance_id")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds")


def _png(seed: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), tuple(uuid.uuid5(uuid.NAMESPACE_OID, seed).bytes[:3])).save(buffer, "PNG")
    return buffer.getvalue()


def _envelope(status: int, code: int | str, message: str) -> web.Response:
    return web.json_response({"error_code": code, "error_message": message}, status=status)


@dataclass
class Req:
    id: str
    api: str  # "comfyui", "lora" or "model"
    owner: str  # the deployment id or the model id
    created: float = field(default_factory=time.time)
    cancelled_at: float | None = None
    started: float | None = None
    instance_id: str = field(default_factory=lambda: f"i-{uuid.uuid4().hex[:6]}")


@dataclass
class Call:
    method: str
    path: str
    status: int = 0  # the HTTP status answered; 0: none (dropped, hung)


@dataclass
class Hostile:
    operation: str
    mode: str
    times: int


class RunComfyDouble:
    """Serverless deployments (`deployments`: id → "comfyui" | "lora") and any Model API model."""

    def __init__(self, *, token: str, deployments: dict[str, str] | None = None,
                 run_seconds: float = 0.3, queue_seconds: float = 0.0) -> None:
        self.token = token
        self.deployments = deployments or {"dep-comfy": "comfyui", "dep-lora": "lora"}
        self.run_seconds, self.queue_seconds = run_seconds, queue_seconds
        self.hold = False  # requests stay queued while set
        self.requests: dict[str, Req] = {}
        self.calls: list[Call] = []
        self.url = ""
        self._hostile: list[Hostile] = []
        self._runner: web.AppRunner | None = None
        self._gone = asyncio.Event()

    # -- control --
    def hostile(self, operation: str, mode: str, times: int = 1) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self._hostile.append(Hostile(operation, mode, times))

    def calm(self) -> None:
        self._hostile.clear()

    def calls_to(self, operation: str, request_id: str | None = None) -> list[Call]:
        """The calls of one operation (status, result, cancel, inference), of one request if given."""
        return [c for c in self.calls if c.path.endswith(f"/{operation}")
                and (request_id is None or f"/{request_id}/" in c.path)]

    def state(self, request_id: str) -> str:
        """in_queue, in_progress, succeeded or cancelled (the double's own view)."""
        req = self.requests[request_id]
        now = time.time()
        if req.cancelled_at is not None:
            return "cancelled"
        if req.started is None:
            if self.hold or now < req.created + self.queue_seconds:
                return "in_queue"
            req.started = now
        return "in_progress" if now < req.started + self.run_seconds else "succeeded"

    async def vanish(self) -> None:
        """Stop serving: the port closes, hanging calls end unanswered."""
        self._gone.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- life --
    async def __aenter__(self) -> RunComfyDouble:
        app = web.Application(middlewares=[self._record])
        for prefix in ("/prod/v1", "/prod/v2"):
            base = f"{prefix}/deployments/{{dep}}"
            app.router.add_post(f"{base}/inference", self._submit_deployment)
            app.router.add_get(f"{base}/requests/{{rid}}/status", self._status)
            app.router.add_get(f"{base}/requests/{{rid}}/result", self._result)
            app.router.add_post(f"{base}/requests/{{rid}}/cancel", self._cancel)
        app.router.add_post("/v1/models/{model:.+}", self._submit_model)
        app.router.add_get("/v1/requests/{rid}/status", self._status)
        app.router.add_get("/v1/requests/{rid}/result", self._result)
        app.router.add_post("/v1/requests/{rid}/cancel", self._cancel)
        app.router.add_get("/files/{rid}/{name}", self._file)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.vanish()

    # -- plumbing --
    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        call = Call(request.method, request.path)
        self.calls.append(call)
        if not request.path.startswith("/files/") and \
                request.headers.get("Authorization") != f"Bearer {self.token}":
            response: web.StreamResponse = _envelope(401, 401001, "Unauthorized")
        else:
            response = await handler(request)
        call.status = response.status
        return response

    def _take(self, operation: str) -> str | None:
        for armed in self._hostile:
            if armed.operation == operation:
                if armed.times > 0:
                    armed.times -= 1
                    if armed.times == 0:
                        self._hostile.remove(armed)
                return armed.mode
        return None

    async def _hostile_reply(self, mode: str | None, request_id: str) -> web.StreamResponse | None:
        if mode == "error_body":
            return _envelope(200, "internal_error", "Internal error while reading the request")
        if mode == "not_json":
            return web.Response(text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        if mode == "no_status":
            return web.json_response({"request_id": request_id})
        if mode == "http_429":
            response = _envelope(429, 429001, "Too many requests")
            response.headers["Retry-After"] = "0"
            return response
        if mode == "http_500":
            return _envelope(500, 500001, "Internal server error")
        if mode == "hang":
            await self._gone.wait()
            raise asyncio.CancelledError  # nothing is written
        return None

    def _urls(self, request: web.Request, req: Req) -> dict[str, str]:
        if req.api == "model":
            base = f"{request.scheme}://{request.host}/v1/requests/{req.id}"
        else:
            prefix = request.path.split("/deployments/")[0]
            base = f"{request.scheme}://{request.host}{prefix}/deployments/{req.owner}/requests/{req.id}"
        return {f"{name}_url": f"{base}/{name}" for name in ("status", "result", "cancel")}

    def _lookup(self, request: web.Request) -> Req | web.Response:
        req = self.requests.get(request.match_info["rid"])
        dep = request.match_info.get("dep")
        if req is None or (dep is not None and req.owner != dep) or (dep is None) != (req.api == "model"):
            return _envelope(404, 404001, "Request not found")
        return req

    @staticmethod
    def _with_nulls(body: dict[str, Any], fields: tuple[str, ...], nulls: bool) -> web.Response:
        if nulls:
            body = {**{name: None for name in fields}, **body}
        return web.json_response(body)

    # -- routes --
    async def _submit(self, request: web.Request, api: str, owner: str) -> web.StreamResponse:
        if reply := await self._hostile_reply(self._take("submit"), ""):
            return reply
        try:
            body = await request.json()
        except ValueError:
            return _envelope(422, 422001, "Body is not JSON")
        if api == "comfyui" and not isinstance(body.get("overrides", body.get("workflow_api_json")), dict):
            return _envelope(422, 422001, "overrides or workflow_api_json is required")
        req = Req(str(uuid.uuid4()), api, owner)
        self.requests[req.id] = req
        return web.json_response({"request_id": req.id, **self._urls(request, req)})

    async def _submit_deployment(self, request: web.Request) -> web.StreamResponse:
        dep = request.match_info["dep"]
        if dep not in self.deployments:
            return _envelope(404, 404001, "Deployment not found")
        return await self._submit(request, self.deployments[dep], dep)

    async def _submit_model(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        if "/" not in model:
            return _envelope(400, 400001, "InvalidResourceIdentifier")
        return await self._submit(request, "model", model)

    async def _status(self, request: web.Request) -> web.StreamResponse:
        mode = self._take("status")
        found = self._lookup(request)
        if isinstance(found, web.Response):
            return found
        if reply := await self._hostile_reply(mode, found.id):
            return reply
        state = self.state(found.id)
        urls = self._urls(request, found)
        body: dict[str, Any] = {"request_id": found.id,
                                "status": "completed" if state == "succeeded" else state,
                                "status_url": urls["status_url"], "result_url": urls["result_url"]}
        if state == "in_queue":
            body["queue_position"] = 0
        elif found.api != "model":
            body["instance_id"] = found.instance_id
        return self._with_nulls(body, STATUS_FIELDS, mode == "nulls")

    async def _result(self, request: web.Request) -> web.StreamResponse:
        mode = self._take("result")
        found = self._lookup(request)
        if isinstance(found, web.Response):
            return found
        if reply := await self._hostile_reply(mode, found.id):
            return reply
        state = self.state(found.id)
        body: dict[str, Any] = {"request_id": found.id, "status": state, "created_at": _iso(found.created)}
        host = f"{request.scheme}://{request.host}"
        if state == "succeeded":
            assert found.started is not None
            body["finished_at"] = _iso(found.started + self.run_seconds)
            if found.api == "comfyui":
                names = [f"ComfyUI_{n:05d}_.png" for n in (1, 2)]
                body["outputs"] = {"9": {"images": [
                    {"url": f"{host}/files/{found.id}/{name}", "filename": name, "subfolder": "",
                     "type": "output"} for name in names]}}
                body["instance_id"] = found.instance_id
            elif found.api == "lora":
                body["output"] = {"images": [f"{host}/files/{found.id}/output-{n}.png" for n in (1, 2)]}
            else:
                body["output"] = {"image": f"{host}/files/{found.id}/a.png"}
        elif state == "cancelled":
            body["finished_at"] = _iso(found.cancelled_at or time.time())
        return self._with_nulls(body, RESULT_FIELDS, mode == "nulls")

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        mode = self._take("cancel")
        found = self._lookup(request)
        if isinstance(found, web.Response):
            return found
        if reply := await self._hostile_reply(mode, found.id):
            return reply
        state = self.state(found.id)
        cancellable = state == "in_queue" or (state == "in_progress" and found.api == "comfyui")
        if cancellable:
            found.cancelled_at = time.time()
        return web.json_response({"request_id": found.id, "status": "completed",
                                  "outcome": "cancelled" if cancellable else "not_cancellable"}, status=202)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if "Authorization" in request.headers:
            return web.json_response({"message": "no credentials on output URLs"}, status=403)
        if request.match_info["rid"] not in self.requests:
            return web.json_response({"message": "Not found"}, status=404)
        return web.Response(body=_png(request.path), content_type="image/png")


__all__ = ["RunComfyDouble"]
