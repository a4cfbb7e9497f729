"""Serverless deployments, their requests and the media they make (the package docstring has the API)."""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote

from .. import comfyui, synth, validation
from .. import faults as faults_
from ..pool import DEFAULT_FAILURE, Pool, queue_position, run_in_pool

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
CANCEL_SETTLE_SECONDS = 0.5  # "live" style: cancellation_requested → canceled, virtual seconds
NEEDS_KEY = ("Partner node 'OpenAIImageNode' needs a Comfy API key: send extra_data.api_key_comfy_org "
             "(a key from platform.comfy.org)")


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
    odd_names: bool = False  # the `odd_names` fault: its outputs are named faults.ODD_NAMES
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    turn: asyncio.Future[str] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


class Serverless:
    """Deployments, their requests and the files they produced."""

    def __init__(self, state: Any, entries: Iterable[dict[str, Any]] = ()) -> None:
        self.state = state
        self.deployments: dict[str, dict[str, Any]] = {}
        self.pools: dict[str, Pool] = {}
        self.requests: dict[str, Request] = {}
        self.files: dict[tuple[str, str], bytes] = {}
        self._instance = itertools.count(0x3F9A1C)
        for entry in entries:  # the config's deployments
            self.add(entry)

    @property
    def faults(self) -> faults_.Faults:
        return self.state.faults

    def add(self, config: dict[str, Any]) -> None:
        """Add (or replace) a deployment from its config entry; ValueError if the entry is unusable."""
        config = self._completed(config)
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

    def _completed(self, config: dict[str, Any]) -> dict[str, Any]:
        """A copy of a deployment's config entry with its defaults filled in; ValueError if unusable."""
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
            self._comfyui_defaults(config)
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
        return config

    def _comfyui_defaults(self, config: dict[str, Any]) -> None:
        """A ComfyUI deployment's workflow (its preset's, unless given), workflow_id and overrides."""
        preset = config.setdefault("preset", "image")
        if "workflow" not in config:
            if preset not in self.state.presets:
                raise ValueError(f"deployment {config['id']}: no preset {preset!r}")
            config["workflow"] = copy.deepcopy(self.state.presets[preset])
        config.setdefault("workflow_id", str(uuid.uuid5(uuid.NAMESPACE_URL, config["id"])))
        config.setdefault("overrides", _default_overrides(config["workflow"]))

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
        request.odd_names = bool(self.faults.take(dep["id"], "submit", {"odd_names"}))
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
        waiting = [r for r in self.requests.values() if r.deployment == request.deployment
                   and r.status == "in_queue" and not r.cancel_pending and r.turn is None]
        return queue_position(self.pools[request.deployment], request, waiting)

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
            return f"{{origin}}/storage/output/{request.id}/{_url_segment(filename)}"

        def item(filename: str, data: bytes, **extra: Any) -> dict[str, Any]:
            return {"url": store(filename, data), "filename": filename, "subfolder": "", "type": "output",
                    **extra}

        if request.odd_names:
            params = synth.workflow_params(request.workflow or {})
            return _odd_outputs(dep, params, store, item), files
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
            # what VHS_VideoCombine writes for the node's `format`: the preset asks for an MP4
            fmt = synth.save_node_format(request.workflow or {}, params["save_node"]) or "image/webp"
            ext, data = synth.video_file(params["seed"], params["prompt"], fmt)
            video = item(f"ComfyUI_00001.{ext}", data, format=fmt if ext == "mp4" else f"image/{ext}",
                         frame_rate=12)
            return {params["save_node"]: {"gifs": [video]}}, files
        images = [item(f"ComfyUI_{n + 1:05d}_.png", synth.image(params["seed"], params["prompt"],
                                                                params["width"], params["height"], n))
                  for n in range(params["batch"])]
        outputs: dict[str, Any] = {params["save_node"]: {"images": images}}
        if dep.get("caption", True):
            outputs["38:42"] = {"text": [[f"a caption of: {params['prompt'][:60]}"]]}
        return outputs, files


def _url_segment(filename: str) -> str:
    """A file name as one URL path segment (a dot name spelt %2E, or clients would resolve it away)."""
    return quote(filename, safe="") if filename.strip(".") else "%2E" * len(filename)


def _odd_outputs(dep: dict[str, Any], params: dict[str, Any], store: Any, item: Any) -> dict[str, Any]:
    """The `odd_names` fault's outputs: one image per faults.ODD_NAMES entry, each its own picture."""
    pictures = [synth.image(params.get("seed", 0), params.get("prompt", ""), 64, 64, n)
                for n in range(len(faults_.ODD_NAMES))]
    if dep["type"] == "lora":
        return {"images": [store(name, data) for name, data in zip(faults_.ODD_NAMES, pictures, strict=True)]}
    images = [item(name, data) for name, data in zip(faults_.ODD_NAMES, pictures, strict=True)]
    return {params.get("save_node", "9"): {"images": images}}


def _default_overrides(workflow: dict[str, Any]) -> dict[str, Any]:
    """A payload's default overrides: every node's own (unlinked) values, as saved."""
    overrides = {}
    for node_id, node in workflow.items():
        values = {k: v for k, v in node.get("inputs", {}).items() if not isinstance(v, list)}
        if values:
            overrides[node_id] = {"inputs": values}
    return overrides
