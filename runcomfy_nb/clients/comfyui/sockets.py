"""ComfyUI's WebSocket: the handshake (retried), its frames, and the two ways a job gets its messages —
its own socket (a stock server sends a prompt's events to its client id's socket), or one socket a
client's jobs share, routed by prompt id (Comfy Cloud sends every job of the account to every socket)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import stamina
from websockets.exceptions import WebSocketException

from ...http_policy import USER_AGENT, retries_of
from ...jobs import Job
from .replies import as_dict

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

# websockets logs the handshake (host, path, query) at DEBUG; give it a logger that never does.
_ws_log = logging.getLogger("runcomfy_nb.comfyui.websocket")
_ws_log.setLevel(logging.INFO)

WS_ERRORS: tuple[type[BaseException], ...] = (
    OSError, asyncio.TimeoutError, TimeoutError, WebSocketException,
)
WS_ATTEMPTS = 5
WS_RETRY_TIMEOUT = 30.0   # seconds a handshake is tried for
WS_MAX_RETRY_AFTER = 10.0  # a longer Retry-After is cut to this


def retry_handshake(exc: Exception) -> bool | float:
    """Whether (or after how many seconds) to try a failed handshake again: after a connection
    error, a 5xx, or a 429 (its Retry-After, capped); any other refusal (401, 403, 404) is final."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is None:
        return isinstance(exc, WS_ERRORS)
    if status != 429 and status < 500:
        return False
    try:
        return min(max(0.0, float(response.headers.get("Retry-After"))), WS_MAX_RETRY_AFTER)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return True


async def handshake(service: str, open_once: Callable[[], Awaitable[None]]) -> None:
    """`open_once()` (a WebSocket handshake), tried again after a connection error, a 5xx or a
    429 (after its Retry-After, capped), for up to WS_RETRY_TIMEOUT s."""
    with retries_of(f"{service} WebSocket handshake"):
        async for attempt in stamina.retry_context(on=retry_handshake, attempts=WS_ATTEMPTS,
                                                   timeout=WS_RETRY_TIMEOUT, wait_initial=0.25,
                                                   wait_max=4.0):
            with attempt:
                await open_once()


async def open_socket(url: str) -> ClientConnection:
    """A WebSocket to `url` that asks for previews naming their prompt (type 4 frames)."""
    from websockets.asyncio.client import connect

    ws = await connect(url, open_timeout=15, close_timeout=2, max_size=64 * 2**20,
                       logger=_ws_log, user_agent_header=USER_AGENT)
    try:  # must be the first message: it asks for previews that name their prompt (type 4)
        await ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
    except BaseException:
        await ws.close()
        raise
    return ws


def preview_metadata(frame: bytes) -> dict[str, Any] | None:
    """The JSON metadata (prompt_id, node_id, image_type, ...) of a type 4 preview frame, or None
    for any other frame or unreadable metadata."""
    if len(frame) < 8:
        return None
    kind, size = struct.unpack(">II", frame[:8])
    if kind != 4:
        return None
    try:
        meta = json.loads(frame[8:8 + size])
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


class Dropped:
    """What a run receives when the socket of `generation` ended."""

    def __init__(self, generation: int) -> None:
        self.generation = generation


class Opener(Protocol):
    """What a socket needs from its client."""

    @property
    def service(self) -> str: ...

    async def open_socket(self, client_id: str) -> ClientConnection: ...

    def last_running(self) -> tuple[str, ...]: ...


class Listener(Protocol):
    """What a socket needs from the run it feeds."""

    prompt_id: str
    job: Job | None

    @property
    def generation(self) -> int: ...

    def deliver(self, item: Any) -> None: ...

    def adopt(self, ws: ClientConnection | None, generation: int) -> None: ...

    def poke(self) -> None: ...


class OwnSocket:
    """One run's own socket, under its own client id."""

    reconnect_when_silent = True  # the server may unregister a quiet socket: registering again is cheap

    def __init__(self, opener: Opener, client_id: str) -> None:
        self.opener = opener
        self.client_id = client_id
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._generation = 0

    async def join(self, run: Listener) -> None:
        """Open the socket and feed `run` from it (raises WS_ERRORS)."""
        ws = await self.opener.open_socket(self.client_id)
        self._generation += 1
        self._ws = ws
        run.adopt(ws, self._generation)
        self._reader = asyncio.get_running_loop().create_task(self._read(run, ws, self._generation))

    async def rejoin(self, run: Listener, retry: bool) -> None:
        """A new socket after a drop; `retry`: the handshake is tried again after a 429, a 5xx or
        a connection error."""
        # The old socket is closed first: the server keeps one socket per client id, and an old
        # one closing after the new one registered would unregister the new one.
        await self.leave(run)
        await (handshake(self.opener.service, lambda: self.join(run)) if retry else self.join(run))

    async def leave(self, run: Listener) -> None:
        ws, reader, self._ws, self._reader = self._ws, self._reader, None, None
        self._generation += 1
        run.adopt(None, self._generation)
        if reader is not None:
            reader.cancel()
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 3.0)

    async def _read(self, run: Listener, ws: ClientConnection, generation: int) -> None:
        try:
            async for message in ws:
                run.deliver(message)
        except WS_ERRORS:
            pass
        finally:
            run.deliver(Dropped(generation))


class SharedSocket:
    """A client's one WebSocket, shared by its jobs; each job gets its own prompt's messages. A
    message without a prompt id (a type 1 preview) goes to a job only when it is the one job of the
    account known to be running."""

    reconnect_when_silent = False  # Cloud does not unregister sockets; websockets' pings find dead ones

    def __init__(self, opener: Opener) -> None:
        self.opener = opener
        self.client_id = uuid.uuid4().hex
        self.runs: set[Listener] = set()
        self.ws: ClientConnection | None = None
        self.generation = 0
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._started: set[str] = set()  # prompts seen starting and ending on this socket
        self._ended: set[str] = set()

    async def join(self, run: Listener) -> None:
        """Deliver the run's messages to it, opening the socket if needed (raises WS_ERRORS)."""
        self.runs.add(run)
        async with self._lock:
            if self.ws is None:
                await self._replace()
            run.adopt(self.ws, self.generation)

    async def rejoin(self, run: Listener, retry: bool) -> None:
        """A new socket after the one `run` followed dropped, unless another run made one already;
        `retry`: the handshake is tried again after a 429, a 5xx or a connection error."""
        lost = run.generation  # read before waiting: a replacement adopts the run meanwhile
        async with self._lock:
            if self.ws is None or self.generation == lost:
                await (handshake(self.opener.service, self._replace) if retry else self._replace())
            run.adopt(self.ws, self.generation)

    async def leave(self, run: Listener) -> None:
        run.adopt(None, run.generation)
        self.runs.discard(run)
        async with self._lock:
            if not self.runs:
                await self.close()

    async def close(self) -> None:
        ws, reader, self.ws, self._reader = self.ws, self._reader, None, None
        self._started.clear()
        self._ended.clear()
        if reader is not None:
            reader.cancel()
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 3.0)

    async def _replace(self) -> None:
        await self.close()
        for run in self.runs:
            run.adopt(None, run.generation)  # polling until the new socket is up
        ws = await self.opener.open_socket(self.client_id)
        self.ws, self.generation = ws, self.generation + 1
        self._reader = asyncio.get_running_loop().create_task(self._read(ws, self.generation))
        for run in self.runs:
            run.adopt(ws, self.generation)
            if run.job is not None:  # it may have missed messages meanwhile: it checks the server
                run.poke()

    async def _read(self, ws: ClientConnection, generation: int) -> None:
        try:
            async for message in ws:
                self._route(message)
        except WS_ERRORS:
            pass
        finally:
            for run in list(self.runs):
                run.deliver(Dropped(generation))

    def _route(self, message: str | bytes) -> None:
        item: Any = message
        if isinstance(message, bytes):
            meta = preview_metadata(message)
            prompt_id = str(meta["prompt_id"]) if meta and meta.get("prompt_id") else None
        else:
            try:
                item = json.loads(message)
            except ValueError:
                return
            if not isinstance(item, dict):
                return
            data = as_dict(item.get("data"))
            prompt_id = data.get("prompt_id")
            self._track(item.get("type"), prompt_id, data)
            if item.get("type") == "status":  # the account's queue changed: every job checks
                for run in self.runs:
                    run.deliver(item)
                return
        for run in self._targets(prompt_id):
            run.deliver(item)

    def _targets(self, prompt_id: Any) -> list[Listener]:
        if prompt_id is not None:  # a run whose submit is still on its way filters it itself
            return [r for r in self.runs if r.prompt_id in ("", prompt_id)]
        sole = self._sole_running()
        return [sole] if sole is not None else []

    def _track(self, kind: Any, prompt_id: Any, data: Mapping[str, Any]) -> None:
        if prompt_id is None:
            return
        if kind == "execution_start":
            self._started.add(prompt_id)
        elif kind in ("execution_success", "execution_error", "execution_interrupted") or (
                kind == "executing" and data.get("node") is None):
            self._ended.add(prompt_id)

    def _sole_running(self) -> Listener | None:
        """Our run, if it is the only job of the account known to run (seen starting here, or
        running in the last /api/queue), else None: a message without a prompt id is then ours."""
        running = (self._started | set(self.opener.last_running())) - self._ended
        if len(running) != 1:
            return None
        return next((r for r in self.runs if r.prompt_id in running), None)
