"""The RunComfy Serverless API (ComfyUI-style and LoRA deployments), as api/serverless.md has it.

Routes under `/prod/v1` and `/prod/v2`: POST `/deployments/{id}/inference`, GET
`.../requests/{rid}/status`, GET `.../requests/{rid}/result`, POST `.../requests/{rid}/cancel`;
output files at `/storage/output/{rid}/{filename}` (which refuse requests carrying credentials).

Default deployments (deployments.json): `dep-flux-kontext` (images: node 6 positive prompt, 31
KSampler, 5 EmptyLatentImage with batch 2, 9 SaveImage, plus text node 38:42; one instance),
`dep-animate` (an animated WebP under `gifs` of node 12), `dep-lora-portrait` (a LoRA schema,
`output.images`), `dep-partner` (fails unless `extra_data.api_key_comfy_org` is sent).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from . import synth
from .faults import Fault, Faults

REQUEST_FAULTS = {"rate_limit", "server_error", "http_error", "body_error", "drop", "delay"}
JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds")


def error(status: int, code: int, message: str, detail: Any = None) -> web.Response:
    body: dict[str, Any] = {"error_code": code, "error_message": message}
    if detail is not None:
        body["detail"] = detail
    return web.json_response(body, status=status)


class Invalid(Exception):
    def __init__(self, message: str, loc: list[str]) -> None:
        super().__init__(message)
        self.loc = loc


@dataclass
class Request:
    """One emulated serverless request."""

    id: str
    deployment: str
    body: dict[str, Any]
    workflow: dict[str, Any] | None
    status: str = "in_queue"  # in_queue | in_progress | succeeded | failed | cancelled
    created: float = field(default_factory=time.time)
    finished_wall: float | None = None
    instance_id: str | None = None
    fails_with: str | None = None
    extra_queue: float = 0.0
    cancel_pending: bool = False
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Serverless:
    """Deployments, their requests and the files they produced."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.deployments: dict[str, dict[str, Any]] = {}
        self.slots: dict[str, asyncio.Semaphore] = {}
        self.requests: dict[str, Request] = {}
        self.files: dict[tuple[str, str], bytes] = {}
        self._instance = itertools.count(0x3F9A1C)

    @property
    def faults(self) -> Faults:
        return self.state.faults

    def add(self, config: dict[str, Any]) -> None:
        config = copy.deepcopy(config)
        config.setdefault("type", "comfyui")
        config.setdefault("instances", 1)
        config.setdefault("run_seconds", 4.0)
        config.setdefault("jitter", 0.0)
        config.setdefault("queue_seconds", 0.0)
        config.setdefault("status_style", "documented")
        if config["type"] == "comfyui":
            preset = config.setdefault("preset", "image")
            config.setdefault("workflow", copy.deepcopy(self.state.presets[preset]))
        for fault in config.pop("faults", []):
            self.faults.add(Fault(deployment=config["id"], **fault))
        self.deployments[config["id"]] = config
        self.slots.pop(config["id"], None)

    # --- validation ------------------------------------------------------------------------
    def validate(self, dep: dict[str, Any], body: Any) -> dict[str, Any] | None:
        """The workflow the request runs (None for LoRA), or raise Invalid."""
        if not isinstance(body, dict):
            raise Invalid("Request body must be a JSON object", ["body"])
        if dep["type"] == "lora":
            self._check_schema(dep["schema"], body)
            return None
        has_workflow, has_overrides = "workflow_api_json" in body, "overrides" in body
        if has_workflow and has_overrides:
            raise Invalid("Send workflow_api_json alone: omit overrides", ["body", "overrides"])
        if has_workflow:
            workflow = body["workflow_api_json"]
            if isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list) and "links" in workflow:
                raise Invalid("workflow_api_json is in UI format (nodes/links); export the API format",
                              ["body", "workflow_api_json"])
            if not isinstance(workflow, dict) or not workflow or not all(
                    isinstance(n, dict) and "class_type" in n for n in workflow.values()):
                raise Invalid("workflow_api_json must be an API-format workflow",
                              ["body", "workflow_api_json"])
            return copy.deepcopy(workflow)
        if not has_overrides:
            raise Invalid("Field required: overrides (or workflow_api_json)", ["body", "overrides"])
        overrides = body["overrides"]
        if not isinstance(overrides, dict):
            raise Invalid("overrides must be an object keyed by node id", ["body", "overrides"])
        workflow = copy.deepcopy(dep["workflow"])
        for node_id, patch in overrides.items():
            loc = ["body", "overrides", node_id]
            if node_id not in workflow:
                raise Invalid(f"Node {node_id} is not in the deployment's workflow", loc)
            if not isinstance(patch, dict) or not isinstance(patch.get("inputs"), dict):
                raise Invalid("Each override must be {\"inputs\": {...}}", [*loc, "inputs"])
            inputs = workflow[node_id]["inputs"]
            for name, value in patch["inputs"].items():
                if name not in inputs:
                    raise Invalid(f"Node {node_id} ({workflow[node_id]['class_type']}) has no input "
                                  f"'{name}'", [*loc, "inputs", name])
                if not _same_type(inputs[name], value):
                    raise Invalid(f"Input '{name}' of node {node_id} expects "
                                  f"{type(inputs[name]).__name__}, got {type(value).__name__}",
                                  [*loc, "inputs", name])
                inputs[name] = value
        return workflow

    def _check_schema(self, schema: dict[str, Any], body: dict[str, Any]) -> None:
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in body:
                raise Invalid(f"Field required: {name}", ["body", name])
        for name, value in body.items():
            spec = properties.get(name)
            if spec is None:
                raise Invalid(f"Unknown field '{name}'", ["body", name])
            kind = JSON_TYPES[spec.get("type", "string")]
            if not isinstance(value, kind) or (isinstance(value, bool) and spec.get("type") != "boolean"):
                raise Invalid(f"'{name}' must be of type {spec.get('type')}", ["body", name])
            if "enum" in spec and value not in spec["enum"]:
                raise Invalid(f"'{name}' must be one of {spec['enum']}", ["body", name])
            low, high = spec.get("minimum"), spec.get("maximum")
            if (low is not None and value < low) or (high is not None and value > high):
                raise Invalid(f"'{name}' must be between {spec.get('minimum')} and {spec.get('maximum')}",
                              ["body", name])
            if spec.get("format") == "image_uri" and not str(value).startswith("https://"):
                raise Invalid(f"'{name}' must be a public https URL", ["body", name])

    # --- lifecycle -------------------------------------------------------------------------
    def create(self, dep: dict[str, Any], body: dict[str, Any], workflow: dict[str, Any] | None) -> Request:
        request = Request(id=str(uuid.uuid4()), deployment=dep["id"], body=body, workflow=workflow)
        failing = self.faults.take(dep["id"], "submit", {"job_fails"})
        if failing:
            request.fails_with = failing.params.get(
                "message", "CUDA out of memory. Tried to allocate 2.00 GiB")
        elif dep.get("needs_comfy_key") and not (body.get("extra_data") or {}).get("api_key_comfy_org"):
            request.fails_with = ("Partner node 'OpenAIImageNode' needs a Comfy API key: send "
                                  "extra_data.api_key_comfy_org")
        slow = self.faults.take(dep["id"], "submit", {"slow_queue"})
        request.extra_queue = dep["queue_seconds"] + (float(slow.params.get("seconds", 30)) if slow else 0)
        self.requests[request.id] = request
        request.task = asyncio.get_running_loop().create_task(self._run(dep, request))
        return request

    async def _run(self, dep: dict[str, Any], request: Request) -> None:
        clock = self.state.clock
        if request.extra_queue:
            await clock.sleep(request.extra_queue)
        slots = self.slots.setdefault(dep["id"], asyncio.Semaphore(dep["instances"]))
        async with slots:
            request.status = "in_progress"
            request.instance_id = f"i-{next(self._instance):06x}"
            rng = synth._rng(request.id)
            jitter = dep["jitter"]
            await clock.sleep(dep["run_seconds"] * rng.uniform(1 - jitter, 1 + jitter))
            if request.fails_with:
                request.error = {"type": "execution_error", "message": request.fails_with}
                request.status = "failed"
            else:
                request.outputs = self._make_outputs(dep, request)
                request.status = "succeeded"
            request.finished_wall = time.time()

    def queue_position(self, request: Request) -> int:
        waiting = [r for r in self.requests.values()
                   if r.deployment == request.deployment and r.status == "in_queue"]
        return sorted(waiting, key=lambda r: r.created).index(request)

    def cancel(self, dep: dict[str, Any], request: Request) -> bool:
        cancellable = request.status == "in_queue" or (
            request.status == "in_progress" and dep["type"] == "comfyui")
        if not cancellable:
            return False
        if request.task:
            request.task.cancel()
        if dep["status_style"] == "live":
            request.cancel_pending = True

            async def settle() -> None:
                await self.state.clock.sleep(0.5)
                request.status, request.cancel_pending = "cancelled", False
                request.finished_wall = time.time()

            asyncio.get_running_loop().create_task(settle())
        else:
            request.status = "cancelled"
            request.finished_wall = time.time()
        return True

    # --- media -----------------------------------------------------------------------------
    def _make_outputs(self, dep: dict[str, Any], request: Request) -> dict[str, Any]:
        if dep["type"] == "lora":
            body = request.body
            names = []
            for index in range(2):
                data = synth.image(body.get("seed", 0), body.get("prompt", ""), body.get("width", 512),
                                   body.get("height", 512), index)
                names.append(self._store(request, f"output-{index + 1}.png", data))
            return {"images": names}
        params = _read_workflow(request.workflow or {})
        if dep.get("preset") == "video":
            data = synth.animation(params["seed"], params["prompt"])
            return {params["save_node"]: {"gifs": [self._item(request, "ComfyUI_00001_.webp", data)]}}
        images = [self._item(request, f"ComfyUI_{n + 1:05d}_.png",
                             synth.image(params["seed"], params["prompt"], params["width"],
                                         params["height"], n))
                  for n in range(params["batch"])]
        outputs: dict[str, Any] = {params["save_node"]: {"images": images}}
        if dep.get("caption", True):
            outputs["38:42"] = {"text": [[f"a caption of: {params['prompt'][:60]}"]]}
        return outputs

    def _store(self, request: Request, filename: str, data: bytes) -> str:
        self.files[(request.id, filename)] = data
        return f"{{origin}}/storage/output/{request.id}/{filename}"

    def _item(self, request: Request, filename: str, data: bytes) -> dict[str, Any]:
        return {"url": self._store(request, filename, data), "filename": filename,
                "subfolder": "", "type": "output"}


def _same_type(saved: Any, value: Any) -> bool:
    if isinstance(saved, list):  # a link: replacing it with a value is allowed
        return True
    if isinstance(saved, bool) or isinstance(value, bool):
        return isinstance(saved, bool) and isinstance(value, bool)
    if isinstance(saved, (int, float)):
        return isinstance(value, (int, float))
    return isinstance(value, type(saved))


def _read_workflow(workflow: dict[str, Any]) -> dict[str, Any]:
    """Seed, prompt, size, batch and the save node of an API-format workflow."""
    params: dict[str, Any] = {"seed": 0, "prompt": "", "width": 512, "height": 512, "batch": 1,
                              "save_node": "9"}
    prompts = {}
    for node_id, node in workflow.items():
        inputs, kind = node.get("inputs", {}), node.get("class_type", "")
        if "KSampler" in kind:
            seed = inputs.get("seed", inputs.get("noise_seed", 0))
            params["seed"] = seed if isinstance(seed, int) else 0
            positive = inputs.get("positive")
            params["positive"] = positive[0] if isinstance(positive, list) else None
        elif kind == "CLIPTextEncode" and isinstance(inputs.get("text"), str):
            prompts[node_id] = inputs["text"]
        elif kind.startswith("EmptyLatentImage") or kind == "EmptySD3LatentImage":
            params["width"], params["height"] = inputs.get("width", 512), inputs.get("height", 512)
            params["batch"] = max(1, min(int(inputs.get("batch_size", 1)), 4))
        elif kind.startswith("Save") or kind.startswith("VHS_VideoCombine"):
            params["save_node"] = node_id
    params["prompt"] = prompts.get(params.pop("positive", None) or "", next(iter(prompts.values()), ""))
    return params


# --- routes ------------------------------------------------------------------------------------


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _urls(request: web.Request, prefix: str, dep_id: str, rid: str) -> dict[str, str]:
    base = f"{_origin(request)}/prod/{prefix}/deployments/{dep_id}/requests/{rid}"
    return {"status_url": f"{base}/status", "result_url": f"{base}/result", "cancel_url": f"{base}/cancel"}


def _fill(value: Any, origin: str) -> Any:
    if isinstance(value, str):
        return value.replace("{origin}", origin)
    if isinstance(value, list):
        return [_fill(v, origin) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, origin) for k, v in value.items()}
    return value


async def _request_fault(request: web.Request, fault: Fault | None) -> web.StreamResponse | None:
    if fault is None:
        return None
    params = fault.params
    if fault.name == "rate_limit":
        response = error(429, 429001, "Too many requests")
        response.headers["Retry-After"] = str(params.get("retry_after", 1))
        return response
    if fault.name == "server_error":
        return error(500, 500001, "Internal server error")
    if fault.name == "http_error":
        return error(int(params.get("status", 500)), int(params.get("error_code", 500001)),
                     params.get("message", "Error"))
    if fault.name == "body_error":
        return web.json_response({"error_code": int(params.get("error_code", 10001)),
                                  "error_message": params.get(
                                      "message", "InsufficientFunds: deployment disabled by balance")})
    if fault.name == "drop":
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError
    if fault.name == "delay":
        await asyncio.sleep(float(params.get("seconds", 1)))
    return None


def routes(serverless: Serverless) -> web.RouteTableDef:
    table = web.RouteTableDef()
    faults = serverless.faults

    def lookup(request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        dep = serverless.deployments.get(request.match_info["dep"])
        return (dep, None) if dep else (None, error(404, 404001, "Deployment not found"))

    async def target(request: web.Request, operation: str) -> tuple[Any, Any, web.StreamResponse | None]:
        """The deployment and request a call names, or the error (or fault) to answer with."""
        dep, missing = lookup(request)
        if missing:
            return None, None, missing
        if (reply := await _request_fault(request, faults.take(dep["id"], operation, REQUEST_FAULTS))):
            return None, None, reply
        job = serverless.requests.get(request.match_info["rid"])
        if job is None or job.deployment != dep["id"]:
            return None, None, error(404, 404001, "Request not found")
        return dep, job, None

    for prefix in ("v1", "v2"):
        base = f"/prod/{prefix}/deployments/{{dep}}"

        @table.post(f"{base}/inference")
        async def submit(request: web.Request, prefix: str = prefix) -> web.StreamResponse:
            dep, missing = lookup(request)
            if missing:
                return missing
            fault = faults.take(dep["id"], "submit", REQUEST_FAULTS)
            if fault and fault.name not in ("drop", "delay"):
                return await _request_fault(request, fault)  # type: ignore[return-value]
            try:
                body = await request.json()
            except ValueError:
                return error(422, 422001, "Request body is not valid JSON",
                             [{"loc": ["body"], "msg": "invalid JSON"}])
            try:
                workflow = serverless.validate(dep, body)
            except Invalid as exc:
                return error(422, 422001, str(exc),
                             [{"loc": exc.loc, "msg": str(exc), "type": "value_error"}])
            job = serverless.create(dep, body, workflow)
            await _request_fault(request, fault)  # drop / delay happen after the job was taken
            return web.json_response({"request_id": job.id, **_urls(request, prefix, dep["id"], job.id)})

        @table.get(f"{base}/requests/{{rid}}/status")
        async def status(request: web.Request, prefix: str = prefix) -> web.StreamResponse:
            dep, job, refusal = await target(request, "status")
            if refusal:
                return refusal
            live = dep["status_style"] == "live"
            state = job.status
            if job.cancel_pending:
                state = "cancellation_requested" if live else "in_progress"
            elif state in ("succeeded", "failed"):
                state = state if live else "completed"
            elif state == "cancelled" and live:
                state = "canceled"
            body: dict[str, Any] = {"request_id": job.id, "status": state,
                                    **_urls(request, prefix, dep["id"], job.id)}
            body.pop("cancel_url")
            if job.status == "in_queue":
                body["queue_position"] = serverless.queue_position(job)
            if job.instance_id:
                body["instance_id"] = job.instance_id
            return web.json_response(body)

        @table.get(f"{base}/requests/{{rid}}/result")
        async def result(request: web.Request) -> web.StreamResponse:
            dep, job, refusal = await target(request, "result")
            if refusal:
                return refusal
            state = job.status
            if state == "cancelled" and dep["status_style"] == "live":
                state = "canceled"
            body: dict[str, Any] = {"request_id": job.id, "status": state, "created_at": iso(job.created)}
            if job.finished_wall is not None:
                body["finished_at"] = iso(job.finished_wall)
            if job.status == "succeeded":
                key = "output" if dep["type"] == "lora" else "outputs"
                body[key] = _fill(job.outputs, _origin(request))
                if job.instance_id and dep["type"] != "lora":
                    body["instance_id"] = job.instance_id
            elif job.status == "failed":
                body["error"] = job.error
            return web.json_response(body)

        @table.post(f"{base}/requests/{{rid}}/cancel")
        async def cancel(request: web.Request) -> web.StreamResponse:
            dep, job, refusal = await target(request, "cancel")
            if refusal:
                return refusal
            accepted = serverless.cancel(dep, job)
            if dep["status_style"] == "live":
                state = "cancellation_requested" if accepted else "not_cancellable"
                return web.json_response({"request_id": job.id, "status": state}, status=202)
            return web.json_response({"request_id": job.id, "status": "completed",
                                      "outcome": "cancelled" if accepted else "not_cancellable"}, status=202)

    @table.get("/storage/output/{rid}/{filename}")
    async def output_file(request: web.Request) -> web.StreamResponse:
        if "Authorization" in request.headers or "X-API-Key" in request.headers:
            serverless.state.leaks.append(request.path)
            return web.json_response({"message": "Credentials must not be sent to output URLs"}, status=403)
        data = serverless.files.get((request.match_info["rid"], request.match_info["filename"]))
        if data is None:
            return web.json_response({"message": "Not found"}, status=404)
        job = serverless.requests.get(request.match_info["rid"])
        content_type = "image/webp" if request.match_info["filename"].endswith(".webp") else "image/png"
        if faults.take(job.deployment if job else "*", "download", {"truncate"}):
            response = web.StreamResponse(headers={"Content-Type": content_type})
            response.content_length = len(data)
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        return web.Response(body=data, content_type=content_type)

    return table
