"""The RunComfy Serverless API (ComfyUI-style and LoRA deployments), as api/serverless.md has it.

Routes under `/prod/v1` and `/prod/v2` (bearer token): POST `/deployments/{id}/inference`, GET
`.../requests/{rid}/status`, GET `.../requests/{rid}/result`, POST `.../requests/{rid}/cancel`; the
absolute `*_url` fields echo the prefix and host the client used. Output files are served at
`/storage/output/{rid}/{filename}`, without auth, and refuse (403, recorded in `Emulator.leaks`) any
request that carries `Authorization` or `X-API-Key`.

Deployment API reads and the instance proxy, under `/prod/v2` only (bearer token):
- GET `/deployments` — a bare JSON array of deployment objects (deleted ones left out); `?ids=a&ids=b`
  filters (unknown ids are skipped); `includes=payload` adds `payload: {workflow_api_json, overrides,
  object_info_url}` (`null` for a LoRA deployment), `includes=readme` adds `readme` (markdown).
- GET `/deployments/{id}` — one deployment object, same `includes`; 404/404001 if unknown or deleted.
- GET `/deployments/{id}/object_info` — emulator route the payload's `object_info_url` names (bearer
  token, as the official MCP server sends it); with `object_info_public` the URL is
  `/storage/object_info/{id}.json` instead, served like output files (no credentials accepted).
- POST (and GET, unless `proxy_get` is false: then 405 `{"detail": "Method Not Allowed"}`)
  `/deployments/{id}/instances/{instance_id}/proxy/{path}` — the instance's ComfyUI while the instance
  is up (running a request, or idle for less than `keep_warm_duration_in_seconds` virtual seconds);
  otherwise 404 `{"error_code": 404001, "error_message": "Instance not found or no longer running"}`.
  The backend answers `free` / `api/free` (POST: 200, empty body) and `object_info[/{class}]` (GET:
  `comfyui.node_schemas` with the workflow's checkpoints), else aiohttp's plain-text 404 / 405.
  An instance that outlived its keep-warm period is gone for good: the next request gets a new one.

Faults (target: the deployment id): the request faults on submit (`drop`/`delay` after the request
was taken), status, result and cancel (`body_error` there is the transient "HTTP 200, error body, no
status" a live poll may meet), `nulls` on status and result (absent fields sent as null: STATUS_OPTIONAL,
RESULT_OPTIONAL), `job_fails`, `slow_queue`, and `truncate` on downloads.

Gating (queue calls, HTTP 200 with a body-level code, as clients have seen): a deployment with
`deleted: true` answers every queue call with 10003 DeletedDeployment; one with `is_enabled: false`
answers submits with 10002 DisabledDeployment.

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
true), `faults` (armed at start, see faults.py); the deployment object's fields `name`,
`workflow_id`, `workflow_version`, `hardware`, `min_instances` (reported only: instances start on
demand), `queue_size`,
`keep_warm_duration_in_seconds` (default 60), `status`, `is_enabled`, `created_at`, `updated_at`
(`max_instances` is `instances`), `overrides` (the payload's default overrides; default: every node's
unlinked saved values), `readme`, and the switches `deleted`, `object_info_public`, `proxy_get`.

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
import json
import math
import mimetypes
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiohttp import web

from . import comfyui, synth, validation
from . import faults as faults_
from .envelope import absolute, error, iso, origin, with_nulls
from .validation import Invalid

# The deployment object's fields (api/serverless.md) and their defaults; `max_instances` is `instances`.
DEPLOYMENT_DEFAULTS: dict[str, Any] = {
    "workflow_version": "v1", "hardware": ["AMPERE_48"], "min_instances": 0, "queue_size": 1,
    "keep_warm_duration_in_seconds": 60, "status": "standby", "is_enabled": True,
    "created_at": "2025-09-01T10:00:00Z", "updated_at": "2025-09-01T10:00:00Z",
    "deleted": False, "object_info_public": False, "proxy_get": True,
}
DEPLOYMENT_FIELDS = ("id", "name", "workflow_id", "workflow_version", "hardware", "min_instances",
                     "max_instances", "queue_size", "keep_warm_duration_in_seconds", "status", "is_enabled",
                     "created_at", "updated_at")
# What a status / result reply may leave out: the `nulls` fault sends each as null instead.
STATUS_OPTIONAL = ("queue_position", "instance_id")
RESULT_OPTIONAL = ("outputs", "output", "error", "finished_at", "instance_id")
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
    """A deployment's instances: idle ones, and the requests waiting for one, first come first served.
    An instance is up while it runs a request and for `keep_warm` virtual seconds after; a request
    that finds its instance scaled down starts a new one (with a new id)."""

    free: list[str]
    new_id: Callable[[], str] = field(default=lambda: f"i-{uuid.uuid4().hex[:6]}")
    keep_warm: float = math.inf  # virtual seconds; inf: never scales down (the Model API's workers)
    speed: float = 1.0  # virtual seconds per real second
    line: list[Request] = field(default_factory=list)
    busy: set[str] = field(default_factory=set)
    idle_since: dict[str, float] = field(default_factory=dict)  # monotonic real time

    def alive(self, instance: str) -> bool:
        """Whether the instance is up: running a request, or idle within its keep-warm period."""
        if instance in self.busy:
            return True
        since = self.idle_since.get(instance)
        return since is not None and (time.monotonic() - since) * self.speed < self.keep_warm

    def dispatch(self) -> None:
        while self.free and self.line:
            request = self.line.pop(0)
            if request.turn is not None and not request.turn.done():
                instance = self.free.pop(0)
                if instance in self.idle_since and not self.alive(instance):  # scaled down
                    del self.idle_since[instance]
                    instance = self.new_id()
                self.busy.add(instance)
                request.turn.set_result(instance)

    def release(self, instance: str) -> None:
        self.busy.discard(instance)
        self.idle_since[instance] = time.monotonic()
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
        for key, default in DEPLOYMENT_DEFAULTS.items():
            config.setdefault(key, copy.deepcopy(default))
        config.setdefault("name", config["id"])
        if config["type"] == "comfyui":
            preset = config.setdefault("preset", "image")
            if "workflow" not in config:
                if preset not in self.state.presets:
                    raise ValueError(f"deployment {config['id']}: no preset {preset!r}")
                config["workflow"] = copy.deepcopy(self.state.presets[preset])
            config.setdefault("workflow_id", str(uuid.uuid5(uuid.NAMESPACE_URL, config["id"])))
            config.setdefault("overrides", _default_overrides(config["workflow"]))
        elif config["type"] == "lora":
            config.setdefault("workflow_id", None)
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
        if float(config["keep_warm_duration_in_seconds"]) < 0:
            raise ValueError(f"deployment {config['id']}: keep_warm_duration_in_seconds must be >= 0")
        for spec in config.pop("faults", []):
            self.faults.add(faults_.Fault.from_spec(spec, config["id"]))
        old = self.deployments.get(config["id"])
        self.deployments[config["id"]] = config
        keep_warm = float(config["keep_warm_duration_in_seconds"])
        if old is None or old["instances"] != config["instances"]:
            # jobs already waiting keep the old pool; new ones use the new size
            self.pools[config["id"]] = Pool([self._new_instance() for _ in range(int(config["instances"]))],
                                            self._new_instance, keep_warm, self.state.clock.speed)
        self.pools[config["id"]].keep_warm = keep_warm

    def _new_instance(self) -> str:
        return f"i-{next(self._instance):06x}"

    def describe(self, dep: dict[str, Any], host: str, includes: set[str]) -> dict[str, Any]:
        """The deployment object of the Deployment API; `includes` may ask for "payload", "readme"."""
        values = {**dep, "max_instances": int(dep["instances"])}
        body: dict[str, Any] = {key: values[key] for key in DEPLOYMENT_FIELDS}
        if "payload" in includes:
            if dep["type"] == "lora":
                body["payload"] = None
            else:
                url = (f"{host}/storage/object_info/{dep['id']}.json" if dep["object_info_public"]
                       else f"{host}/prod/v2/deployments/{dep['id']}/object_info")
                body["payload"] = {"workflow_api_json": dep["workflow"], "overrides": dep["overrides"],
                                   "object_info_url": url}
        if "readme" in includes:
            body["readme"] = dep.get("readme") or (
                f"# {dep['name']}\n\nServerless deployment of workflow `{dep['workflow_id']}` "
                f"({dep['workflow_version']}) on {', '.join(dep['hardware'])}.\n")
        return body

    def node_schemas(self, dep: dict[str, Any]) -> dict[str, Any]:
        """`/object_info` of the deployment's ComfyUI: the stock classes, its checkpoints installed."""
        checkpoints = [node["inputs"]["ckpt_name"] for node in dep.get("workflow", {}).values()
                       if node.get("class_type") == "CheckpointLoaderSimple"
                       and isinstance(node.get("inputs", {}).get("ckpt_name"), str)]
        return comfyui.node_schemas(checkpoints, ["example.png"])

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
        def keep(outputs: dict[str, Any]) -> None:
            request.outputs = outputs

        await run_in_pool(self.pools[dep["id"]], self.state.clock, request, self.files,
                          seconds=float(dep["run_seconds"]), jitter=float(dep["jitter"]),
                          make=partial(self._make_outputs, dep, request), keep=keep,
                          error_type="execution_error")

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


def _default_overrides(workflow: dict[str, Any]) -> dict[str, Any]:
    """A payload's default overrides: every node's own (unlinked) values, as saved."""
    overrides = {}
    for node_id, node in workflow.items():
        values = {k: v for k, v in node.get("inputs", {}).items() if not isinstance(v, list)}
        if values:
            overrides[node_id] = {"inputs": values}
    return overrides


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

    def lookup(request: web.Request,
               submit: bool = False) -> tuple[dict[str, Any] | None, web.Response | None]:
        """The deployment a queue call names, or the refusal: 404, or HTTP 200 with a body-level
        10003 (deleted) or, for a submit, 10002 (disabled)."""
        dep = serverless.deployments.get(request.match_info["dep"])
        if dep is None:
            return None, error(404, 404001, "Deployment not found")
        if dep["deleted"]:
            return None, error(200, 10003, f"DeletedDeployment: deployment {dep['id']} has been deleted")
        if submit and not dep["is_enabled"]:
            return None, error(200, 10002, f"DisabledDeployment: deployment {dep['id']} is disabled")
        return dep, None

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
            dep, missing = lookup(request, submit=True)
            if missing:
                return missing
            job, refusal = await take_submit(request, faults, dep["id"], partial(serverless.create, dep))
            if refusal:
                return refusal
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
            return with_nulls(body, STATUS_OPTIONAL, bool(faults.take(dep["id"], "status", {"nulls"})))

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
            return with_nulls(body, RESULT_OPTIONAL, bool(faults.take(dep["id"], "result", {"nulls"})))

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

    # --- the Deployment API (reads) and the instance proxy: /prod/v2 only ---------------------
    def listed(request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        dep = serverless.deployments.get(request.match_info["dep"])
        if dep is None or dep["deleted"]:
            return None, error(404, 404001, "Deployment not found")
        return dep, None

    @table.get("/prod/v2/deployments")
    async def list_deployments(request: web.Request) -> web.StreamResponse:
        ids = request.query.getall("ids", [])
        includes = set(request.query.getall("includes", []))
        return web.json_response([serverless.describe(dep, origin(request), includes)
                                  for dep in serverless.deployments.values()
                                  if not dep["deleted"] and (not ids or dep["id"] in ids)])

    @table.get("/prod/v2/deployments/{dep}")
    async def get_deployment(request: web.Request) -> web.StreamResponse:
        dep, missing = listed(request)
        if missing:
            return missing
        return web.json_response(serverless.describe(dep, origin(request),
                                                     set(request.query.getall("includes", []))))

    @table.get("/prod/v2/deployments/{dep}/object_info")
    async def deployment_object_info(request: web.Request) -> web.StreamResponse:
        dep, missing = listed(request)
        if missing or dep["type"] != "comfyui":
            return missing or error(404, 404001, "Deployment has no ComfyUI workflow")
        return web.json_response(serverless.node_schemas(dep))

    @table.get("/storage/object_info/{dep}.json")
    async def public_object_info(request: web.Request) -> web.StreamResponse:
        dep = serverless.deployments.get(request.match_info["dep"])
        data = None
        if dep is not None and dep["type"] == "comfyui" and dep["object_info_public"]:
            data = json.dumps(serverless.node_schemas(dep)).encode()
        return await serve_file(request, serverless.state, data, request.match_info["dep"])

    async def proxy(request: web.Request) -> web.StreamResponse:
        dep, missing = listed(request)
        if missing:
            return missing
        if request.method == "GET" and not dep["proxy_get"]:
            return web.json_response({"detail": "Method Not Allowed"}, status=405)
        pool = serverless.pools[dep["id"]]
        if not pool.alive(request.match_info["instance"]):
            return error(404, 404001, "Instance not found or no longer running")
        route = request.match_info["path"].removeprefix("api/")
        name = "object_info" if route.startswith("object_info/") else route
        method = {"free": "POST", "object_info": "GET"}.get(name)
        if method is None:  # what the instance's ComfyUI (aiohttp) answers
            return web.Response(status=404, text="404: Not Found")
        if request.method != method:
            return web.Response(status=405, text="405: Method Not Allowed")
        if route == "free":
            return web.Response(status=200)
        schemas = serverless.node_schemas(dep)
        if route.startswith("object_info/"):
            name = route.removeprefix("object_info/")
            return web.json_response({name: schemas[name]} if name in schemas else {})
        return web.json_response(schemas)

    proxy_path = "/prod/v2/deployments/{dep}/instances/{instance}/proxy/{path:.+}"
    table.post(proxy_path)(proxy)
    table.get(proxy_path)(proxy)

    @table.get("/storage/output/{rid}/{filename}")
    async def output_file(request: web.Request) -> web.StreamResponse:
        rid, filename = request.match_info["rid"], request.match_info["filename"]
        job = serverless.requests.get(rid)
        return await serve_file(request, serverless.state, serverless.files.get((rid, filename)),
                                job.deployment if job else "*")

    return table


async def run_in_pool(
    pool: Pool, clock: Any, request: Any, files: dict[tuple[str, str], bytes], *, seconds: float,
    jitter: float, make: Callable[[], tuple[Any, dict[tuple[str, str], bytes]]],
    keep: Callable[[Any], None], error_type: str,
) -> None:
    """One queued request's life (a serverless request, a Model API request): its extra pre-queue
    wait, a turn in `pool`'s line, then `seconds` ± `jitter` of virtual run time on an instance,
    after which `make()` (off the loop) gives its outputs (handed to `keep`) and files, or its
    `fails_with` becomes an `error_type` error. A cancel while it waits leaves the line cleanly."""
    if request.extra_queue:
        await clock.sleep(request.extra_queue)
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
        await clock.sleep(seconds * synth._rng(request.id).uniform(1 - jitter, 1 + jitter))
        if request.fails_with is None:
            try:  # Pillow off the loop: other requests are answered meanwhile
                outputs, made = await asyncio.to_thread(make)
            except Exception as exc:
                request.fails_with = f"{type(exc).__name__}: {exc}"
            else:
                files.update(made)
                keep(outputs)
                request.status = "succeeded"
        if request.fails_with is not None:
            request.error = {"type": error_type, "message": request.fails_with}
            request.status = "failed"
        request.finished_wall = time.time()  # the real moment the result became available
    finally:
        pool.release(instance)


async def take_submit(request: web.Request, faults: Any, target: str,
                      create: Callable[[Any], Any]) -> tuple[Any, web.StreamResponse | None]:
    """A submit's job made by `create(body)`, or the reply that refuses it: a request fault armed for
    `target` (`drop`/`delay` act after the job was taken, as a lost reply would), a body that is not
    JSON, or one `create` finds Invalid (422 422001 with a `detail` list)."""
    fault = faults.take(target, "submit", faults_.REQUEST_FAULTS)
    if fault and fault.name not in ("drop", "delay"):
        return None, await faults_.reply(request, fault)
    try:
        body = await request.json()
    except ValueError:
        return None, error(422, 422001, "Request body is not valid JSON",
                           [{"loc": ["body"], "msg": "invalid JSON", "type": "value_error.jsondecode"}])
    try:
        job = create(body)
    except Invalid as exc:
        return None, error(422, 422001, str(exc), exc.detail())
    await faults_.reply(request, fault)
    return job, None


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
