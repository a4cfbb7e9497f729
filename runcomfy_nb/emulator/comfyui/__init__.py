"""A stock ComfyUI 0.3.64 backend, as api/comfyui-backend.md has it: one per Ready machine.

Served under `/machines/{server_id}` and again under `/machines/{server_id}/api` (no auth: the URL is
the secret; an unknown or not-Ready machine answers 404 with an empty body):
POST/GET `/prompt`, GET `/object_info[/{class}]`, GET `/system_stats`, `/features`, POST
`/upload/image`, `/upload/mask`, GET `/view`, GET/POST `/history`, GET `/history/{prompt_id}`,
GET/POST `/queue`, POST `/interrupt`, POST `/free`, WebSocket `/ws?clientId=`.

The validator and the executor follow ComfyUI's own code (server.py, execution.py, main.py of 0.3.64; here
server.py holds the state, executor.py runs prompts, validate.py checks them, files.py serves files,
routes.py is the table, nodes.py the node classes):
the same 400 bodies, the same message order and routing rules, the same history entry, the same
one-socket-per-clientId quirk, output caching between prompts, and binary preview frames (type 1, or
type 4 for a client whose first message announced `supports_preview_metadata`). Time is virtual: a
sampler step takes `step_seconds`, other nodes `node_seconds`, a checkpoint load `load_seconds`.
cloud/ runs the same engine as Comfy Cloud's inference workers, through the hooks `targets` (which
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

from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..routing import mount
from .executor import ComfyUI
from .nodes import node_schemas
from .routes import BackendAPI

__all__ = ["BACKENDS", "ComfyUI", "node_schemas", "register"]

# server_id -> the backend of that Ready machine, or None; provided by machines.register
BACKENDS: web.AppKey[Callable[[str], ComfyUI | None]] = web.AppKey("comfyui_backends")


def register(app: web.Application, state: Any) -> None:
    """Mount every Ready machine's ComfyUI under `/machines/{server_id}` (after machines.register)."""
    mount(app, BackendAPI(app[BACKENDS], state))
