"""A second, independent ComfyUI 0.3.64 server double, built only from api/comfyui-backend.md.

It shares no code with `runcomfy_nb.emulator` on purpose: if the emulator and the client drift
apart from the documented protocol together, tests against this double still catch it. It is a
small aiohttp app on 127.0.0.1 (a free port), optionally under a path prefix (to check that a
secret path never leaks), started with `async with ComfyDouble(...) as double`.

What it reproduces from the reference: `/prompt` 200 and 400 shapes, the WebSocket message order
(status, execution_start, execution_cached, progress_state, executing, progress, executed,
execution_success, status, executing null), binary previews (type 1, or type 4 for a client whose
first message asked for preview metadata), a type 3 text frame, the delivery rules (one socket
per clientId; the old socket closing unregisters the id; without a client id only some messages
are broadcast), `/history`, `/queue` (pending in heap order, not sorted), `/interrupt` (targeted),
`/upload/image` with the " (1)" rename rule, `/view` with its error codes, `/object_info`,
`/system_stats`, `/features`, `/free`; every route also under `/api`.

`SaveImageWebsocket` (a default custom node) sends each image of its batch only as a binary PNG
frame (type 4 with `image_type` "image/png" for a flagged client, else type 1 with format 2), after a
`progress_state` / `progress` pair per image, as ComfyUI's progress hook does; it has no `executed`
message and no history output.

Switches: `step_delay` (slow steps), `drop_at_step` (abort the prompt's socket once, mid-run),
`refuse_ws_for` (refuse WebSocket upgrades for a while after a drop), `fail_node` (that node
raises), `paused` (nothing starts), `metadata_previews` (honour the feature flag),
`lose_prompt_reply` (take a prompt but drop the connection before answering),
`finish_before_reply` (POST /prompt runs the prompt to its end, every frame written to the
client's open socket, before it answers: a fast prompt on a real server), `ws_busy` (answer the
next n WebSocket handshakes with HTTP 429 and `Retry-After: ws_retry_after`), `view_truncate` (the
next n /view answers announce the whole file, send half of it and close; a plain /view is otherwise
aiohttp's FileResponse, as in ComfyUI, so byte ranges are aiohttp's; `view_ranges` lists each /view's
Range header); `vanish()` kills the server mid-run: the listener closes, every connection is cut,
nothing runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import io
import json
import shutil
import struct
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image

MODEL_CHOICES = ["sd15.safetensors", "sdxl.safetensors"]
SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m"]
UPLOAD_LIMIT = 100 * 2**20
SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}  # as stock SaveImage declares them


def _schema(name: str, required: dict[str, Any], output: list[str], *, optional: dict[str, Any] | None = None,
            output_node: bool = False, category: str = "",
            hidden: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "input": {"required": required, "optional": optional or {}, "hidden": hidden or {}},
        "input_order": {"required": list(required)},
        "output": output, "output_is_list": [False] * len(output), "output_name": output,
        "name": name, "display_name": name, "description": "", "python_module": "nodes",
        "category": category, "output_node": output_node,
    }


NODES: dict[str, dict[str, Any]] = {
    "CheckpointLoaderSimple": _schema(
        "CheckpointLoaderSimple", {"ckpt_name": [MODEL_CHOICES, {}]}, ["MODEL", "CLIP", "VAE"],
        category="loaders"),
    "CLIPTextEncode": _schema(
        "CLIPTextEncode", {"text": ["STRING", {"multiline": True}], "clip": ["CLIP", {}]},
        ["CONDITIONING"], category="conditioning"),
    "EmptyLatentImage": _schema(
        "EmptyLatentImage", {"width": ["INT", {"default": 512, "min": 16, "max": 16384}],
                             "height": ["INT", {"default": 512, "min": 16, "max": 16384}],
                             "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}]},
        ["LATENT"], category="latent"),
    "KSampler": _schema(
        "KSampler", {
            "model": ["MODEL", {}],
            "seed": ["INT", {"default": 0, "min": 0, "max": 18446744073709551615}],
            "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
            "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1}],
            "sampler_name": [SAMPLERS, {}],
            "scheduler": [["normal", "karras"], {}],
            "positive": ["CONDITIONING", {}], "negative": ["CONDITIONING", {}],
            "latent_image": ["LATENT", {}],
            "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]},
        ["LATENT"], category="sampling"),
    "VAEDecode": _schema("VAEDecode", {"samples": ["LATENT", {}], "vae": ["VAE", {}]}, ["IMAGE"],
                         category="latent"),
    "SaveImage": _schema("SaveImage", {"images": ["IMAGE", {}],
                                       "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
                         [], output_node=True, category="image", hidden=SAVE_HIDDEN),
    "PreviewImage": _schema("PreviewImage", {"images": ["IMAGE", {}]}, [], output_node=True,
                            category="image", hidden=SAVE_HIDDEN),
    "SaveImageWebsocket": _schema("SaveImageWebsocket", {"images": ["IMAGE", {}]}, [], output_node=True,
                                  category="image"),
    "LoadImage": _schema("LoadImage", {"image": [["example.png"], {"image_upload": True}]},
                         ["IMAGE", "MASK"], category="image"),
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
# Without a client id only these reach every socket (plus previews); the rest are not sent.
BROADCAST = {"status", "progress", "progress_state", "execution_interrupted"}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _png(seed: str, size: int = 8) -> bytes:
    color = tuple(uuid.uuid5(uuid.NAMESPACE_OID, seed).bytes[:3])
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


@dataclass
class Prompt:
    number: float
    prompt_id: str
    workflow: dict[str, Any]
    extra: dict[str, Any]
    outputs: list[str]

    def item(self) -> list[Any]:
        return [self.number, self.prompt_id, self.workflow, self.extra, self.outputs]


class _Interrupted(Exception):
    pass


@dataclass
class ComfyDouble:
    prefix: str = ""
    step_delay: float = 0.005
    history_delay: float = 0.05       # history is written a moment after execution_success
    metadata_previews: bool = True
    drop_at_step: int | None = None
    refuse_ws_for: float = 0.0
    fail_node: str | None = None
    fail_exception: tuple[str, str] = ("torch.OutOfMemoryError", "Allocation on device failed")
    lose_prompt_reply: bool = False  # once: queue the prompt, then drop the connection unanswered
    finish_before_reply: bool = False  # POST /prompt answers only once the prompt ended
    ws_busy: int = 0  # the next n WebSocket handshakes are answered 429
    ws_retry_after: str = "0"
    view_truncate: int = 0  # the next n /view answers announce the whole file, send half, then close

    url: str = ""
    requests: list[tuple[str, str]] = field(default_factory=list)
    ws_connects: list[str] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)  # client ids whose first message set flags
    files: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    history: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: list[Prompt] = field(default_factory=list)
    running: Prompt | None = None
    ws_refused: int = 0  # handshakes answered 429 so far
    ws_images: list[bytes] = field(default_factory=list)  # what SaveImageWebsocket sent, in order
    view_ranges: list[str | None] = field(default_factory=list)  # each /view's Range header (or None)

    def __post_init__(self) -> None:
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.flags: dict[str, dict[str, Any]] = {}
        self._transports: dict[int, Any] = {}
        self._cache: dict[str, str] = {}
        self._cached_outputs: dict[str, dict[str, Any]] = {}
        self._counters: dict[str, int] = {}
        self._number = 0
        self._client_id: str | None = None
        self._last_node: str | None = None
        self._interrupt = False
        self._refuse_until = 0.0
        self._wake = asyncio.Event()
        self._resume = asyncio.Event()
        self._resume.set()
        self._runner: web.AppRunner | None = None
        self._executor: asyncio.Task[None] | None = None
        self._disk = Path(tempfile.mkdtemp(prefix="comfy-double-"))  # /view serves files from disk

    # -- life --
    async def __aenter__(self) -> ComfyDouble:
        app = web.Application(middlewares=[self._record], client_max_size=UPLOAD_LIMIT + 2**20)
        routes = [
            ("GET", "/ws", self._ws), ("GET", "/prompt", self._get_prompt),
            ("POST", "/prompt", self._post_prompt), ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue), ("GET", "/history", self._get_history),
            ("GET", "/history/{prompt_id}", self._get_history_one),
            ("POST", "/history", self._post_history), ("POST", "/interrupt", self._interrupt_route),
            ("POST", "/free", self._free), ("POST", "/upload/image", self._upload),
            ("POST", "/upload/mask", self._upload), ("GET", "/view", self._view),
            ("GET", "/object_info", self._object_info),
            ("GET", "/object_info/{node_class}", self._object_info_one),
            ("GET", "/system_stats", self._system_stats), ("GET", "/features", self._features),
        ]
        for method, path, handler in routes:
            for base in (self.prefix, f"{self.prefix}/api"):
                app.router.add_route(method, base + path, handler)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}{self.prefix}"
        self._executor = asyncio.get_running_loop().create_task(self._execute_forever())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_executor()
        for ws in list(self.sockets.values()):
            with contextlib.suppress(Exception):
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
        shutil.rmtree(self._disk, ignore_errors=True)

    async def _stop_executor(self) -> None:
        if self._executor is not None:
            self._executor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._executor

    async def vanish(self) -> None:
        """The server process dies: nothing runs on, the port stops listening, and every open
        connection (sockets and kept-alive HTTP) is cut without a goodbye."""
        await self._stop_executor()
        assert self._runner is not None
        for site in list(self._runner.sites):
            await site.stop()
        server = self._runner.server
        for handler in list(server.connections if server is not None else []):
            if handler.transport is not None:
                handler.transport.abort()

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    @paused.setter
    def paused(self, value: bool) -> None:
        if value:
            self._resume.clear()
        else:
            self._resume.set()

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p in self.requests if m == method and p == path)

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path[len(self.prefix):]
        path = path[4:] if path.startswith("/api/") else path
        self.requests.append((request.method, path))
        return await handler(request)

    # -- WebSocket --
    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if asyncio.get_running_loop().time() < self._refuse_until:
            return web.Response(status=503)
        if self.ws_refused < self.ws_busy:  # e.g. a proxy's rate limit in front of the server
            self.ws_refused += 1
            return web.Response(status=429, text="Too Many Requests",
                                headers={"Retry-After": self.ws_retry_after})
        ws = web.WebSocketResponse(max_msg_size=2**20)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.ws_connects.append(sid)
        self.sockets.pop(sid, None)  # a second socket with the same id replaces the first
        self.sockets[sid] = ws
        self._transports[id(ws)] = request.transport
        try:
            await self._send_to(ws, "status", {"status": self._queue_info(), "sid": sid})
            if self._client_id == sid and self._last_node is not None:
                await self._send_to(ws, "executing", {"node": self._last_node})
            first = True
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    with contextlib.suppress(ValueError):
                        data = json.loads(msg.data)
                        if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                            self.flags[sid] = dict(data.get("data") or {})
                            self.flagged.append(sid)
                            await self._send_to(ws, "feature_flags", {
                                "supports_preview_metadata": True, "max_upload_size": UPLOAD_LIMIT})
                first = False
        finally:
            # As in ComfyUI: whichever socket closes forgets the id, even if a newer one holds it.
            self.sockets.pop(sid, None)
            self.flags.pop(sid, None)
            self._transports.pop(id(ws), None)
        return ws

    async def _send_to(self, ws: web.WebSocketResponse | None, kind: str, data: dict[str, Any]) -> None:
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.send_str(json.dumps({"type": kind, "data": data}))

    async def send(self, kind: str, data: dict[str, Any], sid: str | None) -> None:
        if sid is not None:
            await self._send_to(self.sockets.get(sid), kind, data)
        elif kind in BROADCAST:
            for ws in list(self.sockets.values()):
                await self._send_to(ws, kind, data)

    async def _send_bytes(self, sid: str | None, frame: bytes) -> None:
        targets = [self.sockets.get(sid)] if sid is not None else list(self.sockets.values())
        for ws in targets:
            if ws is not None and not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.send_bytes(frame)

    async def _preview(self, sid: str | None, prompt_id: str, node: str) -> None:
        image = _jpeg()
        if sid is not None and self.metadata_previews and self.flags.get(sid, {}).get(
                "supports_preview_metadata"):
            meta = json.dumps({"node_id": node, "prompt_id": prompt_id, "display_node_id": node,
                               "parent_node_id": None, "real_node_id": node,
                               "image_type": "image/jpeg"}).encode()
            await self._send_bytes(sid, struct.pack(">II", 4, len(meta)) + meta + image)
        else:
            await self._send_bytes(sid, struct.pack(">II", 1, 1) + image)

    async def drop(self, sid: str | None) -> None:
        """Abort the socket of `sid` without a closing handshake (a network failure)."""
        self._refuse_until = asyncio.get_running_loop().time() + self.refuse_ws_for
        ws = self.sockets.get(sid) if sid is not None else None
        transport = self._transports.get(id(ws)) if ws is not None else None
        if transport is not None:
            transport.abort()

    def _queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self.pending) + (1 if self.running else 0)}}

    async def _status(self) -> None:
        await self.send("status", {"status": self._queue_info()}, None)

    # -- /prompt --
    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self._queue_info())

    async def _post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
        if not isinstance(body, dict) or "prompt" not in body:
            return _error(400, "no_prompt", "No prompt provided", "No prompt provided", [])
        workflow = body["prompt"]
        status, reply = validate(workflow, self.schemas())
        if status != 200:
            return web.json_response(reply, status=status)
        self._number += 1
        number = body.get("number", -self._number if body.get("front") else self._number)
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        for secret in ("api_key_comfy_org", "auth_token_comfy_org"):
            extra.pop(secret, None)
        prompt = Prompt(number, prompt_id, workflow, extra, reply["good_outputs"])
        if self.finish_before_reply:
            await self._run_now(prompt)
        else:
            self.pending.append(prompt)
            self._wake.set()
            await self._status()
        if self.lose_prompt_reply:
            self.lose_prompt_reply = False
            if request.transport is not None:
                request.transport.abort()
        return web.json_response({"prompt_id": prompt_id, "number": number,
                                  "node_errors": reply["node_errors"]})

    # -- queue, history, interrupt, free --
    async def _get_queue(self, request: web.Request) -> web.Response:
        # Heap order, not run order: a client must sort by number.
        pending = [p.item() for p in sorted(self.pending, key=lambda p: p.number, reverse=True)]
        running = [self.running.item()] if self.running else []
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def _post_queue(self, request: web.Request) -> web.Response:
        body = await _json_or_empty(request)
        if body.get("clear"):
            self.pending.clear()
        delete = body.get("delete") or []
        self.pending = [p for p in self.pending if p.prompt_id not in delete]
        await self._status()
        return web.Response(status=200)

    async def _get_history(self, request: web.Request) -> web.Response:
        items = list(self.history.items())
        offset = int(request.query.get("offset", 0) or 0)
        if "max_items" in request.query:
            items = items[-int(request.query["max_items"]):] if offset == 0 else items[offset:offset + int(
                request.query["max_items"])]
        return web.json_response(dict(items))

    async def _get_history_one(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry else {})

    async def _post_history(self, request: web.Request) -> web.Response:
        body = await _json_or_empty(request)
        if body.get("clear"):
            self.history.clear()
        for prompt_id in body.get("delete") or []:
            self.history.pop(prompt_id, None)
        return web.Response(status=200)

    async def _interrupt_route(self, request: web.Request) -> web.Response:
        body = await _json_or_empty(request)
        target = body.get("prompt_id")
        if self.running is not None and (target is None or target == self.running.prompt_id):
            self._interrupt = True
        return web.Response(status=200)

    async def _free(self, request: web.Request) -> web.Response:
        await _json_or_empty(request)
        return web.Response(status=200)

    # -- files --
    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        part = form.get("image")
        if part is None or not hasattr(part, "file"):
            return web.Response(status=400)
        kind = str(form.get("type") or "input")
        if kind not in ("input", "temp", "output"):
            kind = "input"
        subfolder = str(form.get("subfolder") or "")
        if subfolder.startswith("/") or ".." in subfolder.split("/"):
            return web.Response(status=400)
        data = part.file.read()
        if len(data) > UPLOAD_LIMIT:
            return web.Response(status=413)
        name = str(part.filename).replace("\\", "/").rsplit("/", 1)[-1]
        overwrite = str(form.get("overwrite") or "").lower() in ("true", "1")
        if not overwrite:
            stem, dot, ext = name.rpartition(".")
            stem, ext = (stem, dot + ext) if dot else (name, "")
            i = 1
            while (kind, subfolder, name) in self.files:
                if self.files[(kind, subfolder, name)] == data:
                    break  # identical content reuses the existing name
                name = f"{stem} ({i}){ext}"
                i += 1
        self.files[(kind, subfolder, name)] = data
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    async def _view(self, request: web.Request) -> web.StreamResponse:
        filename = request.query.get("filename")
        if not filename:
            return web.Response(status=404)
        kind = request.query.get("type") or "output"
        if filename.endswith("]") and " [" in filename:
            filename, _, annotated = filename[:-1].rpartition(" [")
            kind = annotated
        if filename.startswith("/") or ".." in filename:
            return web.Response(status=400)
        subfolder = request.query.get("subfolder") or ""
        if subfolder.startswith("/") or ".." in subfolder.split("/"):
            return web.Response(status=403)
        data = self.files.get((kind, subfolder, filename))
        if data is None:
            return web.Response(status=404)
        content_type = "image/png" if filename.endswith(".png") else "application/octet-stream"
        headers = {"Content-Disposition": f'filename="{filename}"', "Content-Type": content_type}
        self.view_ranges.append(request.headers.get("Range"))
        if self.view_truncate:
            self.view_truncate -= 1
            response = web.StreamResponse(headers=headers)
            response.content_length = len(data)
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError  # aiohttp: the client went away, nothing more is written
        # ComfyUI answers a plain /view with aiohttp's FileResponse, which serves Range, If-Range
        # and ETag itself (RFC 9110): the double does the same with the bytes put on disk
        on_disk = self._disk / hashlib.sha256(data).hexdigest() / filename
        if not on_disk.exists():
            on_disk.parent.mkdir(parents=True, exist_ok=True)
            on_disk.write_bytes(data)
        return web.FileResponse(on_disk, headers=headers)

    # -- info --
    def schemas(self) -> dict[str, dict[str, Any]]:
        """The node schemas now: as in ComfyUI, LoadImage's list is the input folder's images."""
        loader = copy.deepcopy(NODES["LoadImage"])
        spec = loader["input"]["required"]["image"]
        uploaded = {name for (kind, sub, name) in self.files if kind == "input" and not sub}
        spec[0] = sorted({*spec[0], *uploaded})
        return {**NODES, "LoadImage": loader}

    async def _object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.schemas())

    async def _object_info_one(self, request: web.Request) -> web.Response:
        name, nodes = request.match_info["node_class"], self.schemas()
        return web.json_response({name: nodes[name]} if name in nodes else {})

    async def _system_stats(self, request: web.Request) -> web.Response:
        return web.json_response({
            "system": {"os": "posix", "ram_total": 67108864000, "ram_free": 50331648000,
                       "comfyui_version": "0.3.64", "python_version": "3.12.3", "pytorch_version": "2.8.0",
                       "embedded_python": False, "argv": ["main.py"], "required_frontend_version": "1.27.10"},
            "devices": [{"name": "cuda:0 NVIDIA L40S", "type": "cuda", "index": 0,
                         "vram_total": 48305799168, "vram_free": 47000000000,
                         "torch_vram_total": 0, "torch_vram_free": 0}]})

    async def _features(self, request: web.Request) -> web.Response:
        return web.json_response({"supports_preview_metadata": True, "max_upload_size": UPLOAD_LIMIT})

    # -- the executor --
    async def _run_now(self, prompt: Prompt) -> None:
        """Run `prompt` to its end at once (the executor is idle or busy elsewhere: not shared)."""
        self.running = prompt
        try:
            await self._execute(prompt)
        finally:
            self.running, self._client_id, self._last_node = None, None, None

    async def _execute_forever(self) -> None:
        while True:
            await self._resume.wait()
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            prompt = min(self.pending, key=lambda p: p.number)
            self.pending.remove(prompt)
            self.running = prompt
            try:
                await self._execute(prompt)
            finally:
                self.running, self._client_id, self._last_node = None, None, None

    async def _execute(self, p: Prompt) -> None:
        sid = p.extra.get("client_id")
        pid = p.prompt_id
        self._client_id, self._interrupt = sid, False
        messages: list[list[Any]] = []

        async def event(kind: str, data: dict[str, Any], *, record: bool = False) -> None:
            data = {**data, "prompt_id": pid} if "prompt_id" not in data else data
            if record:
                messages.append([kind, {**data, "timestamp": _now_ms()}])
            await self.send(kind, data, sid)

        await event("execution_start", {"timestamp": _now_ms()}, record=True)
        order = _order(p.workflow, p.outputs)
        sigs = _signatures(p.workflow, order)
        cached = [n for n in order if self._cache.get(n) == sigs[n]]
        await event("execution_cached", {"nodes": cached, "timestamp": _now_ms()}, record=True)
        outputs: dict[str, Any] = {}
        executed = list(cached)
        for node in cached:
            if node in self._cached_outputs:
                outputs[node] = self._cached_outputs[node]
                await event("executed", {"node": node, "display_node": node, "output": outputs[node]})
        try:
            for node in order:
                if node in cached:
                    continue
                cls = p.workflow[node]["class_type"]
                self._check_interrupt()
                await event("progress_state", {"nodes": {node: self._state(pid, node, 0, 1, "running")}})
                await event("executing", {"node": node, "display_node": node})
                self._last_node = node
                if node == self.fail_node:
                    await self._fail(p, node, cls, executed, messages)
                    return
                if cls == "KSampler":
                    steps = int(p.workflow[node]["inputs"].get("steps", 1))
                    for step in range(1, steps + 1):
                        await asyncio.sleep(self.step_delay)
                        self._check_interrupt()
                        if self.drop_at_step == step:
                            self.drop_at_step = None
                            await self.drop(sid)
                        await event("progress", {"value": step, "max": steps, "node": node})
                        await event("progress_state", {"nodes": {
                            node: self._state(pid, node, step, steps, "running")}})
                        await self._preview(sid, pid, node)
                        if step == 1:  # type 3 goes to every socket
                            frame = struct.pack(">II", 3, len(node)) + node.encode() + b"sampling"
                            await self._send_bytes(None, frame)
                elif cls == "SaveImageWebsocket":
                    await self._save_to_socket(p, node, sigs[node])
                else:
                    await asyncio.sleep(0)
                output = self._make_output(p, node, cls, sigs[node])
                await event("progress_state", {"nodes": {node: self._state(pid, node, 1, 1, "finished")}})
                if output is not None:
                    outputs[node] = output
                    self._cached_outputs[node] = output
                    await event("executed", {"node": node, "display_node": node, "output": output})
                self._cache[node] = sigs[node]
                executed.append(node)
        except _Interrupted:
            node = self._last_node or ""
            data = {"prompt_id": pid, "node_id": node,
                    "node_type": p.workflow.get(node, {}).get("class_type"), "executed": executed,
                    "timestamp": _now_ms()}
            messages.append(["execution_interrupted", data])
            await self.send("execution_interrupted", data, sid)
            self._write_history(p, outputs, "error", False, messages)
            await self._end(p)
            return
        await event("execution_success", {"timestamp": _now_ms()}, record=True)
        await asyncio.sleep(self.history_delay)
        self._write_history(p, outputs, "success", True, messages)
        await self._end(p)

    async def _save_to_socket(self, p: Prompt, node: str, sig: str) -> None:
        """SaveImageWebsocket: per image, ProgressBar.update_absolute(i, n, ("PNG", image, None)),
        i.e. progress_state (+ a type 4 frame for a flagged client), progress (+ a type 1 frame)."""
        sid, pid = p.extra.get("client_id"), p.prompt_id
        latent = next((n for n in p.workflow.values() if n.get("class_type") == "EmptyLatentImage"), {})
        count = int((latent.get("inputs") or {}).get("batch_size", 1))
        flagged = sid is not None and self.metadata_previews and self.flags.get(sid, {}).get(
            "supports_preview_metadata")
        for i in range(count):
            image = _png(f"{sig}/{i}")
            self.ws_images.append(image)
            await self.send("progress_state", {"prompt_id": pid, "nodes": {
                node: self._state(pid, node, i, count, "running")}}, sid)
            if flagged:
                meta = json.dumps({"node_id": node, "prompt_id": pid, "display_node_id": node,
                                   "parent_node_id": None, "real_node_id": node,
                                   "image_type": "image/png"}).encode()
                await self._send_bytes(sid, struct.pack(">II", 4, len(meta)) + meta + image)
            await self.send("progress", {"value": i, "max": count, "prompt_id": pid, "node": node}, sid)
            if not flagged:
                await self._send_bytes(sid, struct.pack(">II", 1, 2) + image)

    def _check_interrupt(self) -> None:
        if self._interrupt:
            self._interrupt = False
            raise _Interrupted

    async def _fail(self, p: Prompt, node: str, cls: str, executed: list[str],
                    messages: list[list[Any]]) -> None:
        kind, text = self.fail_exception
        data = {"prompt_id": p.prompt_id, "node_id": node, "node_type": cls, "executed": executed,
                "exception_message": text, "exception_type": kind,
                "traceback": ["Traceback (most recent call last):\n", f"{kind}: {text}\n"],
                "current_inputs": {k: [str(v)] for k, v in p.workflow[node]["inputs"].items()},
                "current_outputs": executed, "timestamp": _now_ms()}
        messages.append(["execution_error", data])
        await self.send("execution_error", data, p.extra.get("client_id"))
        self._write_history(p, {}, "error", False, messages)
        await self._end(p)

    async def _end(self, p: Prompt) -> None:
        self.running = None
        await self._status()
        await self.send("executing", {"node": None, "prompt_id": p.prompt_id}, p.extra.get("client_id"))

    def _write_history(self, p: Prompt, outputs: dict[str, Any], status: str, completed: bool,
                       messages: list[list[Any]]) -> None:
        self.history[p.prompt_id] = {
            "prompt": p.item(), "outputs": outputs,
            "status": {"status_str": status, "completed": completed, "messages": messages},
            "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                     for n in outputs},
        }

    @staticmethod
    def _state(pid: str, node: str, value: int, maximum: int, state: str) -> dict[str, Any]:
        return {"value": value, "max": maximum, "state": state, "node_id": node, "prompt_id": pid,
                "display_node_id": node, "parent_node_id": None, "real_node_id": node}

    def _make_output(self, p: Prompt, node: str, cls: str, sig: str) -> dict[str, Any] | None:
        if cls == "SaveImage":
            prefix = str(p.workflow[node]["inputs"].get("filename_prefix") or "ComfyUI")
            kind = "output"
        elif cls == "PreviewImage":
            prefix, kind = "ComfyUI_temp_abcde", "temp"
        else:
            return None
        self._counters[prefix] = self._counters.get(prefix, 0) + 1
        name = f"{prefix}_{self._counters[prefix]:05}_.png"
        self.files[(kind, "", name)] = _png(sig)
        return {"images": [{"filename": name, "subfolder": "", "type": kind}]}


# --- validation, as /prompt does it ------------------------------------------------------------


def _error(status: int, kind: str, message: str, details: str, node_errors: Any) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message, "details": details,
                                        "extra_info": {}}, "node_errors": node_errors}, status=status)


async def _json_or_empty(request: web.Request) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        body = await request.json()
        return body if isinstance(body, dict) else {}
    return {}


def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int))


def validate(workflow: Any, nodes: dict[str, dict[str, Any]] = NODES) -> tuple[int, dict[str, Any]]:
    """(200, {"good_outputs", "node_errors"}) or (400, error body), per the reference."""
    def err(kind: str, message: str, details: str) -> tuple[int, dict[str, Any]]:
        return 400, {"error": {"type": kind, "message": message, "details": details, "extra_info": {}},
                     "node_errors": {}}

    if not isinstance(workflow, dict):
        return err("invalid_prompt", "Cannot execute because the prompt is not an object.", "")
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return err("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                       f"Node ID '#{node_id}'")
        if node["class_type"] not in nodes:
            return err("invalid_prompt", f"Cannot execute because node {node['class_type']} does not exist.",
                       f"Node ID '#{node_id}'")
    outputs = [n for n, node in workflow.items() if nodes[node["class_type"]]["output_node"]]
    if not outputs:
        return err("prompt_no_outputs", "Prompt has no outputs", "")
    node_errors: dict[str, Any] = {}
    good = []
    memo: dict[str, list[dict[str, Any]]] = {}
    for output in outputs:
        bad = _check(workflow, output, memo, set(), nodes)
        if not bad:
            good.append(output)
        for node_id in bad:
            entry = node_errors.setdefault(node_id, {
                "errors": memo[node_id], "dependent_outputs": [],
                "class_type": workflow[node_id]["class_type"]})
            entry["dependent_outputs"].append(output)
    if not good:
        details = "; ".join(f"{e['message']}: {e['details']}"
                            for n in node_errors for e in node_errors[n]["errors"])
        return 400, {"error": {"type": "prompt_outputs_failed_validation",
                               "message": "Prompt outputs failed validation", "details": details,
                               "extra_info": {}}, "node_errors": node_errors}
    return 200, {"good_outputs": good, "node_errors": node_errors}


def _check(workflow: dict[str, Any], node_id: str, memo: dict[str, list[dict[str, Any]]],
           visiting: set[str], nodes: dict[str, dict[str, Any]]) -> list[str]:
    """Ids of the nodes that fail validation among `node_id` and what it depends on."""
    if node_id in memo:
        return [node_id] if memo[node_id] else []
    visiting.add(node_id)
    node = workflow[node_id]
    schema = nodes[node["class_type"]]
    inputs = node.get("inputs") or {}
    errors: list[dict[str, Any]] = []
    bad_upstream: list[str] = []

    def fail(kind: str, message: str, details: str, name: str, value: Any = None, config: Any = None) -> None:
        errors.append({"type": kind, "message": message, "details": details,
                       "extra_info": {"input_name": name, "input_config": config, "received_value": value}})

    specs = {**schema["input"]["required"], **schema["input"]["optional"]}
    for name, spec in specs.items():
        if name not in inputs:
            if name in schema["input"]["required"]:
                fail("required_input_missing", "Required input is missing", name, name)
            continue
        value, kind, options = inputs[name], spec[0], spec[1] if len(spec) > 1 else {}
        if isinstance(value, dict) and "__value__" in value:
            value = value["__value__"]
        if _is_link(value):
            source = value[0]
            if source not in workflow:
                fail("bad_linked_input", "Bad linked input, must be a length-2 list of [string, int]",
                     f"{name}, {value}", name, value)
                continue
            produced = nodes[workflow[source]["class_type"]]["output"]
            if value[1] >= len(produced) or (isinstance(kind, str) and produced[value[1]] != kind):
                got = produced[value[1]] if value[1] < len(produced) else "?"
                fail("return_type_mismatch", "Return type mismatch between linked nodes",
                     f"{name}, received_type({got}) mismatch input_type({kind})", name, value)
                continue
            if source not in visiting:
                bad_upstream += _check(workflow, source, memo, visiting, nodes)
            continue
        if isinstance(kind, list):
            if value not in kind:
                config = None if len(kind) > 20 else spec
                fail("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {kind}",
                     name, value, config)
        elif kind in ("INT", "FLOAT"):
            try:
                number = int(value) if kind == "INT" else float(value)
            except (TypeError, ValueError):
                fail("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                     f"{name}, {value}", name, value)
                continue
            if "min" in options and number < options["min"]:
                fail("value_smaller_than_min", f"Value {number} smaller than min of {options['min']}",
                     f"{name}", name, value, spec)
            if "max" in options and number > options["max"]:
                fail("value_bigger_than_max", f"Value {number} bigger than max of {options['max']}",
                     f"{name}", name, value, spec)
        elif kind not in WIDGET_TYPES:
            fail("bad_linked_input", "Bad linked input, must be a length-2 list of [string, int]",
                 f"{name}, {value}", name, value)
    visiting.discard(node_id)
    memo[node_id] = errors
    return sorted(set(bad_upstream + ([node_id] if errors else [])))


def _order(workflow: dict[str, Any], outputs: list[str]) -> list[str]:
    """The nodes the outputs need, each after its inputs."""
    order: list[str] = []

    def visit(node_id: str) -> None:
        if node_id in order:
            return
        for value in (workflow[node_id].get("inputs") or {}).values():
            if _is_link(value) and value[0] in workflow:
                visit(value[0])
        order.append(node_id)

    for output in outputs:
        visit(output)
    return order


def _signatures(workflow: dict[str, Any], order: list[str]) -> dict[str, str]:
    sigs: dict[str, str] = {}
    for node_id in order:
        node = workflow[node_id]
        inputs = {k: (sigs.get(v[0], v[0]), v[1]) if _is_link(v) else v
                  for k, v in sorted((node.get("inputs") or {}).items())}
        text = json.dumps([node["class_type"], inputs], sort_keys=True, default=str)
        sigs[node_id] = hashlib.sha1(text.encode()).hexdigest()
    return sigs
