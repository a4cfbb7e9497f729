"""A machine's ComfyUI routes, under `/machines/{server_id}` and again under `.../api`, as one table."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from ..faults import Fault, Faults, drop
from ..routing import Refused, Route
from .executor import ComfyUI
from .files import upload, view
from .nodes import BACKEND_FAULTS, SENSITIVE_EXTRA_DATA_KEYS
from .server import Item, Socket, server_error
from .validate import error_info

WS_FAULTS = frozenset({"ws_refused"})


class BackendAPI:
    """The handlers of every Ready machine's ComfyUI; `backend_for(server_id)` finds it (None: 404)."""

    fault_names = BACKEND_FAULTS

    def __init__(self, backend_for: Callable[[str], ComfyUI | None], state: Any) -> None:
        self.backend_for, self.state = backend_for, state

    @property
    def faults(self) -> Faults:
        return self.state.faults

    async def fault_reply(self, request: web.Request, fault: Fault) -> web.StreamResponse | None:
        """ComfyUI's answers: aiohttp's 500 page, a bare status, a dropped connection, a late answer."""
        if fault.name == "ws_refused":
            return refused_handshake(fault)
        if fault.name == "server_error":
            return server_error()
        if fault.name == "http_error":
            return web.Response(status=int(fault.params.get("status", 500)))
        if fault.name == "drop":
            drop(request)
        if fault.name == "delay":
            await asyncio.sleep(float(fault.params.get("seconds", 1)))
        return None

    def routes(self) -> list[Route]:
        rows = []
        for prefix in ("/machines/{server_id}", "/machines/{server_id}/api"):
            rows += [Route(method, f"{prefix}{path}", handler, on, self.backend, names=names)
                     for method, path, handler, on, names in (
                         ("POST", "/prompt", self.post_prompt, "submit", None),
                         ("GET", "/prompt", self.get_prompt, None, None),
                         ("GET", "/object_info", self.object_info, None, None),
                         ("GET", "/object_info/{node_class}", self.object_info_one, None, None),
                         ("GET", "/system_stats", self.system_stats, None, None),
                         ("GET", "/features", self.features, None, None),
                         ("POST", "/upload/image", self.upload_image, None, None),
                         ("POST", "/upload/mask", self.upload_mask, None, None),
                         ("GET", "/view", self.view, "download", None),
                         ("GET", "/history", self.history, "status", None),
                         ("GET", "/history/{prompt_id}", self.history_one, "status", None),
                         ("POST", "/history", self.post_history, None, None),
                         ("GET", "/queue", self.get_queue, "status", None),
                         ("POST", "/queue", self.post_queue, None, None),
                         ("POST", "/interrupt", self.interrupt, None, None),
                         ("POST", "/free", self.free, None, None),
                         ("GET", "/ws", self.websocket, "ws", WS_FAULTS))]
        return rows

    async def backend(self, request: web.Request) -> tuple[ComfyUI, str]:
        """The machine a route names; an unknown or not-Ready one gets an empty 404."""
        if "Authorization" in request.headers or "X-API-Key" in request.headers:
            self.state.leaks.append(request.path)  # served anyway (ComfyUI ignores it), but it is a leak
        backend = self.backend_for(request.match_info["server_id"])
        if backend is None:
            raise Refused(web.Response(status=404))
        return backend, backend.server_id

    # --- the queue -----------------------------------------------------------------------------
    async def post_prompt(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        try:
            body = await request.json()
            if "number" in body:
                number: float = float(body["number"])
            else:
                number = -backend.number if body.get("front") else backend.number
                backend.number += 1
            if "prompt" not in body:
                error = error_info("no_prompt", "No prompt provided", "No prompt provided")
                return web.json_response({"error": error, "node_errors": {}}, status=400)
            prompt = body["prompt"]
            prompt_id = str(body.get("prompt_id", uuid.uuid4()))
            valid = backend.validate(prompt, body.get("partial_execution_targets"))
            extra_data = body.get("extra_data", {})
            if "client_id" in body:
                extra_data["client_id"] = body["client_id"]
            if not valid[0]:
                return web.json_response({"error": valid[1], "node_errors": valid[3]}, status=400)
            sensitive = {k: extra_data.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra_data}
        except Exception:  # ComfyUI lets these reach aiohttp: a 500 text page
            return server_error()
        await backend.put(Item(number, prompt_id, prompt, extra_data, valid[2], sensitive))
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": valid[3]})

    async def get_prompt(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        return web.json_response(backend.queue_info())

    async def get_queue(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        running = [backend.running.public()] if backend.running else []
        return web.json_response({"queue_running": running,
                                  "queue_pending": [i.public() for i in backend.sorted_pending()]})

    async def post_queue(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        async def edit(body: Any) -> None:
            if body.get("clear"):
                await backend.wipe_queue()
            for prompt_id in body.get("delete", []):
                await backend.delete_pending(prompt_id)

        return await _acted(request, edit)

    async def interrupt(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        try:
            backend.interrupt(body.get("prompt_id"))
        except Exception:
            return server_error()
        return web.Response(status=200)

    async def free(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        async def free(body: Any) -> None:
            backend.free(bool(body.get("unload_models", False)), bool(body.get("free_memory", False)))

        return await _acted(request, free)

    # --- history -------------------------------------------------------------------------------
    async def history(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        try:
            max_items = int(request.query["max_items"]) if "max_items" in request.query else None
            offset = int(request.query["offset"]) if "offset" in request.query else -1
        except ValueError:
            return server_error()
        return web.json_response(backend.get_history(max_items, offset))

    async def history_one(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        prompt_id = request.match_info["prompt_id"]
        entry = backend.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def post_history(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        async def edit(body: Any) -> None:
            if body.get("clear"):
                backend.history.clear()
            for prompt_id in body.get("delete", []):
                backend.history.pop(prompt_id, None)

        return await _acted(request, edit)

    # --- node classes, the machine, files --------------------------------------------------------
    async def object_info(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        return web.json_response(backend.schemas())

    async def object_info_one(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        name = request.match_info["node_class"]
        schemas = backend.schemas()
        return web.json_response({name: schemas[name]} if name in schemas else {})

    async def system_stats(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        return web.json_response(backend.system_stats())

    async def features(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        return web.json_response(backend.features())

    async def upload_image(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        return await upload(request, backend, mask=False)

    async def upload_mask(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        return await upload(request, backend, mask=True)

    async def view(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
        return await view(request, backend, self.faults)

    # --- the WebSocket -------------------------------------------------------------------------
    async def websocket(self, request: web.Request, backend: ComfyUI) -> web.StreamResponse:
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


async def _acted(request: web.Request, act: Callable[[Any], Awaitable[None]]) -> web.StreamResponse:
    """ComfyUI's POST handlers: `act` on the JSON body, then 200 with no body; anything raising (a body
    that is not JSON too) reaches aiohttp: its 500 page."""
    try:
        await act(await request.json())
    except Exception:
        return server_error()
    return web.Response(status=200)


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
