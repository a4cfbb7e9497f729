"""A stock ComfyUI 0.3.64 backend, as api/comfyui-backend.md has it: one per Ready machine.

Served under `/machines/{server_id}` and again under `/machines/{server_id}/api` (no auth: the URL is
the secret; an unknown or not-Ready machine answers 404 with an empty body):
POST/GET `/prompt`, GET `/object_info[/{class}]`, GET `/system_stats`, `/features`, POST
`/upload/image`, `/upload/mask`, GET `/view`, GET/POST `/history`, GET `/history/{prompt_id}`,
GET/POST `/queue`, POST `/interrupt`, POST `/free`, WebSocket `/ws?clientId=`.

The validator and the executor follow ComfyUI's own code (server.py, execution.py, main.py of 0.3.64):
the same 400 bodies, the same message order and routing rules, the same history entry, the same
one-socket-per-clientId quirk, output caching between prompts, and binary preview frames (type 1, or
type 4 for a client whose first message announced `supports_preview_metadata`). Time is virtual: a
sampler step takes `step_seconds`, other nodes `node_seconds`, a checkpoint load `load_seconds`.
cloud.py runs the same engine as Comfy Cloud's inference workers, through the hooks `targets` (which
sockets a message reaches), `client_of` (whom a prompt's messages are for) and `finished` (where a
prompt's history entry goes).

Faults (target: the server_id or "*"): `ws_drop` (on "ws"; params `at_step`, default half the steps:
the prompt's sockets are cut mid-run, the prompt still completes), `ws_refused` (on "ws": the
WebSocket handshake is answered with HTTP `status`, default 429, and `Retry-After: retry_after`,
default 0, as a proxy's rate limit does), `node_raises` (on "run"; params
`node` (an id or class_type; default the sampler), `at_step`, `exception_type`, `message`), and the
request faults `server_error`, `http_error`, `drop`, `delay` on POST /prompt ("submit"), GET
/history and /queue ("status") and GET /view ("download", which also honours `truncate`).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import io
import json
import mimetypes
import posixpath
import random
import struct
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from . import synth
from .faults import Fault
from .synth import workflow_params as _read_workflow

VERSION = "0.3.64"
MAX_HISTORY = 10_000
MAX_UPLOAD = 100 * 1024 * 1024
MAX_RESOLUTION = 16384
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
FOLDER_TYPES = ("output", "input", "temp")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA = 1, 4
JPEG = 1

SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
    "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde",
    "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]
SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
              "linear_quadratic", "kl_optimal"]
SAMPLER_CLASSES = {"KSampler"}
BACKEND_FAULTS = {"server_error", "http_error", "drop", "delay"}
# Classes with a VALIDATE_INPUTS taking these inputs: ComfyUI skips the combo check for them
CUSTOM_VALIDATION = {"LoadImage": {"image"}}


def _tip(text: str, **options: Any) -> dict[str, Any]:
    return {**options, "tooltip": text}


def _node(name: str, required: dict[str, Any], output: list[str], *, category: str,
          display: str | None = None, optional: dict[str, Any] | None = None,
          hidden: dict[str, str] | None = None, output_node: bool = False, module: str = "nodes",
          description: str = "", output_names: list[str] | None = None,
          output_tooltips: list[str] | None = None) -> dict[str, Any]:
    inputs: dict[str, Any] = {"required": required}
    if optional is not None:
        inputs["optional"] = optional
    if hidden is not None:
        inputs["hidden"] = hidden
    info: dict[str, Any] = {
        "input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
        "output": output, "output_is_list": [False] * len(output), "output_name": output_names or output,
        "name": name, "display_name": display or name, "description": description,
        "python_module": module, "category": category, "output_node": output_node}
    if output_tooltips:
        info["output_tooltips"] = output_tooltips
    return info


def node_schemas(checkpoints: list[str], input_images: list[str]) -> dict[str, dict[str, Any]]:
    """`/object_info` for the node classes the emulator's workflows use."""
    size = {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}
    save_hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    schemas = [
        _node("CheckpointLoaderSimple",
              {"ckpt_name": [checkpoints, _tip("The name of the checkpoint (model) to load.")]},
              ["MODEL", "CLIP", "VAE"], category="loaders", display="Load Checkpoint",
              description="Loads a diffusion model checkpoint, diffusion models are used to denoise "
                          "latents.",
              output_tooltips=["The model used for denoising latents.",
                               "The CLIP model used for encoding text prompts.",
                               "The VAE model used for encoding and decoding images to and from latent "
                               "space."]),
        _node("CLIPTextEncode",
              {"text": ["STRING", _tip("The text to be encoded.", multiline=True, dynamicPrompts=True)],
               "clip": ["CLIP", _tip("The CLIP model used for encoding the text.")]},
              ["CONDITIONING"], category="conditioning", display="CLIP Text Encode (Prompt)",
              description="Encodes a text prompt using a CLIP model into an embedding that can be used "
                          "to guide the diffusion model towards generating specific images.",
              output_tooltips=["A conditioning containing the embedded text used to guide the "
                               "diffusion model."]),
        _node("EmptyLatentImage",
              {"width": ["INT", _tip("The width of the latent images in pixels.", **size)],
               "height": ["INT", _tip("The height of the latent images in pixels.", **size)],
               "batch_size": ["INT", _tip("The number of latent images in the batch.", default=1, min=1,
                                          max=4096)]},
              ["LATENT"], category="latent", display="Empty Latent Image",
              description="Create a new batch of empty latent images to be denoised via sampling.",
              output_tooltips=["The empty latent image batch."]),
        _node("EmptyHunyuanLatentVideo",
              {"width": ["INT", {"default": 848, "min": 16, "max": MAX_RESOLUTION, "step": 16}],
               "height": ["INT", {"default": 480, "min": 16, "max": MAX_RESOLUTION, "step": 16}],
               "length": ["INT", {"default": 25, "min": 1, "max": MAX_RESOLUTION, "step": 4}],
               "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}]},
              ["LATENT"], category="latent/video", module="comfy_extras.nodes_hunyuan"),
        _node("KSampler",
              {"model": ["MODEL", _tip("The model used for denoising the input latent.")],
               "seed": ["INT", _tip("The random seed used for creating the noise.", default=0, min=0,
                                    max=0xFFFFFFFFFFFFFFFF, control_after_generate=True)],
               "steps": ["INT", _tip("The number of steps used in the denoising process.", default=20,
                                     min=1, max=10000)],
               "cfg": ["FLOAT", _tip("The Classifier-Free Guidance scale balances creativity and "
                                     "adherence to the prompt.", default=8.0, min=0.0, max=100.0,
                                     step=0.1, round=0.01)],
               "sampler_name": [SAMPLERS, _tip("The algorithm used when sampling.")],
               "scheduler": [SCHEDULERS, _tip("The scheduler controls how noise is gradually removed "
                                              "to form the image.")],
               "positive": ["CONDITIONING", _tip("The conditioning describing the attributes you want "
                                                 "to include in the image.")],
               "negative": ["CONDITIONING", _tip("The conditioning describing the attributes you want "
                                                 "to exclude from the image.")],
               "latent_image": ["LATENT", _tip("The latent image to denoise.")],
               "denoise": ["FLOAT", _tip("The amount of denoising applied.", default=1.0, min=0.0,
                                         max=1.0, step=0.01)]},
              ["LATENT"], category="sampling",
              description="Uses the provided model, positive and negative conditioning to denoise the "
                          "latent image.",
              output_tooltips=["The denoised latent."]),
        _node("VAEDecode",
              {"samples": ["LATENT", _tip("The latent to be decoded.")],
               "vae": ["VAE", _tip("The VAE model used for decoding the latent.")]},
              ["IMAGE"], category="latent", display="VAE Decode",
              description="Decodes latent images back into pixel space images.",
              output_tooltips=["The decoded image."]),
        _node("VAEEncode", {"pixels": ["IMAGE", {}], "vae": ["VAE", {}]}, ["LATENT"], category="latent",
              display="VAE Encode"),
        _node("LoadImage", {"image": [input_images, {"image_upload": True}]}, ["IMAGE", "MASK"],
              category="image", display="Load Image"),
        _node("SaveImage",
              {"images": ["IMAGE", _tip("The images to save.")],
               "filename_prefix": ["STRING", _tip("The prefix for the file to save. This may include "
                                                  "formatting information such as %date:yyyy-MM-dd% or "
                                                  "%Empty Latent Image.width% to include values from "
                                                  "nodes.", default="ComfyUI")]},
              [], category="image", display="Save Image", hidden=save_hidden, output_node=True,
              description="Saves the input images to your ComfyUI output directory."),
        _node("PreviewImage", {"images": ["IMAGE", {}]}, [], category="image", display="Preview Image",
              hidden=save_hidden, output_node=True, description="Saves the input images to your ComfyUI "
                                                                "output directory."),
        _node("VHS_VideoCombine",
              {"images": ["IMAGE", {}],
               "frame_rate": ["FLOAT", {"default": 8, "min": 1, "step": 1}],
               "loop_count": ["INT", {"default": 0, "min": 0, "max": 100, "step": 1}],
               "filename_prefix": ["STRING", {"default": "AnimateDiff"}],
               "format": [["image/gif", "image/webp"], {}],
               "pingpong": ["BOOLEAN", {"default": False}],
               "save_output": ["BOOLEAN", {"default": True}]},
              ["VHS_FILENAMES"], category="Video Helper Suite 🎥🅥🅗🅢", display="Video Combine 🎥🅥🅗🅢",
              optional={"audio": ["AUDIO", {}], "meta_batch": ["VHS_BatchManager", {}], "vae": ["VAE", {}]},
              hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"},
              output_node=True, module="custom_nodes.ComfyUI-VideoHelperSuite",
              output_names=["Filenames"]),
    ]
    return {schema["name"]: schema for schema in schemas}


GPUS = {  # server_type: (device name, VRAM GB, RAM GB), after api/server-api.md
    "medium": ("cuda:0 Tesla T4 : cudaMallocAsync", 16, 16),
    "large": ("cuda:0 NVIDIA A10G : cudaMallocAsync", 24, 32),
    "extra-large": ("cuda:0 NVIDIA L40S : cudaMallocAsync", 48, 48),
    "2x-large": ("cuda:0 NVIDIA A100-SXM4-80GB : cudaMallocAsync", 80, 96),
    "2xl-turbo": ("cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync", 80, 180),
}


class Interrupted(Exception):
    """InterruptProcessingException."""


class NodeFailure(Exception):
    def __init__(self, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.exception_type = exception_type


@dataclass
class Item:
    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    sensitive: dict[str, Any] = field(repr=False)  # the Comfy API key: kept out of everything echoed
    seq: int = 0

    def public(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


@dataclass
class Socket:
    ws: web.WebSocketResponse
    transport: Any
    flags: dict[str, Any] = field(default_factory=dict)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


@dataclass
class _Run:
    """One prompt being executed."""

    item: Item
    client: str | None
    params: dict[str, Any]
    messages: list[list[Any]] = field(default_factory=list)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    ui: dict[str, Any] = field(default_factory=dict)
    raises: Fault | None = None
    raise_node: str | None = None
    drop: Fault | None = None


def _error(kind: str, message: str, details: str, **extra_info: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info}


def _full_type_name(exc: BaseException) -> str:
    klass = type(exc)
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def _types_match(received: Any, expected: Any) -> bool:
    """validate_node_input: exact, `*`, or comma-separated unions."""
    if not isinstance(received, str) or not isinstance(expected, str):
        return received == expected
    if received == expected or "*" in (received, expected):
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


class ComfyUI:
    """The in-memory state of one machine's ComfyUI: files, queue, history, sockets, executor."""

    def __init__(self, server_id: str, state: Any, settings: dict[str, Any], server_type: str,
                 checkpoints: list[str]) -> None:
        self.server_id = server_id
        self.state = state
        self.step_seconds = float(settings.get("step_seconds", 0.5))
        self.node_seconds = float(settings.get("node_seconds", 0.2))
        self.load_seconds = float(settings.get("load_seconds", 3.0))
        self.previews = bool(settings.get("previews", True))
        self.server_type = server_type
        self.checkpoints = sorted(set(checkpoints))
        self.files: dict[tuple[str, str], bytes] = {}
        self.pending: list[Item] = []
        self.running: Item | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.sockets: dict[str, Socket] = {}
        self.number = 0
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.cache: dict[str, dict[str, Any] | None] = {}  # signature -> UI output (None: no UI)
        self._seq = 0
        self._interrupt = False
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._temp_prefix = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work())

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        for socket in list(self.sockets.values()):
            socket.abort()
        self.sockets.clear()

    # --- node classes and files ------------------------------------------------------------
    def input_images(self) -> list[str]:
        return sorted(path for (kind, path), _ in self.files.items()
                      if kind == "input" and "/" not in path and path.lower().endswith(IMAGE_EXTENSIONS))

    def schemas(self) -> dict[str, dict[str, Any]]:
        return node_schemas(self.checkpoints, self.input_images())

    def system_stats(self) -> dict[str, Any]:
        name, vram, ram = GPUS.get(self.server_type, GPUS["large"])
        gib = 1024**3
        return {
            "system": {"os": "posix", "ram_total": ram * gib, "ram_free": int(ram * gib * 0.8),
                       "comfyui_version": VERSION, "required_frontend_version": "1.27.10",
                       "installed_templates_version": "0.1.86", "required_templates_version": "0.1.86",
                       "python_version": "3.12.3 (main, Aug 14 2025, 17:47:21) [GCC 13.3.0]",
                       "pytorch_version": "2.8.0+cu128", "embedded_python": False,
                       "argv": ["main.py", "--listen", "0.0.0.0", "--port", "8188",
                                "--preview-method", "auto" if self.previews else "none"]},
            "devices": [{"name": name, "type": "cuda", "index": 0, "vram_total": vram * gib,
                         "vram_free": int(vram * gib * 0.95), "torch_vram_total": 0,
                         "torch_vram_free": 0}]}

    @staticmethod
    def features() -> dict[str, Any]:
        return {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD}

    def exists(self, annotated: str, default: str = "input") -> bool:
        name, kind = _annotated(annotated)
        return (kind or default, posixpath.normpath(name)) in self.files

    def _save_path(self, prefix: str, kind: str = "output") -> tuple[str, str, int]:
        """get_save_image_path: (subfolder, filename, counter) for `prefix`."""
        norm = posixpath.normpath(prefix)
        subfolder, filename = posixpath.dirname(norm), posixpath.basename(norm)
        base = f"/comfy/{kind}"
        if posixpath.commonpath((base, posixpath.normpath(posixpath.join(base, subfolder)))) != base:
            raise NodeFailure("Exception", "**** ERROR: Saving image outside the output folder is not "
                                           f"allowed.\n full_output_folder: {base}/{subfolder}\n"
                                           f"         output_dir: {base}\n"
                                           f"         commonpath: {posixpath.commonpath((base, '/'))}")
        counter = 0
        for (folder_kind, path) in self.files:
            if folder_kind != kind or posixpath.dirname(path) != subfolder:
                continue
            name = posixpath.basename(path)
            if name.startswith(f"{filename}_"):
                digits = name[len(filename) + 1:].split("_")[0].split(".")[0]
                if digits.isdigit():
                    counter = max(counter, int(digits))
        return subfolder, filename, counter + 1

    # --- queue -----------------------------------------------------------------------------
    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self.pending) + (self.running is not None)}}

    def sorted_pending(self) -> list[Item]:
        return sorted(self.pending, key=lambda i: (i.number, i.seq))

    async def put(self, item: Item) -> None:
        self._seq += 1
        item.seq = self._seq
        self.pending.append(item)
        self._wake.set()
        await self.queue_updated()

    async def delete_pending(self, prompt_id: Any) -> None:
        for item in self.sorted_pending():
            if item.prompt_id == prompt_id:
                self.pending.remove(item)
                await self.queue_updated()
                return

    async def wipe_queue(self) -> None:
        self.pending.clear()
        await self.queue_updated()

    async def queue_updated(self) -> None:
        await self.send("status", {"status": self.queue_info()})

    def interrupt(self, prompt_id: str | None) -> None:
        if prompt_id and (self.running is None or self.running.prompt_id != prompt_id):
            return
        self._interrupt = True

    def free(self, unload_models: bool, free_memory: bool) -> None:
        if free_memory:
            self.cache.clear()

    def get_history(self, max_items: int | None, offset: int) -> dict[str, Any]:
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        out: dict[str, Any] = {}
        for i, key in enumerate(self.history):
            if i >= offset:
                out[key] = self.history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return out

    # --- WebSocket -------------------------------------------------------------------------
    def targets(self, sid: str | None) -> list[Socket]:
        """The sockets a message for `sid` goes to: that client's, or every socket when None."""
        if sid is None:
            return list(self.sockets.values())
        socket = self.sockets.get(sid)
        return [socket] if socket is not None else []

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        """send_sync: to `sid` only, or to every socket when `sid` is None."""
        text = json.dumps({"type": event, "data": data})
        for socket in self.targets(sid):
            await _send(socket, text)

    async def send_preview(self, run: _Run, node_id: str, image: bytes) -> None:
        sid = run.client
        for socket in self.targets(sid):
            if sid is not None and socket.flags.get("supports_preview_metadata"):
                meta = json.dumps({"node_id": node_id, "prompt_id": run.item.prompt_id,
                                   "display_node_id": node_id, "parent_node_id": None,
                                   "real_node_id": node_id, "image_type": "image/jpeg"}).encode()
                frame = struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + image
            else:
                frame = struct.pack(">II", PREVIEW_IMAGE, JPEG) + image
            await _send(socket, frame)

    # --- validation (execution.validate_prompt) ----------------------------------------------
    def validate(self, prompt: dict[str, Any], partial: list[str] | None
                 ) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
        schemas = self.schemas()
        outputs: list[str] = []
        for x in prompt:
            if "class_type" not in prompt[x]:  # a TypeError here is the server's 500
                return False, _error("invalid_prompt", "Cannot execute because a node is missing the "
                                     "class_type property.", f"Node ID '#{x}'"), [], {}
            class_type = prompt[x]["class_type"]
            schema = schemas.get(class_type)
            if schema is None:
                return False, _error("invalid_prompt", f"Cannot execute because node {class_type} does "
                                     "not exist.", f"Node ID '#{x}'"), [], {}
            if schema["output_node"] and (partial is None or x in partial) and x not in outputs:
                outputs.append(x)
        if not outputs:
            return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}
        good: list[str] = []
        failed: list[tuple[str, list[dict[str, Any]]]] = []
        node_errors: dict[str, Any] = {}
        validated: dict[str, tuple[bool, list[dict[str, Any]], str]] = {}
        for o in outputs:
            try:
                valid, reasons, _ = self._validate_inputs(schemas, prompt, o, validated)
            except Exception as ex:
                valid = False
                reasons = [_error("exception_during_validation", "Exception when validating node", str(ex),
                                  exception_type=_full_type_name(ex),
                                  traceback=traceback.format_tb(ex.__traceback__))]
                validated[o] = (False, reasons, o)
            if valid is True:
                good.append(o)
                continue
            # only the output's own reasons reach `details`; upstream ones are in node_errors
            failed.append((o, reasons))
            for node_id, result in validated.items():
                if result[0] is not True and len(result[1]) > 0:
                    if node_id not in node_errors:
                        node_errors[node_id] = {"errors": result[1], "dependent_outputs": [],
                                                "class_type": prompt[node_id]["class_type"]}
                    node_errors[node_id]["dependent_outputs"].append(o)
        if not good:
            details = "\n".join(f"{e['message']}: {e['details']}" for _, errors in failed for e in errors)
            return False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                 details), [], node_errors
        return True, None, good, node_errors

    def _validate_inputs(self, schemas: dict[str, Any], prompt: dict[str, Any], unique_id: str,
                         validated: dict[str, Any]) -> tuple[bool, list[dict[str, Any]], str]:
        if unique_id in validated:
            return validated[unique_id]
        inputs = prompt[unique_id]["inputs"]
        class_type = prompt[unique_id]["class_type"]
        class_inputs = schemas[class_type]["input"]
        custom = CUSTOM_VALIDATION.get(class_type, set())
        errors: list[dict[str, Any]] = []
        valid = True
        for category in ("required", "optional"):
            for x, spec in class_inputs.get(category, {}).items():
                input_type, extra = spec[0], (spec[1] if len(spec) > 1 else {})
                if x not in inputs:
                    if category == "required":
                        errors.append(_error("required_input_missing", "Required input is missing", f"{x}",
                                             input_name=x))
                    continue
                val = inputs[x]
                info = [input_type, extra]
                if isinstance(val, list):
                    if len(val) != 2:
                        errors.append(_error("bad_linked_input", "Bad linked input, must be a length-2 list "
                                             "of [node_id, slot_index]", f"{x}", input_name=x,
                                             input_config=info, received_value=val))
                        continue
                    o_id = val[0]
                    received_type = schemas[prompt[o_id]["class_type"]]["output"][val[1]]
                    if not _types_match(received_type, input_type):
                        errors.append(_error("return_type_mismatch", "Return type mismatch between linked "
                                             "nodes", f"{x}, received_type({received_type}) mismatch "
                                             f"input_type({input_type})", input_name=x, input_config=info,
                                             received_type=received_type, linked_node=val))
                        continue
                    try:
                        if self._validate_inputs(schemas, prompt, o_id, validated)[0] is False:
                            valid = False
                    except Exception as ex:
                        valid = False
                        validated[o_id] = (False, [_error(
                            "exception_during_inner_validation", "Exception when validating inner node",
                            str(ex), input_name=x, input_config=info, exception_message=str(ex),
                            exception_type=_full_type_name(ex),
                            traceback=traceback.format_tb(ex.__traceback__), linked_node=val)], o_id)
                    continue
                try:
                    if isinstance(val, dict) and "__value__" in val:
                        val = inputs[x] = val["__value__"]
                    if input_type == "INT":
                        val = inputs[x] = int(val)
                    elif input_type == "FLOAT":
                        val = inputs[x] = float(val)
                    elif input_type == "STRING":
                        val = inputs[x] = str(val)
                    elif input_type == "BOOLEAN":
                        val = inputs[x] = bool(val)
                except Exception as ex:
                    errors.append(_error("invalid_input_type", f"Failed to convert an input value to a "
                                         f"{input_type} value", f"{x}, {val}, {ex}", input_name=x,
                                         input_config=info, received_value=val, exception_message=str(ex)))
                    continue
                if x in custom:
                    continue
                if "min" in extra and val < extra["min"]:
                    errors.append(_error("value_smaller_than_min", f"Value {val} smaller than min of "
                                         f"{extra['min']}", f"{x}", input_name=x, input_config=info,
                                         received_value=val))
                    continue
                if "max" in extra and val > extra["max"]:
                    errors.append(_error("value_bigger_than_max", f"Value {val} bigger than max of "
                                         f"{extra['max']}", f"{x}", input_name=x, input_config=info,
                                         received_value=val))
                    continue
                if isinstance(input_type, list) or input_type == "COMBO":
                    options = extra.get("options", []) if input_type == "COMBO" else input_type
                    if val not in options:
                        config: Any = info
                        listing = str(options)
                        if len(options) > 20:  # ComfyUI does not echo long lists (model file names)
                            listing, config = f"(list of length {len(options)})", None
                        errors.append(_error("value_not_in_list", "Value not in list",
                                             f"{x}: '{val}' not in {listing}", input_name=x,
                                             input_config=config, received_value=val))
                        continue
        for x in sorted(custom):  # LoadImage.VALIDATE_INPUTS
            if x in inputs and not isinstance(inputs[x], list) and not self.exists(str(inputs[x])):
                errors.append(_error("custom_validation_failed", "Custom validation failed for node",
                                     f"{x} - Invalid image file: {inputs[x]}", input_name=x))
        result = (False, errors, unique_id) if errors or valid is not True else (True, [], unique_id)
        validated[unique_id] = result
        return result

    # --- execution -------------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            item = self.sorted_pending()[0]
            self.pending.remove(item)
            self._interrupt = False  # from here on an interrupt is this prompt's
            self.running = item
            await self.queue_updated()
            run = _Run(item, self.client_of(item), _workflow_params(item.prompt))
            self.client_id = run.client
            try:
                success = await self._execute(run)
            except Exception as exc:  # an emulator bug must not stall the queue
                run.messages.append(["execution_error", {"prompt_id": item.prompt_id,
                                                         "exception_message": str(exc),
                                                         "exception_type": _full_type_name(exc)}])
                success = False
            self.running = None
            entry = {"prompt": item.public(), "outputs": run.ui,
                     "status": {"status_str": "success" if success else "error", "completed": success,
                                "messages": run.messages},
                     "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                              for n in run.ui}}
            await self.finished(item, entry)
            await self.queue_updated()
            if run.client is not None:
                await self.send("executing", {"node": None, "prompt_id": item.prompt_id}, run.client)
            self.client_id = None
            self.last_node_id = None

    def client_of(self, item: Item) -> str | None:
        """The client a prompt's messages go to (None: only the broadcast ones are sent)."""
        return item.extra_data.get("client_id")

    async def finished(self, item: Item, entry: dict[str, Any]) -> None:
        """A prompt ran (or failed, or was interrupted): keep its history entry."""
        self.history[item.prompt_id] = entry
        while len(self.history) > MAX_HISTORY:
            self.history.pop(next(iter(self.history)))

    async def _message(self, run: _Run, event: str, data: dict[str, Any], broadcast: bool = False) -> None:
        data = {**data, "timestamp": int(time.time() * 1000)}
        run.messages.append([event, data])
        if run.client is not None or broadcast:
            await self.send(event, data, run.client)

    async def _progress_state(self, run: _Run, node_id: str, value: int, maximum: int, state: str) -> None:
        run.progress[node_id] = {"value": value, "max": maximum, "state": state, "node_id": node_id,
                                 "prompt_id": run.item.prompt_id, "display_node_id": node_id,
                                 "parent_node_id": None, "real_node_id": node_id}
        await self.send("progress_state",
                        {"prompt_id": run.item.prompt_id, "nodes": copy.deepcopy(run.progress)}, run.client)

    def _signatures(self, prompt: dict[str, Any]) -> dict[str, str]:
        sigs: dict[str, str] = {}

        def sig(node_id: str, trail: tuple[str, ...] = ()) -> str:
            if node_id in sigs:
                return sigs[node_id]
            node = prompt[node_id]
            parts: list[Any] = [node["class_type"]]
            inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
            for name, value in sorted(inputs.items()):
                if _is_link(value, prompt) and value[0] not in trail:
                    parts.append([name, sig(value[0], (*trail, node_id)), value[1]])
                else:
                    parts.append([name, value])
            if node["class_type"] == "LoadImage":  # IS_CHANGED: the file's hash
                name, kind = _annotated(str(inputs.get("image", "")))
                data = self.files.get((kind or "input", posixpath.normpath(name)), b"")
                parts.append(hashlib.sha256(data).hexdigest())
            sigs[node_id] = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
            return sigs[node_id]

        for node_id in prompt:
            sig(node_id)
        return sigs

    def _order(self, prompt: dict[str, Any], outputs: list[str], cached: set[str]) -> list[str]:
        order: list[str] = []
        seen: set[str] = set()

        def visit(node_id: str) -> None:
            if node_id in seen:
                return
            seen.add(node_id)
            for value in prompt[node_id].get("inputs", {}).values():
                if _is_link(value, prompt) and value[0] not in cached:
                    visit(value[0])
            order.append(node_id)

        for output in outputs:
            visit(output)
        return order

    def _arm_faults(self, run: _Run, order: list[str]) -> None:
        prompt = run.item.prompt
        run.drop = self.state.faults.take(self.server_id, "ws", {"ws_drop"})
        run.raises = self.state.faults.take(self.server_id, "run", {"node_raises"})
        if run.raises is None:
            return
        wanted = run.raises.params.get("node")
        samplers = [n for n in order if prompt[n]["class_type"] in SAMPLER_CLASSES]
        if wanted is None:
            run.raise_node = samplers[0] if samplers else (order[-1] if order else None)
        else:
            run.raise_node = next((n for n in order if n == str(wanted) or prompt[n]["class_type"] == wanted),
                                  None)

    def _check(self, run: _Run, node_id: str, step: int | None = None) -> None:
        """Raise the interrupt, or the armed `node_raises` fault when this node (and step) is its."""
        if self._interrupt:
            raise Interrupted
        if run.raises is None or node_id != run.raise_node:
            return
        params = run.raises.params
        at_step = params.get("at_step")
        sampler = run.item.prompt[node_id]["class_type"] in SAMPLER_CLASSES
        if at_step is not None and sampler and (step is None or step < int(at_step)):
            return
        raise NodeFailure(params.get("exception_type", "RuntimeError"),
                          params.get("message", "mat1 and mat2 shapes cannot be multiplied "
                                                "(154x2048 and 768x320)"))

    async def _execute(self, run: _Run) -> bool:
        item, prompt = run.item, run.item.prompt
        await self._message(run, "execution_start", {"prompt_id": item.prompt_id})
        sigs = self._signatures(prompt)
        cached = [n for n in prompt if sigs[n] in self.cache]
        await self._message(run, "execution_cached", {"nodes": cached, "prompt_id": item.prompt_id})
        current_outputs = list(cached)
        order = self._order(prompt, item.outputs, set(cached))
        self._arm_faults(run, order)
        keep = {sigs[n]: self.cache[sigs[n]] for n in cached}
        try:
            for node_id in order:
                class_type = prompt[node_id]["class_type"]
                if sigs[node_id] in keep:  # a cached output node: its UI output is sent again
                    ui = keep[sigs[node_id]]
                    if run.client is not None:
                        await self.send("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                                     "prompt_id": item.prompt_id}, run.client)
                    if ui is not None:
                        run.ui[node_id] = ui
                    await self._progress_state(run, node_id, 1, 1, "finished")
                    continue
                await self._progress_state(run, node_id, 0, 1, "running")
                self.last_node_id = node_id
                if run.client is not None:
                    await self.send("executing", {"node": node_id, "display_node": node_id,
                                                  "prompt_id": item.prompt_id}, run.client)
                try:
                    ui = await self._run_node(run, node_id, class_type, prompt[node_id].get("inputs", {}))
                except NodeFailure as failure:
                    await self._progress_state(run, node_id, run.progress[node_id]["value"],
                                               run.progress[node_id]["max"], "error")
                    inputs = prompt[node_id].get("inputs", {})
                    await self._message(run, "execution_error", {
                        "prompt_id": item.prompt_id, "node_id": node_id, "node_type": class_type,
                        "executed": list(run.executed), "exception_message": str(failure),
                        "exception_type": failure.exception_type,
                        "traceback": _fake_traceback(failure, class_type),
                        "current_inputs": {k: [v if isinstance(v, (int, float, str, bool)) or v is None
                                               else f"<{k} object>"] for k, v in inputs.items()},
                        "current_outputs": current_outputs})
                    return False
                except Interrupted:
                    await self._message(run, "execution_interrupted", {
                        "prompt_id": item.prompt_id, "node_id": node_id, "node_type": class_type,
                        "executed": list(run.executed)}, broadcast=True)
                    return False
                keep[sigs[node_id]] = ui
                run.executed.append(node_id)
                maximum = run.progress[node_id]["max"]
                await self._progress_state(run, node_id, maximum, maximum, "finished")
                if ui is not None:
                    run.ui[node_id] = ui
                    if run.client is not None:
                        await self.send("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                                     "prompt_id": item.prompt_id}, run.client)
        finally:
            # only this prompt's nodes stay cached; those that completed stay even when it fails
            self.cache = keep
        await self._message(run, "execution_success", {"prompt_id": item.prompt_id})
        return True

    async def _run_node(self, run: _Run, node_id: str, class_type: str,
                        inputs: dict[str, Any]) -> dict[str, Any] | None:
        clock = self.state.clock
        self._check(run, node_id)
        params = run.params
        if class_type in SAMPLER_CLASSES:
            steps = int(inputs.get("steps", 20))
            drop_at = int(run.drop.params.get("at_step", max(1, steps // 2))) if run.drop else None
            for step in range(1, steps + 1):
                await clock.sleep(self.step_seconds)
                self._check(run, node_id, step)
                if drop_at is not None and step >= drop_at:
                    self._drop_sockets(run)
                    drop_at = None
                await self.send("progress", {"value": step, "max": steps, "prompt_id": run.item.prompt_id,
                                             "node": node_id}, run.client)
                await self._progress_state(run, node_id, step, steps, "running")
                if self.previews:
                    image = synth.preview(params["seed"], params["prompt"], params["width"], params["height"],
                                          step, steps)
                    await self.send_preview(run, node_id, image)
            return None
        if class_type == "CheckpointLoaderSimple":
            await clock.sleep(self.load_seconds)
        else:
            await clock.sleep(self.node_seconds)
        self._check(run, node_id)
        if class_type == "SaveImage":
            prefix = str(inputs.get("filename_prefix", "ComfyUI"))
            return {"images": self._save_images(params, prefix, "output")}
        if class_type == "PreviewImage":
            return {"images": self._save_images(params, "ComfyUI" + self._temp_prefix, "temp")}
        if class_type == "VHS_VideoCombine":
            return {"gifs": [self._save_video(params, inputs)]}
        return None

    def _drop_sockets(self, run: _Run) -> None:
        for socket in self.targets(run.client) or self.targets(None):
            socket.abort()

    def _save_images(self, params: dict[str, Any], prefix: str, kind: str) -> list[dict[str, Any]]:
        subfolder, filename, counter = self._save_path(prefix, kind)
        results = []
        for index in range(params["batch"]):
            name = f"{filename}_{counter:05}_.png"
            data = synth.image(params["seed"], params["prompt"], params["width"], params["height"], index)
            self.files[(kind, posixpath.join(subfolder, name))] = data
            results.append({"filename": name, "subfolder": subfolder, "type": kind})
            counter += 1
        return results

    def _save_video(self, params: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
        kind = "output" if inputs.get("save_output", True) else "temp"
        fmt = str(inputs.get("format", "image/webp"))
        ext = "gif" if fmt == "image/gif" else "webp"
        prefix = str(inputs.get("filename_prefix", "AnimateDiff"))
        subfolder, filename, counter = self._save_path(prefix, kind)
        name = f"{filename}_{counter:05}.{ext}"
        path = posixpath.join(subfolder, name)
        self.files[(kind, path)] = synth.animation(params["seed"], params["prompt"], fmt=ext.upper())
        self.files[(kind, posixpath.join(subfolder, f"{filename}_{counter:05}.png"))] = synth.image(
            params["seed"], params["prompt"], 256, 256)
        return {"filename": name, "subfolder": subfolder, "type": kind, "format": fmt,
                "frame_rate": float(inputs.get("frame_rate", 8)), "workflow": f"{filename}_{counter:05}.png",
                "fullpath": f"/app/ComfyUI/{kind}/{path}"}


def _fake_traceback(failure: NodeFailure, class_type: str) -> list[str]:
    return [
        '  File "/app/ComfyUI/execution.py", line 496, in execute\n    output_data, output_ui, has_subgraph, '
        "has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, "
        "execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, "
        "hidden_inputs=hidden_inputs)\n",
        '  File "/app/ComfyUI/execution.py", line 315, in get_output_data\n    return_values = await '
        "_async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, "
        "allow_interrupt=True, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, "
        "hidden_inputs=hidden_inputs)\n",
        f'  File "/app/ComfyUI/nodes.py", line 1525, in {class_type.lower()}\n    raise '
        f"{failure.exception_type.rsplit('.', 1)[-1]}({str(failure)!r})\n",
    ]


def _is_link(value: Any, prompt: dict[str, Any]) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] in prompt


def _workflow_params(prompt: dict[str, Any]) -> dict[str, Any]:
    """Seed, prompt text, size and batch the synthetic outputs are made from."""
    try:
        params = _read_workflow(prompt)
        params["width"], params["height"] = int(params["width"]), int(params["height"])
        return params
    except (TypeError, ValueError, AttributeError):
        return {"seed": 0, "prompt": "", "width": 512, "height": 512, "batch": 1}


def _annotated(name: str) -> tuple[str, str | None]:
    """folder_paths.annotated_filepath: `x.png [output]` names its folder."""
    for kind in FOLDER_TYPES:
        suffix = f" [{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


async def _send(socket: Socket, payload: str | bytes) -> None:
    if socket.ws.closed:
        return
    try:
        if isinstance(payload, bytes):
            await socket.ws.send_bytes(payload)
        else:
            await socket.ws.send_str(payload)
    except (ConnectionError, RuntimeError):
        pass


def _server_error() -> web.Response:
    """What aiohttp answers when a handler raises (e.g. on a body that is not JSON)."""
    return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble",
                        content_type="text/plain")


# --- routes ------------------------------------------------------------------------------------

# server_id -> the backend of that Ready machine, or None; provided by machines.register
BACKENDS: web.AppKey[Callable[[str], ComfyUI | None]] = web.AppKey("comfyui_backends")


def register(app: web.Application, state: Any) -> None:
    """Mount every Ready machine's ComfyUI under `/machines/{server_id}` (after machines.register)."""
    app.add_routes(routes(app[BACKENDS], state))


def routes(backend_for: Callable[[str], ComfyUI | None], state: Any) -> web.RouteTableDef:
    """The backend of every Ready machine; `backend_for(server_id)` finds it (None: 404)."""
    table = web.RouteTableDef()
    faults = state.faults

    def find(request: web.Request) -> ComfyUI | None:
        if "Authorization" in request.headers or "X-API-Key" in request.headers:
            state.leaks.append(request.path)  # served anyway (ComfyUI ignores it), but it is a leak
        return backend_for(request.match_info["server_id"])

    def with_backend(
        handler: Callable[[web.Request, ComfyUI], Awaitable[web.StreamResponse]],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Resolve the machine a route names; an unknown or not-Ready one gets an empty 404."""

        @functools.wraps(handler)
        async def resolved(request: web.Request) -> web.StreamResponse:
            backend = find(request)
            if backend is None:
                return web.Response(status=404)
            return await handler(request, backend)

        return resolved

    async def fault(request: web.Request, backend: ComfyUI, operation: str,
                    names: set[str] | None = None) -> web.StreamResponse | None:
        found = faults.take(backend.server_id, operation, names or BACKEND_FAULTS)
        if found is None:
            return None
        if found.name == "server_error":
            return _server_error()
        if found.name == "http_error":
            return web.Response(status=int(found.params.get("status", 500)))
        if found.name == "drop":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if found.name == "delay":
            await asyncio.sleep(float(found.params.get("seconds", 1)))
        return None

    for prefix in ("/machines/{server_id}", "/machines/{server_id}/api"):

        @table.post(f"{prefix}/prompt")
        @with_backend
        async def post_prompt(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            if (reply := await fault(request, backend, "submit")):
                return reply
            try:
                body = await request.json()
                if "number" in body:
                    number: float = float(body["number"])
                else:
                    number = -backend.number if body.get("front") else backend.number
                    backend.number += 1
                if "prompt" not in body:
                    error = _error("no_prompt", "No prompt provided", "No prompt provided")
                    return web.json_response({"error": error, "node_errors": {}}, status=400)
                prompt = body["prompt"]
                prompt_id = str(body.get("prompt_id", uuid.uuid4()))
                partial = body.get("partial_execution_targets")
                valid = backend.validate(prompt, partial)
                extra_data = body.get("extra_data", {})
                if "client_id" in body:
                    extra_data["client_id"] = body["client_id"]
                if not valid[0]:
                    return web.json_response({"error": valid[1], "node_errors": valid[3]}, status=400)
                sensitive = {k: extra_data.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra_data}
            except Exception:  # ComfyUI lets these reach aiohttp: a 500 text page
                return _server_error()
            await backend.put(Item(number, prompt_id, prompt, extra_data, valid[2], sensitive))
            return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": valid[3]})

        @table.get(f"{prefix}/prompt")
        @with_backend
        async def get_prompt(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            return web.json_response(backend.queue_info())

        @table.get(f"{prefix}/object_info")
        @with_backend
        async def object_info(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            return web.json_response(backend.schemas())

        @table.get(f"{prefix}/object_info/{{node_class}}")
        @with_backend
        async def object_info_one(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            name = request.match_info["node_class"]
            schemas = backend.schemas()
            return web.json_response({name: schemas[name]} if name in schemas else {})

        @table.get(f"{prefix}/system_stats")
        @with_backend
        async def system_stats(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            return web.json_response(backend.system_stats())

        @table.get(f"{prefix}/features")
        @with_backend
        async def features(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            return web.json_response(backend.features())

        @table.post(f"{prefix}/upload/image")
        @with_backend
        async def upload_image(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            return await _upload(request, backend, mask=False)

        @table.post(f"{prefix}/upload/mask")
        @with_backend
        async def upload_mask(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            return await _upload(request, backend, mask=True)

        @table.get(f"{prefix}/view")
        @with_backend
        async def view(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            if (reply := await fault(request, backend, "download")):
                return reply
            return await _view(request, backend, faults)

        @table.get(f"{prefix}/history")
        @with_backend
        async def history(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            if (reply := await fault(request, backend, "status")):
                return reply
            try:
                max_items = int(request.query["max_items"]) if "max_items" in request.query else None
                offset = int(request.query["offset"]) if "offset" in request.query else -1
            except ValueError:
                return _server_error()
            return web.json_response(backend.get_history(max_items, offset))

        @table.get(f"{prefix}/history/{{prompt_id}}")
        @with_backend
        async def history_one(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            if (reply := await fault(request, backend, "status")):
                return reply
            prompt_id = request.match_info["prompt_id"]
            entry = backend.history.get(prompt_id)
            return web.json_response({prompt_id: entry} if entry is not None else {})

        @table.post(f"{prefix}/history")
        @with_backend
        async def post_history(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            try:
                body = await request.json()
                if body.get("clear"):
                    backend.history.clear()
                for prompt_id in body.get("delete", []):
                    backend.history.pop(prompt_id, None)
            except Exception:
                return _server_error()
            return web.Response(status=200)

        @table.get(f"{prefix}/queue")
        @with_backend
        async def get_queue(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            if (reply := await fault(request, backend, "status")):
                return reply
            running = [backend.running.public()] if backend.running else []
            return web.json_response({"queue_running": running,
                                      "queue_pending": [i.public() for i in backend.sorted_pending()]})

        @table.post(f"{prefix}/queue")
        @with_backend
        async def post_queue(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            try:
                body = await request.json()
                if body.get("clear"):
                    await backend.wipe_queue()
                for prompt_id in body.get("delete", []):
                    await backend.delete_pending(prompt_id)
            except Exception:
                return _server_error()
            return web.Response(status=200)

        @table.post(f"{prefix}/interrupt")
        @with_backend
        async def interrupt(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            try:
                body = await request.json()
            except ValueError:
                body = {}
            try:
                backend.interrupt(body.get("prompt_id"))
            except Exception:
                return _server_error()
            return web.Response(status=200)

        @table.post(f"{prefix}/free")
        @with_backend
        async def free(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            try:
                body = await request.json()
                backend.free(bool(body.get("unload_models", False)), bool(body.get("free_memory", False)))
            except Exception:
                return _server_error()
            return web.Response(status=200)

        @table.get(f"{prefix}/ws")
        @with_backend
        async def websocket(request: web.Request, backend: ComfyUI) -> web.StreamResponse:
            if refused := faults.take(backend.server_id, "ws", {"ws_refused"}):
                return refused_handshake(refused)
            ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
            await ws.prepare(request)
            sid = request.query.get("clientId", "")
            if sid:
                backend.sockets.pop(sid, None)
            else:
                sid = uuid.uuid4().hex
            socket = Socket(ws, request.transport)
            backend.sockets[sid] = socket
            try:
                await backend.send("status", {"status": backend.queue_info(), "sid": sid}, sid)
                if backend.client_id == sid and backend.last_node_id is not None:
                    await backend.send("executing", {"node": backend.last_node_id}, sid)
                await listen(ws, socket, lambda: backend.send("feature_flags", backend.features(), sid))
            finally:
                # as in ComfyUI: the id is forgotten even if a newer socket has taken it over
                backend.sockets.pop(sid, None)
            return ws

    return table


def refused_handshake(fault: Fault) -> web.Response:
    """The answer of a `ws_refused` fault to a WebSocket upgrade."""
    return web.Response(status=int(fault.params.get("status", 429)), text="Too Many Requests",
                        headers={"Retry-After": str(fault.params.get("retry_after", 0))})


async def listen(ws: web.WebSocketResponse, socket: Socket,
                 reply_flags: Callable[[], Awaitable[None]]) -> None:
    """Read a client's messages until it goes: a first `feature_flags` message sets `socket.flags` and
    is answered by `reply_flags()`; anything else is ignored."""
    first_message = True
    async for message in ws:
        if message.type != WSMsgType.TEXT:
            continue
        try:
            data = json.loads(message.data)
            if first_message and data.get("type") == "feature_flags":
                flags = data.get("data", {})
                socket.flags = flags if isinstance(flags, dict) else {}
                await reply_flags()
            first_message = False
        except Exception:
            pass


async def _upload(request: web.Request, backend: ComfyUI, *, mask: bool) -> web.StreamResponse:
    post = await request.post()
    image = post.get("image")
    if not isinstance(image, web.FileField):
        return web.Response(status=400)
    kind = str(post.get("type") or "input")
    if kind not in FOLDER_TYPES:
        return _server_error()  # ComfyUI's get_dir_by_type leaves the directory unbound
    filename = image.filename
    if not filename:
        return web.Response(status=400)
    subfolder = str(post.get("subfolder", ""))
    base = f"/comfy/{kind}"
    folder = posixpath.join(base, posixpath.normpath(subfolder))
    path = posixpath.normpath(posixpath.join(folder, filename))
    if posixpath.commonpath((base, path)) != base:
        return web.Response(status=400)
    data = image.file.read()
    if len(data) > MAX_UPLOAD:
        return web.Response(status=413)
    overwrite = post.get("overwrite")
    stem, ext = posixpath.splitext(filename)
    duplicate = False
    if overwrite not in ("true", "1"):
        n = 1
        while (kind, posixpath.relpath(path, base)) in backend.files:
            if backend.files[(kind, posixpath.relpath(path, base))] == data:
                duplicate = True
                break
            filename = f"{stem} ({n}){ext}"
            path = posixpath.normpath(posixpath.join(folder, filename))
            n += 1
    if not duplicate:
        key = (kind, posixpath.relpath(path, base))
        if mask:
            merged = _apply_mask(backend, str(post.get("original_ref", "{}")), data)
            if merged is not None:
                backend.files[key] = merged
        else:
            backend.files[key] = data
    return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})


def _apply_mask(backend: ComfyUI, original_ref: str, mask: bytes) -> bytes | None:
    """The original image with the mask's alpha; None when the original is missing (nothing saved)."""
    try:
        ref = json.loads(original_ref)
        name, kind = _annotated(ref["filename"])
        if not name or name[0] == "/" or ".." in name:
            return None
        kind = kind or ref.get("type", "output")
        subfolder = ref.get("subfolder", "")
        if ".." in posixpath.normpath(subfolder).split("/"):
            return None
        original = backend.files.get((kind, posixpath.normpath(posixpath.join(subfolder, name))))
        return None if original is None else mask_onto(original, mask)
    except Exception:
        return None


def mask_onto(original: bytes, mask: bytes) -> bytes:
    """The original image (PNG) with the mask's alpha channel."""
    from PIL import Image

    picture = Image.open(io.BytesIO(original)).convert("RGBA")
    alpha = Image.open(io.BytesIO(mask)).convert("RGBA").getchannel("A").resize(picture.size)
    picture.putalpha(alpha)
    out = io.BytesIO()
    picture.save(out, "PNG", compress_level=4)
    return out.getvalue()


async def _view(request: web.Request, backend: ComfyUI, faults: Any) -> web.StreamResponse:
    query = request.query
    if "filename" not in query:
        return web.Response(status=404)
    filename, kind = _annotated(query["filename"])
    if not filename:
        return web.Response(status=400)
    if filename[0] == "/" or ".." in filename:
        return web.Response(status=400)
    kind = kind or query.get("type", "output")
    if kind not in FOLDER_TYPES:
        return web.Response(status=400)
    base = f"/comfy/{kind}"
    folder = base
    if "subfolder" in query:
        folder = posixpath.normpath(posixpath.join(base, query["subfolder"]))
        if posixpath.commonpath((folder, base)) != base:
            return web.Response(status=403)
    filename = posixpath.basename(filename)
    data = backend.files.get((kind, posixpath.relpath(posixpath.join(folder, filename), base)))
    if data is None:
        return web.Response(status=404)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if "preview" in query or query.get("channel", "rgba") != "rgba":
        converted = _convert(data, query.get("preview", ""), query.get("channel", "rgba"))
        if converted is not None:
            data, content_type = converted
    if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript",
                        "text/css"}:
        content_type = "application/octet-stream"
    headers = {"Content-Disposition": f'filename="{filename}"', "Content-Type": content_type}
    if faults.take(backend.server_id, "download", {"truncate"}):
        response = web.StreamResponse(headers=headers)
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError
    return web.Response(body=data, headers=headers)


def _convert(data: bytes, preview: str, channel: str) -> tuple[bytes, str] | None:
    from PIL import Image

    try:
        picture = Image.open(io.BytesIO(data))
    except Exception:
        return None
    out = io.BytesIO()
    if preview:
        fmt, _, quality = preview.partition(";")
        fmt = fmt if fmt in ("webp", "jpeg") else "webp"
        picture = picture.convert("RGB")
        picture.save(out, fmt.upper(), quality=int(quality) if quality.isdigit() else 90)
        return out.getvalue(), f"image/{fmt}"
    if channel == "rgb":
        picture.convert("RGB").save(out, "PNG")
    elif channel == "a":
        alpha = picture.convert("RGBA").getchannel("A")
        Image.merge("RGBA", (alpha, alpha, alpha, alpha)).save(out, "PNG")
    else:
        return None
    return out.getvalue(), "image/png"
