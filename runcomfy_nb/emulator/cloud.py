"""Comfy Cloud (cloud.comfy.org), as api/comfy-cloud.md has it, on the base path `/cloud`.

A client configured with `comfy_cloud_url = emulator.cloud_url` (`{emulator.url}/cloud`) finds the HTTP
API under `{base}/api/...` and the WebSocket at `{base}/ws?clientId=...&token=<key>`. Every request
needs `X-API-Key: <key>` (`Emulator.comfy_api_key`; more accounts: `Emulator.cloud_account(key)`) except
GET `/api/system_stats`; a missing or unknown key answers 401 `{"code", "message"}`, as do the other
errors (the WebSocket: the upgrade is refused with 401).

Routes under `/cloud/api`: POST `/prompt`, GET `/job/{id}/status`, GET `/jobs/{id}`, GET
`/jobs?status=&limit=&offset=&sort_by=create_time&sort_order=`, GET `/history_v2[?max_items=&offset=]`
(the list), GET `/history_v2/{id}`, POST
`/upload/image`, `/upload/mask`, GET `/view`, GET/POST `/queue`, POST `/interrupt`, GET
`/object_info[/{class}]`, `/user`, `/system_stats`, `/features`; GET `/history/{id}` is 404, as on Cloud.
GET `/view` answers 302 to a signed URL `/cloud-storage/{user_id}/{filename}?Expires=&Signature=` (`channel=
rgb|a`: 200 PNG bytes); that URL serves the bytes without auth, refuses a bad or expired signature (403)
and refuses (403, recorded in `Emulator.leaks`) a request carrying `X-API-Key` or `Authorization`.
Uploads are flat and content-addressed (`{sha256}{ext}`; `subfolder` and `overwrite` are ignored,
`type` defaults to `output`); over 50 MB, 16384 px per edge or 64 MP → 400.

The engine is comfyui.py's: an account runs its jobs on `Worker`s (ComfyUI backends whose messages go to
every socket of the account, clientId being ignored, and whose files are the account's store), as many
at once as its tier allows (Standard 1, Creator 3, Pro 5); the other jobs wait in the account's queue.
Messages are ComfyUI's plus `notification` `{"value": "Executing workflow..."}` when a job starts; the
`status` messages count the account's unfinished jobs. Previews: type 4 to sockets whose first message
announced `supports_preview_metadata`, else type 1.

Account settings (`Emulator.cloud_account(key=None, **changes)`; the main account's also from the
config's "cloud" object): `tier` ("standard" | "creator" | "pro"; default "creator"), `active` (False:
POST /api/prompt answers 429 "subscription inactive", GET /api/user says "waitlisted"), `credits` (the
balance, which jobs do not spend; 0 or less: POST /api/prompt answers 402). Cloud settings
(`Emulator.cloud_settings(**changes)` or the config's "cloud" object): `status_vocabulary` of GET
/api/job/{id}/status — "guide" (pending, in_progress, completed, failed, cancelled; the default and what
/api/jobs always says), "openapi" (waiting_to_dispatch, pending, in_progress, completed, error,
cancelled) or "newer" (queued_waiting, preparing, executing, success, error, cancelled);
`step_seconds`, `node_seconds`, `load_seconds`, `partner_seconds` (virtual), `previews`, `url_seconds`
(real seconds a signed URL stays valid; 0 or less: already expired), `checkpoints`.

Partner node `FluxProUltraImageNode` ("Flux 1.1 [pro] Ultra Image", category "api node/image/BFL",
output IMAGE): unless the prompt's `extra_data.api_key_comfy_org` is the account's key, the job fails at
run time with an `execution_error` (`Exception`, "Unauthorized: Please login first to use this node.").
`api_key_comfy_org` / `auth_token_comfy_org` never appear in queue items, history or jobs.

Faults (target "cloud" or "*"): the request faults `rate_limit`, `server_error`, `http_error` (`status`,
`code`, `message`), `drop` and `delay` on POST /prompt ("submit"; `drop`/`delay` after the job was
taken), uploads ("upload"), job status, job lists, queue, user, object_info, features and system_stats
("status"), /jobs/{id} and /history_v2 ("result"), /view ("download"; `truncate` applies to the storage
URL), POST /queue and /interrupt ("cancel"); comfyui.py's `ws_refused` (the WebSocket handshake is
answered 429 with `Retry-After`), `ws_drop` and `node_raises` (on "run"): with an
`exception_type` of CLOUD_ERRORS (ValidationError, ModelDownloadError, ImageDownloadError, OOMError,
InsufficientFundsError, InactiveSubscriptionError, ...) the job fails with that category and, unless
`message` is given, a fitting message.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import io
import json
import posixpath
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from aiohttp import web

from . import faults as faults_
from .comfyui import ComfyUI
from .comfyui.files import convert, mask_onto
from .comfyui.nodes import FOLDER_TYPES, IMAGE_EXTENSIONS, SENSITIVE_EXTRA_DATA_KEYS, node_info
from .comfyui.routes import listen, refused_handshake
from .comfyui.server import Item, NodeFailure, Run, Socket, annotated, send_to
from .comfyui.validate import error_info
from .envelope import origin
from .storage import serve_file

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


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(ts: float | None) -> int | None:
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


class Worker(ComfyUI):
    """One inference worker of an account: comfyui.py's engine, its messages sent to every socket of the
    account, its files the account's flat store, its prompts the account's jobs."""

    def __init__(self, account: Account, name: str) -> None:
        cloud = account.cloud
        super().__init__(TARGET, cloud.state, cloud.settings, "2xl-turbo", [])
        self.account, self.name = account, name
        self.files = account.files
        self.configure(cloud.settings)

    def configure(self, settings: dict[str, Any]) -> None:
        """Take the cloud's settings: timings, previews, and the checkpoints (the presets' too)."""
        presets = [node["inputs"].get("ckpt_name") for preset in self.state.presets.values()
                   for node in preset.values() if node.get("class_type") == "CheckpointLoaderSimple"]
        self.checkpoints = sorted({*settings["checkpoints"], *filter(None, presets)})
        self.step_seconds = float(settings["step_seconds"])
        self.node_seconds = float(settings["node_seconds"])
        self.load_seconds = float(settings["load_seconds"])
        self.partner_seconds = float(settings["partner_seconds"])
        self.previews = bool(settings["previews"])

    # --- what differs from a machine's ComfyUI ---------------------------------------------
    def schemas(self) -> dict[str, dict[str, Any]]:
        return {**super().schemas(), PARTNER_NODE: partner_schema()}

    def input_images(self) -> list[str]:
        return sorted({posixpath.basename(path) for (_, path) in self.files
                       if path.lower().endswith(IMAGE_EXTENSIONS)})

    def exists(self, filename: str, default: str = "input") -> bool:
        return self.account.find(annotated(filename)[0]) is not None

    @staticmethod
    def features() -> dict[str, Any]:
        return {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD}

    def targets(self, sid: str | None) -> list[Socket]:
        return list(self.account.sockets)

    def client_of(self, item: Item) -> str | None:
        return item.prompt_id  # never None: every message is sent

    async def queue_updated(self) -> None:
        await self.account.send_status()

    async def finished(self, item: Item, entry: dict[str, Any]) -> None:
        await self.account.finished(item, entry)

    async def _execute(self, run: Run) -> bool:
        await self.account.started(run.item)
        return await super()._execute(run)

    def _arm_faults(self, run: Run, order: list[str]) -> None:
        super()._arm_faults(run, order)
        raises = run.raises
        if raises is not None and raises.params.get("exception_type") in CLOUD_ERRORS:
            message = CLOUD_ERRORS[raises.params["exception_type"]]
            run.raises = copy.copy(raises)  # the armed fault keeps its own params
            run.raises.params = {"message": message, **raises.params}

    async def _run_node(self, run: Run, node_id: str, class_type: str,
                        inputs: dict[str, Any]) -> dict[str, Any] | None:
        if class_type != PARTNER_NODE:
            return await super()._run_node(run, node_id, class_type, inputs)
        self._check(run, node_id)
        given = str(run.item.sensitive.get("api_key_comfy_org", "")).encode()
        if not hmac.compare_digest(given, self.account.key.encode()):
            raise NodeFailure("Exception", PARTNER_UNAUTHORIZED)
        await self.state.clock.sleep(self.partner_seconds)
        self._check(run, node_id)
        return None


@dataclass(eq=False)
class Job:
    """One prompt of an account; times are wall-clock epochs."""

    item: Item = field(repr=False)
    account: Account = field(repr=False)
    created: float = field(default_factory=time.time)
    updated: float = 0.0
    phase: str = "waiting"  # see PHASES
    worker: Worker | None = field(default=None, repr=False)
    started: float | None = None
    ended: float | None = None
    entry: dict[str, Any] | None = field(default=None, repr=False)  # the history entry, once it ran

    def __post_init__(self) -> None:
        self.updated = self.created

    @property
    def id(self) -> str:
        return self.item.prompt_id

    @property
    def done(self) -> bool:
        return self.phase in ("completed", "failed", "cancelled")

    def move(self, phase: str) -> None:
        self.phase, self.updated = phase, time.time()

    def word(self, vocabulary: str) -> str:
        return VOCABULARIES[vocabulary][PHASES.index(self.phase)]

    def error(self) -> dict[str, Any] | None:
        """execution_error of a failed job."""
        if self.phase != "failed" or self.entry is None:
            return None
        messages = self.entry["status"]["messages"]
        data: dict[str, Any] = next((m[1] for m in reversed(messages) if m[0] == "execution_error"), {})
        return {"node_id": data.get("node_id"), "node_type": data.get("node_type"),
                "exception_message": data.get("exception_message", ""),
                "exception_type": data.get("exception_type", ""), "traceback": data.get("traceback", []),
                "current_inputs": data.get("current_inputs", {}),
                "current_outputs": data.get("current_outputs", [])}

    def status(self, vocabulary: str) -> dict[str, Any]:
        """GET /api/job/{id}/status."""
        error = self.error()
        return {"id": self.id, "status": self.word(vocabulary), "created_at": _iso(self.created),
                "updated_at": _iso(self.updated), "last_state_update": _iso(self.updated),
                "assigned_inference": self.worker.name if self.worker else None,
                "error_message": error["exception_message"] if error else None}

    def body(self, full: bool = True) -> dict[str, Any]:
        """GET /api/jobs/{id} (`full`), or an entry of GET /api/jobs."""
        outputs = self.entry["outputs"] if self.entry else {}
        files = [item for node in outputs.values() for items in node.values() if isinstance(items, list)
                 for item in items if isinstance(item, dict) and "filename" in item]
        body: dict[str, Any] = {
            "id": self.id, "status": self.word("guide"), "create_time": int(self.created),
            "update_time": int(self.updated), "outputs": outputs, "outputs_count": len(files),
            "preview_output": files[0] if files else None,
            "execution_status": self.entry["status"] if self.entry else None,
            "execution_start_time": _ms(self.started), "execution_end_time": _ms(self.ended)}
        if not full:
            del body["outputs"], body["execution_status"]
        if (error := self.error()) is not None:
            body["execution_error"] = error
        return body

    def queue_item(self) -> list[Any]:
        return [self.item.number, self.id, self.item.prompt, self.item.outputs,
                {"create_time": _ms(self.created)}]


class Account:
    """A Comfy Cloud user: its key, plan, files, queue, inference workers and sockets."""

    def __init__(self, cloud: Cloud, key: str, user_id: str) -> None:
        self.cloud, self.key, self.user_id = cloud, key, user_id
        self.tier: str = ACCOUNT_DEFAULTS["tier"]
        self.active: bool = ACCOUNT_DEFAULTS["active"]
        self.credits: float = ACCOUNT_DEFAULTS["credits"]
        self.files: dict[tuple[str, str], bytes] = {}
        self.queue: list[Job] = []  # waiting for a worker, oldest first
        self.workers: list[Worker] = []
        self.sockets: list[Socket] = []
        self.number = 0

    def __repr__(self) -> str:
        return f"<cloud Account {self.user_id} {self.tier}>"

    def settings(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "tier": self.tier, "active": self.active, "credits": self.credits}

    def jobs(self) -> list[Job]:
        return [job for job in self.cloud.jobs.values() if job.account is self]

    def find(self, filename: str) -> bytes | None:
        """A file by its name alone: the store is flat (`subfolder` and `type` do not matter)."""
        name = posixpath.basename(filename)
        found = (data for (_, path), data in self.files.items() if posixpath.basename(path) == name)
        return next(found, None)

    def validator(self) -> Worker:
        return self.workers[0] if self.workers else self._new_worker()

    def _new_worker(self) -> Worker:
        worker = Worker(self, self.cloud.worker_name())
        worker.start()
        self.workers.append(worker)
        return worker

    # --- jobs ------------------------------------------------------------------------------
    async def submit(self, prompt: dict[str, Any], extra_data: dict[str, Any], outputs: list[str],
                     sensitive: dict[str, Any]) -> Job:
        item = Item(self.number, str(uuid.uuid4()), prompt, extra_data, outputs, sensitive)
        self.number += 1
        job = Job(item, self)
        self.cloud.jobs[job.id] = job
        self.queue.append(job)
        await self.dispatch()
        if job.phase == "waiting":  # a worker that takes it says so itself
            await self.send_status()
        return job

    async def dispatch(self) -> None:
        """Hand waiting jobs to idle workers while fewer than the tier's limit run."""
        while self.queue:
            idle = [w for w in self.workers if w.running is None and not w.pending]
            if len(self.workers) - len(idle) >= TIERS[self.tier]:
                return
            worker = idle[0] if idle else self._new_worker()
            job = self.queue.pop(0)
            job.worker = worker
            job.move("pending")
            await worker.put(job.item)

    async def started(self, item: Item) -> None:
        job = self.cloud.jobs[item.prompt_id]
        job.move("in_progress")
        job.started = job.updated
        await self.send("notification", {"value": NOTIFICATION})

    async def finished(self, item: Item, entry: dict[str, Any]) -> None:
        job = self.cloud.jobs[item.prompt_id]
        job.entry = entry
        if entry["status"]["status_str"] == "success":
            job.move("completed")
        elif any(m[0] == "execution_interrupted" for m in entry["status"]["messages"]):
            job.move("cancelled")
        else:
            job.move("failed")
        job.ended = job.updated
        await self.dispatch()

    async def delete(self, prompt_ids: list[str]) -> list[str]:
        """Cancel the named jobs that have not started; the ids of those cancelled."""
        deleted = []
        for job in self.jobs():
            if job.id not in prompt_ids:
                continue
            if job in self.queue:
                self.queue.remove(job)
            elif job.worker is not None and any(i is job.item for i in job.worker.pending):
                await job.worker.delete_pending(job.id)
            else:  # running (a worker that took it will start it), or over
                continue
            job.move("cancelled")
            deleted.append(job.id)
        await self.send_status()
        await self.dispatch()
        return deleted

    def interrupt(self) -> None:
        """Interrupt every running job of the account."""
        for worker in self.workers:
            if worker.running is not None:
                worker.interrupt(None)

    # --- WebSocket -------------------------------------------------------------------------
    def status_data(self) -> dict[str, Any]:
        return {"status": {"exec_info": {"queue_remaining": sum(not j.done for j in self.jobs())}}}

    async def send_status(self) -> None:
        await self.send("status", self.status_data())

    async def send(self, event: str, data: Any) -> None:
        text = json.dumps({"type": event, "data": data})
        for socket in list(self.sockets):
            await send_to(socket, text)


class Cloud:
    """The accounts, their jobs, and the settings every account shares."""

    def __init__(self, state: Any, config: dict[str, Any]) -> None:
        self.state = state
        self.settings: dict[str, Any] = copy_settings(DEFAULTS)
        self.accounts: dict[str, Account] = {}  # by key
        self.jobs: dict[str, Job] = {}
        self._secret = secrets.token_bytes(32)  # signs storage URLs
        self._workers = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.configure(**{k: v for k, v in config.items() if k not in ACCOUNT_DEFAULTS})
        self.account(state.comfy_api_key, **{k: v for k, v in config.items() if k in ACCOUNT_DEFAULTS})

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change cloud settings (module docstring); ValueError for an unknown name or value."""
        unknown = set(changes) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown cloud settings {sorted(unknown)}; known: {', '.join(DEFAULTS)}")
        if changes.get("status_vocabulary", "guide") not in VOCABULARIES:
            raise ValueError(f"status_vocabulary must be one of {', '.join(VOCABULARIES)}")
        self.settings.update(changes)
        for account in self.accounts.values():
            for worker in account.workers:
                worker.configure(self.settings)
        return copy_settings(self.settings)

    def account(self, key: str, **changes: Any) -> Account:
        """The account of `key` (created if new) with `tier`, `active`, `credits` changed."""
        unknown = set(changes) - set(ACCOUNT_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown account settings {sorted(unknown)}; known: "
                             f"{', '.join(ACCOUNT_DEFAULTS)}")
        if changes.get("tier", "creator") not in TIERS:
            raise ValueError(f"tier must be one of {', '.join(TIERS)}")
        if not key:
            raise ValueError("an account needs a key")
        account = self.accounts.get(key)
        if account is None:
            account = self.accounts[key] = Account(self, key, f"cloud-user-{len(self.accounts) + 1:04d}")
        for name, value in changes.items():
            setattr(account, name, float(value) if name == "credits" else value)
        if "tier" in changes and account.queue:  # a higher tier starts waiting jobs at once
            task = asyncio.get_running_loop().create_task(account.dispatch())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return account

    def by_key(self, key: str | None) -> Account | None:
        return self.accounts.get(key) if key else None

    def by_user(self, user_id: str) -> Account | None:
        return next((a for a in self.accounts.values() if a.user_id == user_id), None)

    def worker_name(self) -> str:
        self._workers += 1
        return f"inf-{self._workers}"

    # --- signed storage URLs ---------------------------------------------------------------
    def _signature(self, user_id: str, filename: str, expires: str) -> str:
        message = f"{user_id}/{filename}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def signed_url(self, host: str, account: Account, filename: str) -> str:
        expires = str(int(time.time() + float(self.settings["url_seconds"])))
        signature = self._signature(account.user_id, filename, expires)
        return (f"{host}{STORAGE}/{account.user_id}/{quote(filename)}"
                f"?Expires={expires}&Signature={signature}")

    def signature_valid(self, request: web.Request) -> bool:
        expires, signature = request.query.get("Expires", ""), request.query.get("Signature", "")
        expected = self._signature(request.match_info["user_id"], request.match_info["filename"], expires)
        return expires.isdigit() and int(expires) > time.time() and hmac.compare_digest(signature, expected)


def copy_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, list) else v for k, v in settings.items()}


# --- routes ------------------------------------------------------------------------------------

KEY = web.AppKey("cloud", Cloud)


def register(app: web.Application, state: Any) -> None:
    """Mount Comfy Cloud under `/cloud` (its own X-API-Key auth) and its storage under `/cloud-storage`."""
    cloud = Cloud(state, state.config.get("cloud", {}))
    app[KEY] = cloud
    app.add_routes(routes(cloud))


async def _request_fault(request: web.Request, fault: faults_.Fault | None) -> web.StreamResponse | None:
    """A request fault in Cloud's error shape; `drop` never returns, `delay` returns None once waited."""
    if fault is None:
        return None
    params = fault.params
    if fault.name == "rate_limit":
        response = problem(429, "rate_limited", "Too many requests")
        response.headers["Retry-After"] = str(params.get("retry_after", 1))
        return response
    if fault.name == "server_error":
        return problem(500, "internal_error", "Internal server error")
    if fault.name == "http_error":
        code = params.get("code", params.get("error_code", "error"))
        return problem(int(params.get("status", 500)), str(code), str(params.get("message", "Error")))
    return await faults_.reply(request, fault)


Handler = Callable[[web.Request, Account], Awaitable[web.StreamResponse]]
Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def routes(cloud: Cloud) -> web.RouteTableDef:
    table = web.RouteTableDef()
    state = cloud.state
    faults = state.faults

    def authed(operation: str | None) -> Callable[[Handler], Route]:
        """Resolve the account of `X-API-Key` (401 without one), then apply a request fault armed for
        `operation` (None: the handler does)."""

        def wrap(handler: Handler) -> Route:
            async def resolved(request: web.Request) -> web.StreamResponse:
                account = cloud.by_key(request.headers.get("X-API-Key"))
                if account is None:
                    return problem(401, "unauthorized", "Invalid or missing API key (X-API-Key)")
                if operation and (reply := await _request_fault(
                        request, faults.take(TARGET, operation, CLOUD_FAULTS))):
                    return reply
                return await handler(request, account)

            return resolved

        return wrap

    def owned(request: web.Request, account: Account) -> tuple[Job | None, web.Response | None]:
        job = cloud.jobs.get(request.match_info["prompt_id"])
        if job is None:
            return None, problem(404, "not_found", "Job not found")
        if job.account is not account:
            return None, problem(403, "forbidden", "This job belongs to another user")
        return job, None

    @table.post(f"{API}/prompt")
    @authed(None)
    async def submit(request: web.Request, account: Account) -> web.StreamResponse:
        fault = faults.take(TARGET, "submit", CLOUD_FAULTS)
        if fault and fault.name not in ("drop", "delay"):
            return await _request_fault(request, fault)  # type: ignore[return-value]
        if not account.active:
            return problem(429, "subscription_inactive", "Subscription inactive: user has not paid. Running "
                           "workflows needs an active Comfy Cloud subscription (Standard, Creator or Pro)")
        if account.credits <= 0:
            return problem(402, "insufficient_credits", "Insufficient credits: the account's balance is "
                           "too low to run workflows")
        try:
            body = await request.json()
        except ValueError:
            return problem(400, "invalid_request", "The request body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("extra_data", {}), dict):
            return problem(400, "invalid_request", "The body must be an object; extra_data an object")
        if "prompt" not in body:
            error = error_info("no_prompt", "No prompt provided", "No prompt provided")
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = body["prompt"]
        try:
            if not isinstance(prompt, dict):
                raise TypeError("the prompt must be an object keyed by node id")
            valid = account.validator().validate(prompt, body.get("partial_execution_targets"))
        except Exception as exc:
            valid = (False, error_info("invalid_prompt", f"Invalid prompt: {exc}", str(exc)), [], {})
        if not valid[0]:
            return web.json_response({"error": valid[1], "node_errors": valid[3]}, status=400)
        extra_data = dict(body.get("extra_data", {}))
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        sensitive = {k: extra_data.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra_data}
        job = await account.submit(prompt, extra_data, valid[2], sensitive)
        await _request_fault(request, fault)  # drop / delay happen after the job was taken
        return web.json_response({"prompt_id": job.id, "number": job.item.number, "node_errors": valid[3]})

    @table.get(f"{API}/job/{{prompt_id}}/status")
    @authed("status")
    async def job_status(request: web.Request, account: Account) -> web.StreamResponse:
        job, refusal = owned(request, account)
        if job is None:
            return refusal  # type: ignore[return-value]
        return web.json_response(job.status(cloud.settings["status_vocabulary"]))

    @table.get(f"{API}/jobs/{{prompt_id}}")
    @authed("result")
    async def job(request: web.Request, account: Account) -> web.StreamResponse:
        found, refusal = owned(request, account)
        if found is None:
            return refusal  # type: ignore[return-value]
        return web.json_response(found.body())

    @table.get(f"{API}/jobs")
    @authed("status")
    async def jobs(request: web.Request, account: Account) -> web.StreamResponse:
        query = request.query
        try:
            limit, offset = int(query.get("limit", 100)), int(query.get("offset", 0))
        except ValueError:
            return problem(400, "invalid_request", "limit and offset must be integers")
        wanted = [s for s in query.get("status", "").split(",") if s]
        if not (1 <= limit <= 1000 and offset >= 0) or set(wanted) - set(JOB_STATUSES):
            return problem(400, "invalid_request", "limit must be 1..1000, offset at least 0, status a "
                           f"comma-separated list of {', '.join(JOB_STATUSES)}")
        if query.get("sort_by", "create_time") != "create_time" or \
                query.get("sort_order", "desc") not in ("asc", "desc"):
            return problem(400, "invalid_request", "sort_by must be create_time, sort_order asc or desc")
        found = [j for j in account.jobs() if not wanted or j.word("guide") in wanted]
        descending = query.get("sort_order", "desc") == "desc"
        found.sort(key=lambda j: (j.created, j.item.number), reverse=descending)
        page = found[offset:offset + limit]
        return web.json_response({"jobs": [j.body(full=False) for j in page],
                                  "pagination": {"offset": offset, "limit": limit, "total": len(found),
                                                 "has_more": offset + len(page) < len(found)}})

    @table.get(f"{API}/history_v2")
    @authed("result")
    async def history_v2_list(request: web.Request, account: Account) -> web.StreamResponse:
        """The account's ended jobs as ComfyUI's `{prompt_id: entry}` map, oldest first (`max_items`
        alone: the latest ones)."""
        try:
            offset = int(request.query.get("offset", -1))
            max_items = int(request.query["max_items"]) if "max_items" in request.query else None
        except ValueError:
            return problem(400, "invalid_query", "max_items and offset must be integers")
        done = sorted((j for j in account.jobs() if j.entry is not None),
                      key=lambda j: (j.created, j.item.number))
        if offset < 0:  # as ComfyUI: max_items alone means the latest ones
            offset = len(done) - max_items if max_items is not None else 0
        offset = max(0, offset)
        page = done[offset:] if max_items is None else done[offset:offset + max(0, max_items)]
        return web.json_response({j.id: j.entry for j in page})

    @table.get(f"{API}/history_v2/{{prompt_id}}")
    @authed("result")
    async def history_v2(request: web.Request, account: Account) -> web.StreamResponse:
        prompt_id = request.match_info["prompt_id"]
        found = cloud.jobs.get(prompt_id)
        if found is None or found.account is not account or found.entry is None:
            return web.json_response({})
        return web.json_response({prompt_id: found.entry})

    @table.get(f"{API}/history/{{prompt_id}}")
    @authed(None)
    async def history(request: web.Request, account: Account) -> web.StreamResponse:
        return problem(404, "not_found", "GET /api/history/{prompt_id} is not served: use /api/history_v2")

    async def upload(request: web.Request, account: Account, *, mask: bool) -> web.StreamResponse:
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField):
            return problem(400, "invalid_request", "The multipart field `image` (a file) is required")
        kind = str(post.get("type") or "output")
        if kind not in FOLDER_TYPES:
            return problem(400, "invalid_request", f"type must be one of {', '.join(FOLDER_TYPES)}")
        data = image.file.read()
        if len(data) > MAX_UPLOAD:
            return problem(400, "file_too_large", f"The file exceeds {MAX_UPLOAD // 1024**2} MB")
        if (refusal := _check_picture(data)) is not None:
            return refusal
        if mask and post.get("original_ref"):
            try:
                original = account.find(str(json.loads(str(post["original_ref"]))["filename"]))
                if original is not None:
                    data = mask_onto(original, data)
            except Exception:
                return problem(400, "invalid_request", "original_ref must be JSON naming an uploaded image, "
                               "and the mask an image")
        name = hashlib.sha256(data).hexdigest() + posixpath.splitext(image.filename or "")[1].lower()
        account.files[(kind, name)] = data
        return web.json_response({"name": name, "subfolder": "", "type": kind})

    @table.post(f"{API}/upload/image")
    @authed("upload")
    async def upload_image(request: web.Request, account: Account) -> web.StreamResponse:
        return await upload(request, account, mask=False)

    @table.post(f"{API}/upload/mask")
    @authed("upload")
    async def upload_mask(request: web.Request, account: Account) -> web.StreamResponse:
        return await upload(request, account, mask=True)

    @table.get(f"{API}/view")
    @authed("download")
    async def view(request: web.Request, account: Account) -> web.StreamResponse:
        name = posixpath.basename(annotated(request.query.get("filename", ""))[0])
        data = account.find(name) if name else None
        if data is None:
            return problem(404, "not_found", "File not found")
        channel = request.query.get("channel", "rgba")
        if channel in ("rgb", "a"):
            converted = convert(data, "", channel)
            if converted is None:
                return problem(400, "invalid_request", "channel needs an image")
            return web.Response(body=converted[0], content_type="image/png")
        location = cloud.signed_url(origin(request), account, name)
        return web.Response(status=302, headers={"Location": location})

    @table.get(f"{STORAGE}/{{user_id}}/{{filename}}")
    async def storage(request: web.Request) -> web.StreamResponse:
        credentials = "Authorization" in request.headers or "X-API-Key" in request.headers
        if not credentials and not cloud.signature_valid(request):
            return web.json_response({"message": "Invalid or expired signature"}, status=403)
        account = cloud.by_user(request.match_info["user_id"])
        data = account.find(request.match_info["filename"]) if account else None
        return await serve_file(request, state, data, TARGET)

    @table.get(f"{API}/queue")
    @authed("status")
    async def get_queue(request: web.Request, account: Account) -> web.StreamResponse:
        mine = account.jobs()
        return web.json_response({
            "queue_running": [j.queue_item() for j in mine if j.phase == "in_progress"],
            "queue_pending": [j.queue_item() for j in mine if j.phase in ("waiting", "pending")]})

    @table.post(f"{API}/queue")
    @authed("cancel")
    async def post_queue(request: web.Request, account: Account) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return problem(400, "invalid_request", "The request body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("delete", []), list):
            return problem(400, "invalid_request", "Send {\"delete\": [prompt_id, ...]} or {\"clear\": true}")
        cleared = bool(body.get("clear"))
        doomed = [j.id for j in account.jobs()] if cleared else [str(i) for i in body.get("delete", [])]
        return web.json_response({"deleted": await account.delete(doomed), "cleared": cleared})

    @table.post(f"{API}/interrupt")
    @authed("cancel")
    async def interrupt(request: web.Request, account: Account) -> web.StreamResponse:
        account.interrupt()
        return web.Response(status=200)

    @table.get(f"{API}/object_info")
    @authed("status")
    async def object_info(request: web.Request, account: Account) -> web.StreamResponse:
        return web.json_response(account.validator().schemas())

    @table.get(f"{API}/object_info/{{node_class}}")
    @authed("status")
    async def object_info_one(request: web.Request, account: Account) -> web.StreamResponse:
        name, schemas = request.match_info["node_class"], account.validator().schemas()
        return web.json_response({name: schemas[name]} if name in schemas else {})

    @table.get(f"{API}/user")
    @authed("status")
    async def user(request: web.Request, account: Account) -> web.StreamResponse:
        status = "active" if account.active else "waitlisted"
        return web.json_response({"id": account.user_id, "status": status})

    @table.get(f"{API}/features")
    @authed("status")
    async def features(request: web.Request, account: Account) -> web.StreamResponse:
        return web.json_response(Worker.features())

    @table.get(f"{API}/system_stats")
    async def system_stats(request: web.Request) -> web.StreamResponse:
        if reply := await _request_fault(request, faults.take(TARGET, "status", CLOUD_FAULTS)):
            return reply
        main = cloud.accounts[state.comfy_api_key]
        return web.json_response(main.validator().system_stats())

    @table.get(f"{BASE}/ws")
    async def websocket(request: web.Request) -> web.StreamResponse:
        account = cloud.by_key(request.query.get("token"))
        if account is None:
            return problem(401, "unauthorized", "Invalid or missing token")
        if refused := faults.take(TARGET, "ws", {"ws_refused"}):
            return refused_handshake(refused)
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        socket = Socket(ws, request.transport)
        account.sockets.append(socket)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        try:
            await send_to(socket, json.dumps({"type": "status", "data": {**account.status_data(),
                                                                               "sid": sid}}))
            await listen(ws, socket, lambda: send_to(
                socket, json.dumps({"type": "feature_flags", "data": Worker.features()})))
        finally:
            account.sockets.remove(socket)
        return ws

    return table


def _check_picture(data: bytes) -> web.Response | None:
    """400 for an image over 16384 px per edge or 64 MP; other files (video, audio) pass."""
    from PIL import Image

    try:
        width, height = Image.open(io.BytesIO(data)).size
    except Image.DecompressionBombError:
        return problem(400, "image_too_large", f"The image exceeds {MAX_PIXELS // 1024**2} MP")
    except Exception:
        return None
    if max(width, height) > MAX_EDGE or width * height > MAX_PIXELS:
        return problem(400, "image_too_large", f"The image exceeds {MAX_EDGE} px per edge or "
                                               f"{MAX_PIXELS // 1024**2} MP")
    return None
