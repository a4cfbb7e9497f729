"""Comfy Cloud's names and limits, its settings and their defaults, the status vocabularies, the
error categories, the error body, and the partner node."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from .. import faults as faults_
from ..comfyui.nodes import node_info

BASE = "/cloud"
API = f"{BASE}/api"
STORAGE = "/cloud-storage"
TARGET = "cloud"  # the fault target
TIERS = {"standard": 1, "creator": 3, "pro": 5}  # running jobs at once
MAX_UPLOAD = 50 * 1024 * 1024
MAX_EDGE, MAX_PIXELS = 16384, 64 * 1024 * 1024
PARTNER_NODE = "FluxProUltraImageNode"
PARTNER_UNAUTHORIZED = "Unauthorized: Please login first to use this node."
NOTIFICATION = "Executing workflow..."
CLOUD_FAULTS = faults_.REQUEST_FAULTS - {"body_error"}
ACCOUNT_DEFAULTS: dict[str, Any] = {"tier": "creator", "active": True, "credits": 1000.0}
DEFAULTS: dict[str, Any] = {
    "status_vocabulary": "guide", "step_seconds": 0.5, "node_seconds": 0.2, "load_seconds": 3.0,
    "partner_seconds": 2.0, "previews": True, "url_seconds": 3600.0,
    "checkpoints": ["flux1-dev-fp8.safetensors", "sd_xl_base_1.0.safetensors",
                    "v1-5-pruned-emaonly-fp16.safetensors"],
}
# the emulator's phases: waiting (in the account's queue), pending (handed to a worker, not started),
# in_progress, completed, failed, cancelled; and how each vocabulary spells them
PHASES = ("waiting", "pending", "in_progress", "completed", "failed", "cancelled")
VOCABULARIES = {
    "guide": ("pending", "pending", "in_progress", "completed", "failed", "cancelled"),
    "openapi": ("waiting_to_dispatch", "pending", "in_progress", "completed", "error", "cancelled"),
    "newer": ("queued_waiting", "preparing", "executing", "success", "error", "cancelled"),
}
JOB_STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")  # /api/jobs
CLOUD_ERRORS = {  # execution_error.exception_type categories: the default message of each
    "ValidationError": "Invalid workflow or inputs: a node input was rejected at run time",
    "ModelDownloadError": "Required model not available: failed to download 'flux1-dev-fp8.safetensors'",
    "ImageDownloadError": "Failed to download input image from URL (HTTP 404)",
    "OOMError": "Out of GPU memory: CUDA out of memory. Tried to allocate 2.00 GiB",
    "PanicError": "The inference worker crashed",
    "ServiceError": "Internal service error",
    "WebSocketError": "Lost the connection to the inference worker",
    "DispatcherError": "The job could not be dispatched to an inference worker",
    "InsufficientFundsError": "Account balance too low to run Partner Nodes",
    "InactiveSubscriptionError": "Subscription not active",
}


def problem(status: int, code: str, message: str) -> web.Response:
    """Cloud's error body: `{"code": ..., "message": ...}`."""
    return web.json_response({"code": code, "message": message}, status=status)


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ms(ts: float | None) -> int | None:
    return None if ts is None else int(ts * 1000)


def partner_schema() -> dict[str, Any]:
    """`/object_info` of the partner (API) node."""
    info = node_info(
        PARTNER_NODE,
        {"prompt": ["STRING", {"multiline": True, "default": "",
                               "tooltip": "Prompt for the image generation"}],
         "prompt_upsampling": ["BOOLEAN", {"default": False}],
         "seed": ["INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFE, "control_after_generate": True}],
         "aspect_ratio": ["STRING", {"default": "16:9"}],
         "raw": ["BOOLEAN", {"default": False}]},
        ["IMAGE"], category="api node/image/BFL", display="Flux 1.1 [pro] Ultra Image",
        optional={"image_prompt": ["IMAGE", {}],
                  "image_prompt_strength": ["FLOAT", {"default": 0.1, "min": 0.0, "max": 1.0, "step": 0.01}]},
        hidden={"auth_token": "AUTH_TOKEN_COMFY_ORG", "comfy_api_key": "API_KEY_COMFY_ORG",
                "unique_id": "UNIQUE_ID"},
        module="comfy_api_nodes.nodes_bfl",
        description="Generates images using Flux Pro 1.1 Ultra via api based on prompt and resolution.")
    info["api_node"] = True
    return info


def copy_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, list) else v for k, v in settings.items()}

