"""Comfy Cloud's route table: the API under `/cloud/api` (X-API-Key), the WebSocket, signed storage."""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import uuid
from typing import Any

from aiohttp import web

from .. import faults as faults_
from ..comfyui.files import convert, mask_onto
from ..comfyui.nodes import FOLDER_TYPES, SENSITIVE_EXTRA_DATA_KEYS
from ..comfyui.routes import listen, refused_handshake
from ..comfyui.server import Socket, annotated, send_to
from ..comfyui.validate import error_info
from ..envelope import origin
from ..routing import Refused, Route
from ..storage import serve_file
from .accounts import Account, Cloud, Job, Worker
from .settings import (
    API,
    BASE,
    CLOUD_FAULTS,
    JOB_STATUSES,
    MAX_EDGE,
    MAX_PIXELS,
    MAX_UPLOAD,
    STORAGE,
    TARGET,
    problem,
)

WS_FAULTS = frozenset({"ws_refused"})
INACTIVE = ("Subscription inactive: user has not paid. Running workflows needs an active Comfy Cloud "
            "subscription (Standard, Creator or Pro)")


class CloudAPI:
    """Comfy Cloud's handlers over `cloud`, and its table."""

    fault_names = CLOUD_FAULTS

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    @property
    def faults(self) -> faults_.Faults:
        return self.cloud.state.faults

    async def fault_reply(self, request: web.Request, fault: faults_.Fault) -> web.StreamResponse | None:
        """A request fault in Cloud's error shape; `drop` never returns, `delay` returns None once waited."""
        params = fault.params
        if fault.name == "ws_refused":
            return refused_handshake(fault)
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

    def routes(self) -> list[Route]:
        key, anyone = self.account, self.anyone
        return [
            Route("POST", f"{API}/prompt", self.submit, "submit", key, after_taken=True),
            Route("GET", f"{API}/job/{{prompt_id}}/status", self.job_status, "status", key),
            Route("GET", f"{API}/jobs/{{prompt_id}}", self.job, "result", key),
            Route("GET", f"{API}/jobs", self.jobs, "status", key),
            Route("GET", f"{API}/history_v2", self.history_v2_list, "result", key),
            Route("GET", f"{API}/history_v2/{{prompt_id}}", self.history_v2, "result", key),
            Route("GET", f"{API}/history/{{prompt_id}}", self.history, None, key),
            Route("POST", f"{API}/upload/image", self.upload_image, "upload", key),
            Route("POST", f"{API}/upload/mask", self.upload_mask, "upload", key),
            Route("GET", f"{API}/view", self.view, "download", key),
            Route("GET", f"{STORAGE}/{{user_id}}/{{filename}}", self.storage),
            Route("GET", f"{API}/queue", self.get_queue, "status", key),
            Route("POST", f"{API}/queue", self.post_queue, "cancel", key),
            Route("POST", f"{API}/interrupt", self.interrupt, "cancel", key),
            Route("GET", f"{API}/object_info", self.object_info, "status", key),
            Route("GET", f"{API}/object_info/{{node_class}}", self.object_info_one, "status", key),
            Route("GET", f"{API}/user", self.user, "status", key),
            Route("GET", f"{API}/features", self.features, "status", key),
            Route("GET", f"{API}/system_stats", self.system_stats, "status", anyone),
            Route("GET", f"{BASE}/ws", self.websocket, "ws", self.ws_account, names=WS_FAULTS),
        ]

    # --- what a route works on ---------------------------------------------------------------
    async def account(self, request: web.Request) -> tuple[Account, str]:
        """The account of `X-API-Key` (401 without a known one)."""
        account = self.cloud.by_key(request.headers.get("X-API-Key"))
        if account is None:
            raise Refused(problem(401, "unauthorized", "Invalid or missing API key (X-API-Key)"))
        return account, TARGET

    async def ws_account(self, request: web.Request) -> tuple[Account, str]:
        """The account of the WebSocket's `token` (401 without a known one)."""
        account = self.cloud.by_key(request.query.get("token"))
        if account is None:
            raise Refused(problem(401, "unauthorized", "Invalid or missing token"))
        return account, TARGET

    async def anyone(self, request: web.Request) -> tuple[None, str]:
        return None, TARGET

    def owned(self, request: web.Request, account: Account) -> Job:
        job = self.cloud.jobs.get(request.match_info["prompt_id"])
        if job is None:
            raise Refused(problem(404, "not_found", "Job not found"))
        if job.account is not account:
            raise Refused(problem(403, "forbidden", "This job belongs to another user"))
        return job

    # --- jobs ----------------------------------------------------------------------------------
    async def submit(self, request: web.Request, account: Account) -> web.StreamResponse:
        if not account.active:
            return problem(429, "subscription_inactive", INACTIVE)
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
        valid = _validated(account, prompt, body.get("partial_execution_targets"))
        if not valid[0]:
            return web.json_response({"error": valid[1], "node_errors": valid[3]}, status=400)
        extra_data = dict(body.get("extra_data", {}))
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        sensitive = {k: extra_data.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra_data}
        job = await account.submit(prompt, extra_data, valid[2], sensitive)
        return web.json_response({"prompt_id": job.id, "number": job.item.number, "node_errors": valid[3]})

    async def job_status(self, request: web.Request, account: Account) -> web.StreamResponse:
        job = self.owned(request, account)
        return web.json_response(job.status(self.cloud.settings["status_vocabulary"]))

    async def job(self, request: web.Request, account: Account) -> web.StreamResponse:
        return web.json_response(self.owned(request, account).body())

    async def jobs(self, request: web.Request, account: Account) -> web.StreamResponse:
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

    async def history_v2_list(self, request: web.Request, account: Account) -> web.StreamResponse:
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

    async def history_v2(self, request: web.Request, account: Account) -> web.StreamResponse:
        prompt_id = request.match_info["prompt_id"]
        found = self.cloud.jobs.get(prompt_id)
        if found is None or found.account is not account or found.entry is None:
            return web.json_response({})
        return web.json_response({prompt_id: found.entry})

    async def history(self, request: web.Request, account: Account) -> web.StreamResponse:
        return problem(404, "not_found", "GET /api/history/{prompt_id} is not served: use /api/history_v2")

    async def get_queue(self, request: web.Request, account: Account) -> web.StreamResponse:
        mine = account.jobs()
        return web.json_response({
            "queue_running": [j.queue_item() for j in mine if j.phase == "in_progress"],
            "queue_pending": [j.queue_item() for j in mine if j.phase in ("waiting", "pending")]})

    async def post_queue(self, request: web.Request, account: Account) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return problem(400, "invalid_request", "The request body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("delete", []), list):
            return problem(400, "invalid_request", "Send {\"delete\": [prompt_id, ...]} or {\"clear\": true}")
        cleared = bool(body.get("clear"))
        doomed = [j.id for j in account.jobs()] if cleared else [str(i) for i in body.get("delete", [])]
        return web.json_response({"deleted": await account.delete(doomed), "cleared": cleared})

    async def interrupt(self, request: web.Request, account: Account) -> web.StreamResponse:
        account.interrupt()
        return web.Response(status=200)

    # --- files ---------------------------------------------------------------------------------
    async def upload_image(self, request: web.Request, account: Account) -> web.StreamResponse:
        return await _upload(request, account, mask=False)

    async def upload_mask(self, request: web.Request, account: Account) -> web.StreamResponse:
        return await _upload(request, account, mask=True)

    async def view(self, request: web.Request, account: Account) -> web.StreamResponse:
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
        location = self.cloud.signed_url(origin(request), account, name)
        return web.Response(status=302, headers={"Location": location})

    async def storage(self, request: web.Request, _: None) -> web.StreamResponse:
        credentials = "Authorization" in request.headers or "X-API-Key" in request.headers
        if not credentials and not self.cloud.signature_valid(request):
            return web.json_response({"message": "Invalid or expired signature"}, status=403)
        account = self.cloud.by_user(request.match_info["user_id"])
        data = account.find(request.match_info["filename"]) if account else None
        return await serve_file(request, self.cloud.state, data, TARGET)

    # --- the service -----------------------------------------------------------------------------
    async def object_info(self, request: web.Request, account: Account) -> web.StreamResponse:
        return web.json_response(account.validator().schemas())

    async def object_info_one(self, request: web.Request, account: Account) -> web.StreamResponse:
        name, schemas = request.match_info["node_class"], account.validator().schemas()
        return web.json_response({name: schemas[name]} if name in schemas else {})

    async def user(self, request: web.Request, account: Account) -> web.StreamResponse:
        status = "active" if account.active else "waitlisted"
        return web.json_response({"id": account.user_id, "status": status})

    async def features(self, request: web.Request, account: Account) -> web.StreamResponse:
        return web.json_response(Worker.features())

    async def system_stats(self, request: web.Request, _: None) -> web.StreamResponse:
        main = self.cloud.accounts[self.cloud.state.comfy_api_key]
        return web.json_response(main.validator().system_stats())

    async def websocket(self, request: web.Request, account: Account) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        socket = Socket(ws, request.transport)
        account.sockets.append(socket)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        try:
            status = {**account.status_data(), "sid": sid}
            await send_to(socket, json.dumps({"type": "status", "data": status}))
            await listen(ws, socket, lambda: send_to(
                socket, json.dumps({"type": "feature_flags", "data": Worker.features()})))
        finally:
            account.sockets.remove(socket)
        return ws


def _validated(account: Account, prompt: Any,
               partial: Any) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
    """The account's validation of a prompt; a prompt it cannot read is an invalid_prompt."""
    try:
        if not isinstance(prompt, dict):
            raise TypeError("the prompt must be an object keyed by node id")
        return account.validator().validate(prompt, partial)
    except Exception as exc:
        return False, error_info("invalid_prompt", f"Invalid prompt: {exc}", str(exc)), [], {}


async def _upload(request: web.Request, account: Account, *, mask: bool) -> web.StreamResponse:
    """Uploads are flat and content-addressed: `{sha256}{ext}`."""
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

