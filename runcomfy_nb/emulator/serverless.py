"""The RunComfy Serverless API (ComfyUI-style and LoRA deployments), as api/serverless.md has it.

Routes under `/prod/v1` and `/prod/v2` (bearer token): POST `/deployments/{id}/inference`, GET
`.../requests/{rid}/status`, GET `.../requests/{rid}/result`, POST `.../requests/{rid}/cancel`; the
absolute `*_url` fields echo the prefix and host the client used. Output files are served at
`/storage/output/{rid}/{filename}`, without auth, and refuse (403, recorded in `Emulator.leaks`) any
request that carries `Authorization` or `X-API-Key`.

Default deployments (deployments.json; workflows from its "presets"):
- `dep-flux-kontext` — ComfyUI, preset "image": 4 CheckpointLoaderSimple, 5 EmptyLatentImage
  (512×512, batch_size 2), 6 CLIPTextEncode "CLIP Text Encode (Positive Prompt)", 7 CLIPTextEncode
  (negative), 31 KSampler (seed, steps, cfg, sampler_name, scheduler, denoise + links), 8 VAEDecode,
  9 SaveImage. Outputs: node 9 `images` (two PNGs) and text node `38:42` (a caption). 4 s, 1 instance.
- `dep-animate` — ComfyUI, preset "video": 4, 6, 31 (seed 7), 40 EmptyHunyuanLatentVideo, 8,
  12 VHS_VideoCombine. Output: node 12 `gifs` with one animated WebP (24 frames, 256×256). 5 s.
- `dep-lora-portrait` — LoRA: flat body (`prompt` required, `ctrl_img_1` image_uri, `width`,
  `height`, `guidance_scale`, `sample_steps`, `network_multiplier`, `neg`, `seed`, `sampler` enum,
  `num_frames`, `fps`); result `output: {"images": [url, url]}`; cancellable only while queued. 4 s.
- `dep-partner` — ComfyUI, preset "image", `needs_comfy_key`: without
  `extra_data.api_key_comfy_org` the job is accepted, then fails. 3 s.

A deployment entry: `id`, `type` ("comfyui" | "lora"), `preset` or `workflow` (comfyui), `schema`
(lora), `run_seconds` (virtual, default 4), `jitter` (run time × uniform(1-j, 1+j), default 0),
`queue_seconds` (extra pre-start wait per job), `instances` (workers, default 1), `status_style`
("documented" | "live"), `needs_comfy_key`, `caption` (comfyui: add the `38:42` text output; default
true), `faults` (armed at start, see faults.py).

Status styles: "documented" — status says `completed` for success or failure and `cancelled`; cancel
answers 202 `{"request_id", "status": "completed", "outcome": "cancelled" | "not_cancellable"}`.
"live" — status says `succeeded` / `failed` / `canceled`; cancel answers 202 `{"request_id",
"status": "cancellation_requested"}` (status reads `cancellation_requested` until the job is
`canceled` 0.5 virtual s later) or `{"request_id", "status": "not_cancellable"}`.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import mimetypes
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import faults as faults_
from . import synth, validation
from .envelope import absolute, error, iso, origin
from .validation import Invalid

CANCEL_SETTLE_SECONDS = 0.5  # "live" style: cancellation_requested → canceled, virtual seconds
NEEDS_KEY = ("Partner node 'OpenAIImageNode' needs a Comfy API key: send extra_data.api_key_comfy_org "
             "(a key from platform.comfy.org)")
DEFAULT_FAILURE = "CUDA out of memory. Tried to allocate 2.00 GiB"


@dataclass
class Request:
    """One emulated serverless request. `status` is the emulator's own: in_queue, in_progress,
    succeeded, failed or cancelled (the API's spellings are made from it). Times are wall-clock
    epochs (`created`, `started_wall`, `finished_wall`)."""

    id: str
    deployment: str
    body: dict[str, Any]
    workflow: dict[str, Any] | None  # what a ComfyUI deployment runs; None for LoRA
    inputs: dict[str, Any] | None = None  # a LoRA request's inputs, schema defaults filled in
    status: str = "in_queue"
    created: float = field(default_factory=time.time)
    started_wall: float | None = None
    finished_wall: float | None = None
    instance_id: str | None = None
    fails_with: str | None = None
    extra_queue: float = 0.0
    cancel_pending: bool = False
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    turn: asyncio.Future[str] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


@dataclass
class Pool:
    """A deployment's instances: idle ones, and the requests waiting for one, first come first served."""

    free: list[str]
    line: list[Request] = field(default_factory=list)

    def dispatch(self) -> None:
        while self.free and self.line:
            request = self.line.pop(0)
            if request.turn is not None and not request.turn.done():
                request.turn.set_result(self.free.pop(0))

    def release(self, instance: str) -> None:
        self.free.append(instance)
        self.dispatch()


class Serverless:
    """Deployments, their requests and the files they produced."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.deployments: dict[str, dict[str, Any]] = {}
        self.pools: dict[str, Pool] = {}
        self.requests: dict[str, Request] = {}
        self.files: dict[tuple[str, str], bytes] = {}
        self._instance = itertools.count(0x3F9A1C)

    @property
    def faults(self) -> faults_.Faults:
        return self.state.faults

    def add(self, config: dict[str, Any]) -> None:
        """Add (or replace) a deployment from its config entry; ValueError if the entry is unusable."""
        config = copy.deepcopy(config)
        if not isinstance(config.get("id"), str) or not config["id"]:
            raise ValueError("a deployment needs an \"id\"")
        config.setdefault("type", "comfyui")
        config.setdefault("instances", 1)
        config.setdefault("run_seconds", 4.0)
        config.setdefault("jitter", 0.0)
        config.setdefault("queue_seconds", 0.0)
        config.setdefault("status_style", "documented")
        if config["type"] == "comfyui":
            preset = config.setdefault("preset", "image")
            if "workflow" not in config:
                if preset not in self.state.presets:
                    raise ValueError(f"deployment {config['id']}: no preset {preset!r}")
                config["workflow"] = copy.deepcopy(self.state.presets[preset])
        elif config["type"] == "lora":
            schema = config.setdefault("schema", {"properties": {"prompt": {"type": "string"}}})
            for name, spec in schema.get("properties", {}).items():
                if spec.get("type", "string") not in validation.JSON_TYPES:
                    raise ValueError(f"deployment {config['id']}: {name} has an unknown type")
        else:
            raise ValueError(f"deployment {config['id']}: type must be \"comfyui\" or \"lora\"")
        if config["status_style"] not in ("documented", "live"):
            raise ValueError(f"deployment {config['id']}: status_style is \"documented\" or \"live\"")
        if int(config["instances"]) < 1:
            raise ValueError(f"deployment {config['id']}: instances must be at least 1")
        for spec in config.pop("faults", []):
            self.faults.add(faults_.Fault.from_spec(spec, config["id"]))
        old = self.deployments.get(config["id"])
        self.deployments[config["id"]] = config
        if old is None or old["instances"] != config["instances"]:
            # jobs already waiting keep the old pool; new ones use the new size
            self.pools[config["id"]] = Pool([f"i-{next(self._instance):06x}"
                                             for _ in range(int(config["instances"]))])

    # --- lifecycle -------------------------------------------------------------------------
    def create(self, dep: dict[str, Any], body: dict[str, Any]) -> Request:
        """Validate the body (Invalid: a 422) and queue the request."""
        if dep["type"] == "lora":
            request = Request(str(uuid.uuid4()), dep["id"], body, None,
                              inputs=validation.schema_inputs(dep["schema"], body))
        else:
            request = Request(str(uuid.uuid4()), dep["id"], body,
                              validation.comfyui_workflow(dep["workflow"], body))
        failing = self.faults.take(dep["id"], "submit", {"job_fails"})
        if failing:
            request.fails_with = str(failing.params.get("message", DEFAULT_FAILURE))
        elif dep.get("needs_comfy_key") and not (body.get("extra_data") or {}).get("api_key_comfy_org"):
            request.fails_with = NEEDS_KEY
        slow = self.faults.take(dep["id"], "submit", {"slow_queue"})
        request.extra_queue = float(dep["queue_seconds"]) + (
            float(slow.params.get("seconds", 30)) if slow else 0.0)
        self.requests[request.id] = request
        request.task = asyncio.get_running_loop().create_task(self._run(dep, request))
        return request

    async def _run(self, dep: dict[str, Any], request: Request) -> None:
        clock = self.state.clock
        if request.extra_queue:
            await clock.sleep(request.extra_queue)
        pool = self.pools[dep["id"]]
        request.turn = asyncio.get_running_loop().create_future()
        pool.line.append(request)
        pool.dispatch()
        try:
            instance = await request.turn
        except asyncio.CancelledError:
            if request in pool.line:
                pool.line.remove(request)
            if request.turn.done() and not request.turn.cancelled():
                pool.release(request.turn.result())
            raise
        try:
            request.status, request.instance_id = "in_progress", instance
            request.started_wall = time.time()
            jitter = float(dep["jitter"])
            await clock.sleep(float(dep["run_seconds"]) * synth._rng(request.id).uniform(1 - jitter,
                                                                                      1 + jitter))
            if request.fails_with is None:
                try:  # Pillow off the loop: other requests are answered meanwhile
                    outputs, files = await asyncio.to_thread(self._make_outputs, dep, request)
                except Exception as exc:
                    request.fails_with = f"{type(exc).__name__}: {exc}"
                else:
                    self.files.update(files)
                    request.outputs, request.status = outputs, "succeeded"
            if request.fails_with is not None:
                request.error = {"type": "execution_error", "message": request.fails_with}
                request.status = "failed"
            request.finished_wall = time.time()  # the real moment the result became available
        finally:
            pool.release(instance)

    def queue_position(self, request: Request) -> int:
        """0 = next to start. Requests still in their extra pre-queue wait come after the line."""
        pool = self.pools[request.deployment]
        if request.turn is not None and request.turn.done():
            return 0  # an instance is assigned; it starts on the loop's next turn
        if request in pool.line:
            return pool.line.index(request)
        waiting = [r for r in self.requests.values() if r.deployment == request.deployment
                   and r.status == "in_queue" and not r.cancel_pending and r.turn is None]
        return len(pool.line) + (waiting.index(request) if request in waiting else 0)

    def cancel(self, dep: dict[str, Any], request: Request) -> bool:
        """Whether the cancel is accepted: ComfyUI deployments cancel queued or running requests,
        LoRA deployments queued ones only."""
        if request.cancel_pending:
            return True
        cancellable = request.status == "in_queue" or (
            request.status == "in_progress" and dep["type"] == "comfyui")
        if not cancellable:
            return False
        if request.task is not None:
            request.task.cancel()
        if dep["status_style"] != "live":
            request.status, request.finished_wall = "cancelled", time.time()
            return True
        request.cancel_pending = True

        async def settle() -> None:
            await self.state.clock.sleep(CANCEL_SETTLE_SECONDS)
            request.status, request.cancel_pending = "cancelled", False
            request.finished_wall = time.time()

        asyncio.get_running_loop().create_task(settle())
        return True

    # --- media (runs in a worker thread) ---------------------------------------------------
    def _make_outputs(self, dep: dict[str, Any],
                      request: Request) -> tuple[dict[str, Any], dict[tuple[str, str], bytes]]:
        files: dict[tuple[str, str], bytes] = {}

        def store(filename: str, data: bytes) -> str:
            files[(request.id, filename)] = data
            return f"{{origin}}/storage/output/{request.id}/{filename}"

        def item(filename: str, data: bytes, **extra: Any) -> dict[str, Any]:
            return {"url": store(filename, data), "filename": filename, "subfolder": "", "type": "output",
                    **extra}

        if dep["type"] == "lora":
            inputs = request.inputs or {}
            seed = inputs.get("seed", 0)
            urls = [store(f"output-{n + 1}.png",
                          synth.image(seed, str(inputs.get("prompt", "")), inputs.get("width", 512),
                                      inputs.get("height", 512), n))
                    for n in range(2)]
            return {"images": urls}, files
        params = synth.workflow_params(request.workflow or {})
        if dep.get("preset") == "video":
            data = synth.animation(params["seed"], params["prompt"])
            video = item("ComfyUI_00001_.webp", data, format="image/webp", frame_rate=12)
            return {params["save_node"]: {"gifs": [video]}}, files
        images = [item(f"ComfyUI_{n + 1:05d}_.png", synth.image(params["seed"], params["prompt"],
                                                                params["width"], params["height"], n))
                  for n in range(params["batch"])]
        outputs: dict[str, Any] = {params["save_node"]: {"images": images}}
        if dep.get("caption", True):
            outputs["38:42"] = {"text": [[f"a caption of: {params['prompt'][:60]}"]]}
        return outputs, files


# --- routes ------------------------------------------------------------------------------------

KEY = web.AppKey("serverless", Serverless)


def register(app: web.Application, state: Any) -> None:
    """Mount the serverless API: the config's deployments, its routes, bearer auth on `/prod/v1|v2`."""
    serverless = Serverless(state)
    for entry in state.config.get("deployments", []):
        serverless.add(entry)
    app[KEY] = serverless
    state.bearer_prefixes.extend(["/prod/v1/", "/prod/v2/"])
    app.add_routes(routes(serverless))


def _urls(request: web.Request, prefix: str, dep_id: str, rid: str) -> dict[str, str]:
    base = f"{origin(request)}/prod/{prefix}/deployments/{dep_id}/requests/{rid}"
    return {"status_url": f"{base}/status", "result_url": f"{base}/result", "cancel_url": f"{base}/cancel"}


def _status_word(dep: dict[str, Any], job: Request) -> str:
    live = dep["status_style"] == "live"
    if job.cancel_pending:
        return "cancellation_requested"
    if job.status in ("succeeded", "failed"):
        return job.status if live else "completed"
    if job.status == "cancelled" and live:
        return "canceled"
    return job.status


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
        if reply := await faults_.reply(request, faults.take(dep["id"], operation,
                                                              faults_.REQUEST_FAULTS)):
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
            fault = faults.take(dep["id"], "submit", faults_.REQUEST_FAULTS)
            if fault and fault.name not in ("drop", "delay"):
                return await faults_.reply(request, fault)  # type: ignore[return-value]
            try:
                body = await request.json()
            except ValueError:
                return error(422, 422001, "Request body is not valid JSON",
                             [{"loc": ["body"], "msg": "invalid JSON", "type": "value_error.jsondecode"}])
            try:
                job = serverless.create(dep, body)
            except Invalid as exc:
                return error(422, 422001, str(exc), exc.detail())
            await faults_.reply(request, fault)  # drop / delay happen after the job was taken
            return web.json_response({"request_id": job.id, **_urls(request, prefix, dep["id"], job.id)})

        @table.get(f"{base}/requests/{{rid}}/status")
        async def status(request: web.Request, prefix: str = prefix) -> web.StreamResponse:
            dep, job, refusal = await target(request, "status")
            if refusal:
                return refusal
            body: dict[str, Any] = {"request_id": job.id, "status": _status_word(dep, job),
                                    **_urls(request, prefix, dep["id"], job.id)}
            del body["cancel_url"]
            if job.status == "in_queue" and not job.cancel_pending:
                body["queue_position"] = serverless.queue_position(job)
            if job.instance_id:
                body["instance_id"] = job.instance_id
            return web.json_response(body)

        @table.get(f"{base}/requests/{{rid}}/result")
        async def result(request: web.Request) -> web.StreamResponse:
            dep, job, refusal = await target(request, "result")
            if refusal:
                return refusal
            state = "canceled" if job.status == "cancelled" and dep["status_style"] == "live" else job.status
            body: dict[str, Any] = {"request_id": job.id, "status": state, "created_at": iso(job.created)}
            if job.done and job.finished_wall is not None:
                body["finished_at"] = iso(job.finished_wall)
            if job.status == "succeeded":
                key = "output" if dep["type"] == "lora" else "outputs"
                body[key] = absolute(job.outputs, origin(request))
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
        rid, filename = request.match_info["rid"], request.match_info["filename"]
        job = serverless.requests.get(rid)
        return await serve_file(request, serverless.state, serverless.files.get((rid, filename)),
                                job.deployment if job else "*")

    return table


async def serve_file(request: web.Request, state: Any, data: bytes | None, target: str) -> web.StreamResponse:
    """An output file as public storage serves it, without auth: a request carrying credentials is
    refused (403, recorded in `state.leaks`); a `truncate` fault armed for `target` sends the full
    Content-Length, half the bytes, then closes the connection."""
    if "Authorization" in request.headers or "X-API-Key" in request.headers:
        state.leaks.append(request.path)
        return web.json_response({"message": "Credentials must not be sent to output URLs"}, status=403)
    if data is None:
        return web.json_response({"message": "Not found"}, status=404)
    filename = request.match_info.get("filename", request.path)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if filename.endswith(".webp"):
        content_type = "image/webp"  # not in every platform's mimetypes table
    if state.faults.take(target, "download", {"truncate"}):
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        faults_.drop(request)
    return web.Response(body=data, content_type=content_type)
