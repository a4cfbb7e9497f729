"""One ComfyUI's state: its files, queue, history and sockets, and what they are made of."""

from __future__ import annotations

import asyncio
import json
import posixpath
import random
import struct
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..faults import Fault
from .nodes import (
    FOLDER_TYPES,
    GPUS,
    IMAGE_EXTENSIONS,
    JPEG,
    MAX_UPLOAD,
    PREVIEW_IMAGE,
    PREVIEW_IMAGE_WITH_METADATA,
    VERSION,
    node_schemas,
)
from .validate import validate


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
class Run:
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
    odd: Fault | None = None  # `odd_names`: its SaveImage outputs are named faults.ODD_NAMES



class Server:
    """The in-memory state of one machine's ComfyUI: files, queue, history, sockets (executor.py runs
    its prompts)."""

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

    def exists(self, filename: str, default: str = "input") -> bool:
        name, kind = annotated(filename)
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
            await send_to(socket, text)

    async def send_preview(self, run: Run, node_id: str, image: bytes) -> None:
        sid = run.client
        for socket in self.targets(sid):
            if sid is not None and socket.flags.get("supports_preview_metadata"):
                meta = json.dumps({"node_id": node_id, "prompt_id": run.item.prompt_id,
                                   "display_node_id": node_id, "parent_node_id": None,
                                   "real_node_id": node_id, "image_type": "image/jpeg"}).encode()
                frame = struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + image
            else:
                frame = struct.pack(">II", PREVIEW_IMAGE, JPEG) + image
            await send_to(socket, frame)

    # --- validation (execution.validate_prompt) ----------------------------------------------
    def validate(self, prompt: dict[str, Any], partial: list[str] | None
                 ) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
        """(valid, error, the outputs to run, node_errors) of a prompt, as POST /prompt checks it."""
        return validate(self.schemas(), prompt, partial, self.exists)


def annotated(name: str) -> tuple[str, str | None]:
    """folder_paths.annotated_filepath: `x.png [output]` names its folder."""
    for kind in FOLDER_TYPES:
        suffix = f" [{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


async def send_to(socket: Socket, payload: str | bytes) -> None:
    if socket.ws.closed:
        return
    try:
        if isinstance(payload, bytes):
            await socket.ws.send_bytes(payload)
        else:
            await socket.ws.send_str(payload)
    except (ConnectionError, RuntimeError):
        pass



def server_error() -> web.Response:
    """What aiohttp answers when a handler raises (e.g. on a body that is not JSON)."""
    return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble",
                        content_type="text/plain")
