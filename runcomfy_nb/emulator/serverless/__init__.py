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
  12 VHS_VideoCombine (format video/h264-mp4). Output: node 12 `gifs` with one H.264 MP4
  `ComfyUI_00001.mp4` (24 frames at 12 fps, 256×256, ~6 KB; an animated WebP when PyAV is
  missing or the override asks for image/webp). 5 s.
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

from typing import Any

from aiohttp import web

from ..routing import mount
from .deployments import DEPLOYMENT_DEFAULTS, Request, Serverless
from .routes import ServerlessAPI

__all__ = ["DEPLOYMENT_DEFAULTS", "KEY", "Request", "Serverless", "register"]

KEY = web.AppKey("serverless", Serverless)


def register(app: web.Application, state: Any) -> None:
    """Mount the serverless API: the config's deployments, its routes, bearer auth on `/prod/v1|v2`."""
    serverless = app[KEY] = Serverless(state, state.config.get("deployments", []))
    state.bearer_prefixes.extend(["/prod/v1/", "/prod/v2/"])
    mount(app, ServerlessAPI(serverless))
