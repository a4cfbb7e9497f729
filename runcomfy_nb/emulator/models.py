"""The RunComfy Model API (hosted catalog models), as api/model-api.md has it.

Routes under `/v1` (bearer token): POST `/models/{model_id}` (the id keeps its slashes) submits; GET
`/requests/{rid}/status`, GET `/requests/{rid}/result`, POST `/requests/{rid}/cancel`; and the
catalog the official CLI uses: GET `/models?search=&category=&kind=&include_schema=&limit=&offset=`
(`{"models": [...], "total": n}`), GET `/models/categories`, GET `/models/{model_id}` (one entry with
its schemas). Status reads `in_queue` (with `queue_position`) → `in_progress` → `completed` (success
or failure: fetch the result) or `cancelled`; the result says `succeeded` (with `output`), `failed`
(with `error: {"type", "message"}`), `in_queue`, `in_progress` or `cancelled`, plus `created_at`
and, once done, `finished_at`. Cancel answers 202 `{"request_id", "status": "completed", "outcome":
"cancelled" | "not_cancellable"}`: only a queued request is cancellable. Output files are served at
`/storage/models/{rid}/{filename}` without auth and refuse any request carrying credentials (403,
recorded in `Emulator.leaks`).

Errors: unknown model 404 `400001` (a model id without `/`: 400 `400001`), unknown request 404
`404001`, a body its schema refuses 422 `422001` with a `detail` list; no token 401 (app.py).

Models (deployments.json "models"): `model_id`, `display_name`, `categories`, `kind`,
`base_price_usd`, `price_unit`, `description`, `schema` (the input schema: `required`,
`properties` as validation.py reads them; `*_url(s)` fields must be https URLs), `output` (the
output's shape: "image" or "video" is one URL string; a list is a list of URLs, one per element, or
`count_input`'s value many of its first element; an object maps keys to shapes), `run_seconds`
(virtual, default 4), `jitter`, `queue_seconds`, `instances` (default 1), `faults`. The packaged
ones: `blackforestlabs/flux-1-kontext/pro/edit` (one PNG URL string),
`blackforestlabs/flux-1/dev/text-to-image` (a list of `num_images` PNGs),
`wan-ai/wan-2-2/image-to-video` (`{"video": url}`, an animated WebP) and
`runcomfy/storyboard/images-to-video` (`{"image": url, "videos": [url, url]}`).

Faults (target: the model id; "catalog" for the list and categories): the request faults on submit
(`drop`/`delay` after the request was taken), status, result and cancel ("status" also covers the
catalog reads), `nulls` on status and result (absent fields sent as null), `job_fails`, `slow_queue`,
and `truncate` on downloads.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiohttp import web

from . import faults as faults_
from . import synth, validation
from .envelope import absolute, error, iso, origin
from .pool import (
    DEFAULT_FAILURE,
    RESULT_OPTIONAL,
    STATUS_OPTIONAL,
    Pool,
    QueueAPI,
    queue_position,
    run_in_pool,
    taken,
)
from .routing import Refused, Route, mount
from .storage import serve_file

SIZES = {"21:9": (672, 288), "16:9": (512, 288), "4:3": (512, 384), "1:1": (512, 512), "3:4": (384, 512),
         "9:16": (288, 512), "9:21": (288, 672)}
MEDIA = {"image": ".png", "video": ".webp"}
DEFAULTS: dict[str, Any] = {
    "categories": [], "kind": "image", "base_price_usd": 0.05, "price_unit": "output", "description": "",
    "schema": {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}}, "output": "image",
    "run_seconds": 4.0, "jitter": 0.0, "queue_seconds": 0.0, "instances": 1,
}


@dataclass
class ModelRequest:
    """One emulated Model API request; `status` is the emulator's own (in_queue, in_progress,
    succeeded, failed, cancelled); times are wall-clock epochs."""

    id: str
    model: str
    inputs: dict[str, Any]
    status: str = "in_queue"
    created: float = field(default_factory=time.time)
    started_wall: float | None = None
    finished_wall: float | None = None
    fails_with: str | None = None
    extra_queue: float = 0.0
    output: Any = None
    error: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    turn: asyncio.Future[str] | None = field(default=None, repr=False)
    instance_id: str | None = None  # the worker that ran it (not shown by the API)

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


def _check_shape(shape: Any, where: str) -> None:
    if isinstance(shape, str):
        if shape not in MEDIA:
            raise ValueError(f"{where}: output kind must be one of {', '.join(MEDIA)}, not {shape!r}")
    elif isinstance(shape, list) and shape:
        for item in shape:
            _check_shape(item, where)
    elif isinstance(shape, dict) and shape:
        for value in shape.values():
            _check_shape(value, where)
    else:
        raise ValueError(f"{where}: output must be \"image\", \"video\", a list or an object of them")


def output_schema(shape: Any) -> dict[str, Any]:
    """The catalog's description of an output shape."""
    if isinstance(shape, str):
        return {"type": "string", "format": "uri", "media": shape}
    if isinstance(shape, list):
        return {"type": "array", "items": output_schema(shape[0])}
    return {"type": "object", "properties": {k: output_schema(v) for k, v in shape.items()}}


class Models:
    """The catalog's models, their requests and the files they produced."""

    def __init__(self, state: Any, entries: Iterable[dict[str, Any]] = ()) -> None:
        self.state = state
        self.models: dict[str, dict[str, Any]] = {}
        self.pools: dict[str, Pool] = {}
        self.requests: dict[str, ModelRequest] = {}
        self.files: dict[tuple[str, str], bytes] = {}
        self._instances = 0
        for entry in entries:  # the config's models
            self.add(entry)

    @property
    def faults(self) -> faults_.Faults:
        return self.state.faults

    def add(self, config: dict[str, Any]) -> None:
        """Add (or replace) a model from its config entry; ValueError if the entry is unusable."""
        config = copy.deepcopy(config)
        model_id = config.get("model_id")
        if not isinstance(model_id, str) or "/" not in model_id.strip("/"):
            raise ValueError(f"a model needs a \"model_id\" with a '/', not {model_id!r}")
        config = {**copy.deepcopy(DEFAULTS), "display_name": model_id, **config}
        for name, spec in config["schema"].get("properties", {}).items():
            kinds = [spec.get("type", "string"), *([spec.get("items", {}).get("type", "string")]
                                                    if spec.get("type") == "array" else [])]
            if any(kind not in validation.JSON_TYPES for kind in kinds):
                raise ValueError(f"model {model_id}: input {name} has an unknown type")
        _check_shape(config["output"], f"model {model_id}")
        if int(config["instances"]) < 1:
            raise ValueError(f"model {model_id}: instances must be at least 1")
        for spec in config.pop("faults", []):
            self.faults.add(faults_.Fault.from_spec(spec, model_id))
        old = self.models.get(model_id)
        self.models[model_id] = config
        if old is None or old["instances"] != config["instances"]:
            names = [self._next_instance() for _ in range(int(config["instances"]))]
            self.pools[model_id] = Pool(names)

    def _next_instance(self) -> str:
        self._instances += 1
        return f"m-{self._instances:04x}"

    def entry(self, model: dict[str, Any], include_schema: bool) -> dict[str, Any]:
        """The model's catalog entry."""
        body = {k: model[k] for k in ("model_id", "display_name", "categories", "kind", "base_price_usd",
                                       "price_unit", "description")}
        if include_schema:
            body["input_schema"] = model["schema"]
            body["output_schema"] = output_schema(model["output"])
        return body

    # --- lifecycle -------------------------------------------------------------------------
    def create(self, model: dict[str, Any], body: Any) -> ModelRequest:
        """Validate the body against the model's schema (Invalid: a 422) and queue the request."""
        request = ModelRequest(str(uuid.uuid4()), model["model_id"],
                               validation.schema_inputs(model["schema"], body))
        failing = self.faults.take(model["model_id"], "submit", {"job_fails"})
        if failing:
            request.fails_with = str(failing.params.get("message", DEFAULT_FAILURE))
        slow = self.faults.take(model["model_id"], "submit", {"slow_queue"})
        request.extra_queue = float(model["queue_seconds"]) + (
            float(slow.params.get("seconds", 30)) if slow else 0.0)
        self.requests[request.id] = request
        request.task = asyncio.get_running_loop().create_task(self._run(model, request))
        return request

    async def _run(self, model: dict[str, Any], request: ModelRequest) -> None:
        def keep(output: Any) -> None:
            request.output = output

        await run_in_pool(self.pools[model["model_id"]], self.state.clock, request, self.files,
                          seconds=float(model["run_seconds"]), jitter=float(model["jitter"]),
                          make=partial(self._make_output, model, request), keep=keep,
                          error_type="model_error")

    def queue_position(self, request: ModelRequest) -> int:
        """0 = next to start; requests still in their extra pre-queue wait come after the line."""
        waiting = [r for r in self.requests.values()
                   if r.model == request.model and r.status == "in_queue" and r.turn is None]
        return queue_position(self.pools[request.model], request, waiting)

    def cancel(self, request: ModelRequest) -> bool:
        """Only a queued request can be cancelled; later a cancel is a no-op (and the run is billed)."""
        if request.status != "in_queue":
            return False
        if request.task is not None:
            request.task.cancel()
        request.status, request.finished_wall = "cancelled", time.time()
        return True

    # --- media (runs in a worker thread) ---------------------------------------------------
    def _make_output(self, model: dict[str, Any],
                     request: ModelRequest) -> tuple[Any, dict[tuple[str, str], bytes]]:
        inputs = request.inputs
        seed = inputs.get("seed", 0)
        prompt = str(inputs.get("prompt", ""))
        width, height = SIZES.get(str(inputs.get("aspect_ratio")), (inputs.get("width", 512),
                                                                     inputs.get("height", 512)))
        files: dict[tuple[str, str], bytes] = {}

        def make(kind: str) -> str:
            index = len(files)
            filename = f"{kind}-{index + 1}{MEDIA[kind]}"
            if kind == "video":
                frames = max(2, min(int(inputs.get("num_frames", 24)), 48))
                data = synth.animation(seed + index, prompt, frames=frames)
            else:
                data = synth.image(seed, prompt, width, height, index)
            files[(request.id, filename)] = data
            return f"{{origin}}/storage/models/{request.id}/{filename}"

        def build(shape: Any, top: bool = False) -> Any:
            if isinstance(shape, str):
                return make(shape)
            if isinstance(shape, list):
                count = inputs.get(model["count_input"]) if top and model.get("count_input") else None
                return [make(shape[0]) for _ in range(int(count))] if count else [build(s) for s in shape]
            return {key: build(value) for key, value in shape.items()}

        return build(model["output"], top=True), files


# --- routes ------------------------------------------------------------------------------------

KEY = web.AppKey("models", Models)


def register(app: web.Application, state: Any) -> None:
    """Mount the Model API: the config's models, its routes, bearer auth on `/v1/`."""
    models = app[KEY] = Models(state, state.config.get("models", []))
    state.bearer_prefixes.append("/v1/")
    mount(app, ModelAPI(models))


def _urls(request: web.Request, rid: str) -> dict[str, str]:
    base = f"{origin(request)}/v1/requests/{rid}"
    return {"status_url": f"{base}/status", "result_url": f"{base}/result", "cancel_url": f"{base}/cancel"}


def _flag(value: str | None) -> bool:
    return str(value).lower() in ("1", "true", "yes")


class ModelAPI(QueueAPI):
    """The Model API's handlers over `models`, and its table."""

    def __init__(self, models: Models) -> None:
        super().__init__(models.state)
        self.models = models

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/v1/models", self.catalog, "status", self.catalog_reads),
            Route("GET", "/v1/models/categories", self.categories, "status", self.catalog_reads),
            Route("GET", "/v1/models/{model_id:.+}", self.describe, "status", self.model),
            Route("POST", "/v1/models/{model_id:.+}", self.submit, "submit", self.model, after_taken=True),
            Route("GET", "/v1/requests/{rid}/status", self.status, "status", self.request_named,
                  optional=STATUS_OPTIONAL),
            Route("GET", "/v1/requests/{rid}/result", self.result, "result", self.request_named,
                  optional=RESULT_OPTIONAL),
            Route("POST", "/v1/requests/{rid}/cancel", self.cancel, "cancel", self.request_named),
            Route("GET", "/storage/models/{rid}/{filename}", self.output_file),
        ]

    # --- what a route works on ---------------------------------------------------------------
    async def catalog_reads(self, request: web.Request) -> tuple[None, str]:
        return None, "catalog"

    async def model(self, request: web.Request) -> tuple[dict[str, Any], str]:
        """The model a call names, or Refused: 400 for an id without '/', 404 for an unknown one."""
        model_id = request.match_info["model_id"]
        if "/" not in model_id.strip("/"):
            raise Refused(error(400, 400001, f"InvalidResourceIdentifier: {model_id!r} is not a model id "
                                             "(owner/model/...)"))
        model = self.models.models.get(model_id)
        if model is None:
            raise Refused(error(404, 400001, f"InvalidResourceIdentifier: unknown model_id {model_id!r}"))
        return model, model_id

    async def request_named(self, request: web.Request) -> tuple[ModelRequest | None, str]:
        """The request a call names (None: unknown, a 404 once the faults had their turn)."""
        job = self.models.requests.get(request.match_info["rid"])
        return job, job.model if job else "*"

    # --- the catalog ---------------------------------------------------------------------------
    async def catalog(self, request: web.Request, _: None) -> web.StreamResponse:
        query = request.query
        try:
            limit = int(query.get("limit", 50))
            offset = int(query.get("offset", 0))
        except ValueError:
            return error(400, 400000, "limit and offset must be integers")
        if not (1 <= limit <= 200 and offset >= 0):
            return error(400, 400000, "limit must be 1..200 and offset at least 0")
        search = query.get("search", "").strip().lower()
        found = [m for m in self.models.models.values()
                 if (not search or search in " ".join((m["model_id"], m["display_name"],
                                                       m["description"])).lower())
                 and (not query.get("category") or query["category"] in m["categories"])
                 and (not query.get("kind") or query["kind"] == m["kind"])]
        include = _flag(query.get("include_schema"))
        page = [self.models.entry(m, include) for m in found[offset:offset + limit]]
        return web.json_response({"models": page, "total": len(found)})

    async def categories(self, request: web.Request, _: None) -> web.StreamResponse:
        names = sorted({c for m in self.models.models.values() for c in m["categories"]})
        return web.json_response({"categories": names})

    async def describe(self, request: web.Request, model: dict[str, Any]) -> web.StreamResponse:
        return web.json_response(self.models.entry(model, include_schema=True))

    # --- requests ------------------------------------------------------------------------------
    async def submit(self, request: web.Request, model: dict[str, Any]) -> web.StreamResponse:
        job = await taken(request, partial(self.models.create, model))
        return web.json_response({"request_id": job.id, **_urls(request, job.id)})

    async def status(self, request: web.Request, job: ModelRequest | None) -> dict[str, Any]:
        job = _known(job)
        word = "completed" if job.status in ("succeeded", "failed") else job.status
        body: dict[str, Any] = {"request_id": job.id, "status": word}
        if job.status == "in_queue":
            body["queue_position"] = self.models.queue_position(job)
        urls = _urls(request, job.id)
        body.update(status_url=urls["status_url"], result_url=urls["result_url"])
        return body

    async def result(self, request: web.Request, job: ModelRequest | None) -> dict[str, Any]:
        job = _known(job)
        body: dict[str, Any] = {"request_id": job.id, "status": job.status, "created_at": iso(job.created)}
        if job.status == "succeeded":
            body["output"] = absolute(job.output, origin(request))
        elif job.status == "failed":
            body["error"] = job.error
        if job.done and job.finished_wall is not None:
            body["finished_at"] = iso(job.finished_wall)
        return body

    async def cancel(self, request: web.Request, job: ModelRequest | None) -> web.StreamResponse:
        job = _known(job)
        outcome = "cancelled" if self.models.cancel(job) else "not_cancellable"
        return web.json_response({"request_id": job.id, "status": "completed", "outcome": outcome},
                                 status=202)

    async def output_file(self, request: web.Request, _: None) -> web.StreamResponse:
        rid, filename = request.match_info["rid"], request.match_info["filename"]
        job = self.models.requests.get(rid)
        return await serve_file(request, self.models.state, self.models.files.get((rid, filename)),
                                job.model if job else "*")


def _known(job: ModelRequest | None) -> ModelRequest:
    if job is None:
        raise Refused(error(404, 404001, "ResourceNotFound: request not found"))
    return job
