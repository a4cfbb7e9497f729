"""ComfyUI's own HTTP + WebSocket API on any server: a RunComfy machine or a local ComfyUI.

There is no auth: on a RunComfy machine the URL itself is the secret, so it is kept in a `Secret`
and never appears in a repr, an exception or a log line of ours; messages say "ComfyUI server".
(Output `Media.url` is the server's `/view` URL and so does hold it; `Media` keeps it out of its
repr and this module's fetcher offers no `public_url`, so widgets never hand it to the browser.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx
import stamina
from websockets.exceptions import WebSocketException

from ..config import Secret
from ..errors import (
    APIError,
    BadRequest,
    JobCancelled,
    JobError,
    JobFailed,
    NotFound,
    RunComfyError,
    SubmitUncertain,
    TransportError,
    ValidationError,
    transient,
)
from ..jobs import (
    Contact,
    Job,
    JobResult,
    NodeStarted,
    Output,
    Preview,
    Progress,
    Queued,
    Started,
    Status,
    finish_cancels,
)
from ..media import Media, claim, media_from_outputs, mime_type
from ..transport import USER_AGENT, Storage, Transport, retries_of
from ..workflow import Workflow

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

SERVICE = "ComfyUI server"
T = TypeVar("T")
CLIENT_ID_PREFIX = "rcnb-"  # marks client ids we made, so `attach` may take one over
log = logging.getLogger("runcomfy_nb")
# websockets logs the handshake (host, path, query) at DEBUG; give it a logger that never does.
_ws_log = logging.getLogger("runcomfy_nb.comfyui.websocket")
_ws_log.setLevel(logging.INFO)

_WS_ERRORS: tuple[type[BaseException], ...] = (
    OSError, asyncio.TimeoutError, TimeoutError, WebSocketException,
)
_PREVIEW_MIME = {1: "image/jpeg", 2: "image/png"}
_IMAGE_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/bmp": ".bmp"}
SOCKET_SAVERS = {"SaveImageWebsocket"}  # nodes whose images exist only as WebSocket frames
WS_ATTEMPTS = 5
WS_RETRY_TIMEOUT = 30.0   # seconds a handshake is tried for
WS_MAX_RETRY_AFTER = 10.0  # a longer Retry-After is cut to this
_OBJECT_INFO: dict[str, tuple[bool, dict[str, Any]]] = {}  # base URL → (complete?, class → schema)


# --- typed replies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadedFile:
    """Where the server stored an upload; it may have renamed it (`cat (1).png`).
    `ref` (also `str(uploaded)`) is what a loader node's input takes."""

    name: str
    subfolder: str = ""
    type: str = "input"

    @property
    def ref(self) -> str:
        path = f"{self.subfolder}/{self.name}" if self.subfolder else self.name
        return path if self.type == "input" else f"{path} [{self.type}]"

    def __str__(self) -> str:
        return self.ref


@dataclass(frozen=True)
class Device:
    name: str
    type: str
    index: int | None = None
    vram_total: int | None = None
    vram_free: int | None = None


@dataclass(frozen=True)
class SystemStats:
    comfyui_version: str
    python_version: str = ""
    pytorch_version: str = ""
    os: str = ""
    ram_total: int | None = None
    ram_free: int | None = None
    devices: tuple[Device, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_reply(cls, reply: Any) -> SystemStats:
        reply = reply if isinstance(reply, dict) else {}
        system = reply.get("system") if isinstance(reply.get("system"), dict) else {}
        devices = tuple(
            Device(name=str(d.get("name", "")), type=str(d.get("type", "")), index=d.get("index"),
                   vram_total=d.get("vram_total"), vram_free=d.get("vram_free"))
            for d in reply.get("devices") or [] if isinstance(d, dict)
        )
        return cls(
            comfyui_version=str(system.get("comfyui_version") or ""),
            python_version=str(system.get("python_version") or ""),
            pytorch_version=str(system.get("pytorch_version") or ""), os=str(system.get("os") or ""),
            ram_total=system.get("ram_total"), ram_free=system.get("ram_free"), devices=devices,
            raw=reply,
        )


@dataclass(frozen=True)
class QueueStatus:
    """Prompt ids running and pending, in the order they will run."""

    running: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    _items: dict[str, list[Any]] = field(default_factory=dict, repr=False, compare=False)

    def position(self, prompt_id: str) -> int | None:
        """How many prompts run before this one (the running one included); None if absent."""
        if prompt_id in self.running:
            return 0
        if prompt_id in self.pending:
            return len(self.running) + self.pending.index(prompt_id)
        return None

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.running or prompt_id in self.pending


@dataclass(frozen=True)
class HistoryEntry:
    """A finished prompt: `status` is succeeded, failed or cancelled; `error` says why it failed."""

    prompt_id: str
    status: Status
    media: list[Media] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    error: str | None = None
    workflow: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def result(self) -> JobResult:
        return JobResult(job_id=self.prompt_id, media=list(self.media), text=list(self.text),
                         raw=self.raw)


# --- messages ------------------------------------------------------------------------------------


def _short(text: Any, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _node_name(nodes: Mapping[str, Any], node_id: str, class_type: Any = None) -> str:
    node = nodes.get(node_id) if isinstance(nodes.get(node_id), Mapping) else {}
    cls = node.get("class_type") or class_type
    meta = node.get("_meta") if isinstance(node.get("_meta"), Mapping) else {}
    title = meta.get("title")
    if title and cls and title != cls:
        return f'node {node_id} "{title}" ({cls})'
    return f"node {node_id} ({cls})" if cls else f"node {node_id}"


def rejection_message(body: Mapping[str, Any], nodes: Mapping[str, Any], service: str = SERVICE) -> str:
    """One readable text for a `/prompt` 400: the error, then one line per bad node input."""
    error = body.get("error") if isinstance(body.get("error"), Mapping) else {}
    head = str(error.get("message") or body.get("error") or "the prompt is invalid").strip().rstrip(".")
    lines = []
    node_errors = body.get("node_errors")
    for node_id, info in (node_errors.items() if isinstance(node_errors, Mapping) else ()):
        info = info if isinstance(info, Mapping) else {}
        name = _node_name(nodes, str(node_id), info.get("class_type"))
        for err in info.get("errors") or [{}]:
            err = err if isinstance(err, Mapping) else {"message": str(err)}
            extra = err.get("extra_info") if isinstance(err.get("extra_info"), Mapping) else {}
            where = f"{name}, input {extra['input_name']!r}" if extra.get("input_name") else name
            what = str(err.get("message") or err.get("type") or "invalid").strip().rstrip(".")
            details = err.get("details")
            text = f"{what}: {_short(details)}" if details and str(details) not in what else what
            lines.append(f"  - {where}: {text}")
    if lines:
        return f"The {service} rejected the prompt ({head}):\n" + "\n".join(lines)
    details = error.get("details")
    more = f": {_short(details)}" if details and str(details) not in head else ""
    return f"The {service} rejected the prompt ({head}{more})."


def execution_error_message(data: Mapping[str, Any], nodes: Mapping[str, Any], run: str = "ComfyUI") -> str:
    """Text for an `execution_error` (WebSocket or history): node, exception type and message."""
    node_id = data.get("node_id")
    where = _node_name(nodes, str(node_id), data.get("node_type")) if node_id is not None else "a node"
    kind = data.get("exception_type") or "error"
    message = str(data.get("exception_message") or "no message").strip()
    return f"The {run} run failed at {where}: {kind}: {message}"


def _new_client_id() -> str:
    return f"{CLIENT_ID_PREFIX}{uuid.uuid4().hex}"


def _ws_reason(exc: BaseException) -> str:
    """A cause that cannot carry the URL (websockets puts the URI into some messages)."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return type(exc).__name__


def _ws_retry(exc: Exception) -> bool | float:
    """Whether (or after how many seconds) to try a failed handshake again: after a connection
    error, a 5xx, or a 429 (its Retry-After, capped); any other refusal (401, 403, 404) is final."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is None:
        return isinstance(exc, _WS_ERRORS)
    if status != 429 and status < 500:
        return False
    try:
        return min(max(0.0, float(response.headers.get("Retry-After"))), WS_MAX_RETRY_AFTER)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return True


# --- the client ----------------------------------------------------------------------------------


class _ViewFetcher:
    """Downloads outputs from `/view` (streamed, atomic) through the shared Storage. It has no
    `public_url` on purpose: the URL holds the machine's secret and must not reach the page."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def __repr__(self) -> str:
        return "<ComfyUI outputs>"

    @property
    def loop(self) -> Any:
        return self._storage.loop

    async def read(self, media: Media) -> bytes:
        return await self._storage.read(media)

    async def save(self, media: Media, path: Path) -> Path:
        return await self._storage.save(media, path)


class AsyncComfyUI:
    """A ComfyUI server at `base_url` (e.g. a machine's `main_service_url`, or
    `http://127.0.0.1:8188`). `queue` returns a `Job` followed live over the WebSocket."""

    service = SERVICE  # how messages name the server
    kind = "comfyui"   # `Job.kind` of its jobs
    label = "ComfyUI"  # the start of their default label
    handle = "comfy"   # what the re-attach hint of a lost job calls the client

    def __init__(self, base_url: str | Secret, *, timeout: float = 30.0) -> None:
        raw = base_url.get() if isinstance(base_url, Secret) else base_url
        if not isinstance(raw, str) or not raw.strip():
            raise ValidationError("base_url must be the ComfyUI server's address, "
                                  "e.g. http://127.0.0.1:8188.")
        raw = raw.strip()
        if "://" not in raw:
            raw = f"http://{raw}"
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValidationError("The ComfyUI server's address must be an http:// or https:// URL.")
        self._base = Secret(urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")))
        self._http = self._transport(timeout)
        self._storage = Storage()
        self._fetcher = _ViewFetcher(self._storage)
        self._runs: set[_PromptRun] = set()
        self._deleted: set[str] = set()  # prompts we removed from the queue: gone means cancelled
        self._snapshot: tuple[float, QueueStatus] | None = None
        self._snapshot_task: asyncio.Task[QueueStatus] | None = None

    def __repr__(self) -> str:
        return f"<AsyncComfyUI {SERVICE}>"

    def _transport(self, timeout: float) -> Transport:
        return Transport(self._base.get(), service=self.service, timeout=timeout)

    async def __aenter__(self) -> AsyncComfyUI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections. Jobs still being followed are detached: they go on on the
        server, and `attach(prompt_id)` follows them again. Cancels that interrupted waits started
        are let finish first (bounded)."""
        await finish_cancels()
        if self._runs:
            log.warning("%d %s job(s) still running were detached; re-attach with "
                        "attach(prompt_id).", len(self._runs), self.label)
        for run in list(self._runs):
            if run.job is not None:
                run.job.detach()
        await self._http.aclose()
        await self._storage.aclose()

    # -- plain calls --
    async def system_stats(self) -> SystemStats:
        return SystemStats.from_reply(await self._http.request("GET", "/system_stats"))

    async def object_info(self, node_class: str | None = None, *, refresh: bool = False) -> dict[str, Any]:
        """Every node class's schema, or one class's schema; cached per server (`refresh=True`
        reads it again, e.g. after installing nodes). Do not modify what it returns."""
        key = self._base.get()
        complete, known = (False, {}) if refresh else _OBJECT_INFO.get(key, (False, {}))
        if node_class is None:
            if not complete:
                reply = await self._http.request("GET", "/object_info", timeout=120.0)
                if not isinstance(reply, dict):
                    raise APIError(f"The {self.service} sent no node list from /object_info.")
                known, complete = reply, True
                _OBJECT_INFO[key] = (complete, known)
            return known
        if node_class in known:
            return known[node_class]
        if not complete:
            reply = await self._http.request("GET", f"/object_info/{quote(node_class, safe='')}")
            schema = reply.get(node_class) if isinstance(reply, dict) else None
            if isinstance(schema, dict):
                _OBJECT_INFO[key] = (complete, {**known, node_class: schema})
                return schema
        raise ValidationError(f"The {self.service} has no node class {node_class!r} (is its custom node "
                              "pack installed?).")

    async def upload(
        self, file: str | os.PathLike[str] | bytes, *, filename: str | None = None,
        subfolder: str = "", type: str = "input", overwrite: bool = False, mask: bool = False,
        original_ref: UploadedFile | Mapping[str, str] | None = None,
    ) -> UploadedFile:
        """Upload an image or video (a path or bytes) for a loader node. Without `overwrite`,
        a different file of the same name is stored as `name (1).ext`: use the returned name.
        `mask=True` uploads a mask applied to `original_ref` (an earlier upload)."""
        if isinstance(file, (bytes, bytearray, memoryview)):
            if not filename:
                raise ValidationError("Uploading bytes needs filename=..., e.g. filename='cat.png'.")
            data = bytes(file)
        else:
            path = Path(file)
            if not path.is_file():
                raise ValidationError(f"No file to upload at {path}.")
            data = path.read_bytes()
            filename = filename or path.name
        name = PurePosixPath(str(filename).replace("\\", "/")).name
        if not name or name in (".", ".."):
            raise ValidationError(f"{filename!r} is not a usable file name.")
        if type not in ("input", "temp", "output"):
            raise ValidationError(f"type must be 'input', 'temp' or 'output', not {type!r}.")
        form = {"overwrite": "true" if overwrite else "false", "type": type, "subfolder": subfolder}
        if mask:
            if original_ref is None:
                raise ValidationError("A mask needs original_ref=: the uploaded image it applies to.")
            ref = original_ref if isinstance(original_ref, Mapping) else {
                "filename": original_ref.name, "subfolder": original_ref.subfolder,
                "type": original_ref.type}
            form["original_ref"] = json.dumps(dict(ref))
        try:
            # Safe to repeat: the same content under the same name is stored once.
            reply = await self._http.request(
                "POST", "/upload/mask" if mask else "/upload/image", data=form,
                files={"image": (name, data, mime_type(name))}, idempotent=True, timeout=300.0)
        except BadRequest as exc:
            raise self._upload_refused(name, exc) from None
        if not isinstance(reply, dict) or not reply.get("name"):
            raise APIError(f"The {self.service} took the upload of {name} but did not say where it put it.")
        return UploadedFile(name=str(reply["name"]), subfolder=str(reply.get("subfolder") or ""),
                            type=str(reply.get("type") or type))

    def _upload_refused(self, name: str, exc: BadRequest) -> BadRequest:
        if exc.status == 413:
            return BadRequest(f"The {self.service} refused {name}: it is over the server's upload limit "
                              "(100 MB unless started with --max-upload-size).", status=413)
        return BadRequest(f"The {self.service} rejected the upload of {name} (HTTP {exc.status}): check "
                          "the subfolder (it must stay inside the folder) and the file.", status=exc.status)

    async def queue_status(self) -> QueueStatus:
        reply = await self._http.request("GET", "/queue")
        reply = reply if isinstance(reply, dict) else {}
        items: dict[str, list[Any]] = {}

        def ids(key: str) -> tuple[str, ...]:
            rows = [r for r in reply.get(key) or [] if isinstance(r, list) and len(r) >= 2]
            rows.sort(key=lambda r: r[0] if isinstance(r[0], (int, float)) else 0)
            for row in rows:
                items[str(row[1])] = row
            return tuple(str(r[1]) for r in rows)

        return QueueStatus(running=ids("queue_running"), pending=ids("queue_pending"), _items=items)

    async def _queue_snapshot(self, max_age: float) -> QueueStatus:
        """`/queue`, shared by every job of this client when `max_age` seconds old is recent
        enough: a `status` broadcast reaches every job's socket at once, and a sweep of many
        queued jobs must not answer it with as many requests."""
        loop = asyncio.get_running_loop()
        if max_age <= 0:
            status = await self.queue_status()
            self._snapshot = (loop.time(), status)
            return status
        if self._snapshot is not None and loop.time() - self._snapshot[0] <= max_age:
            return self._snapshot[1]
        if self._snapshot_task is None or self._snapshot_task.done():
            self._snapshot_task = loop.create_task(self._take_snapshot())
        return await asyncio.shield(self._snapshot_task)

    async def _take_snapshot(self) -> QueueStatus:
        status = await self.queue_status()
        self._snapshot = (asyncio.get_running_loop().time(), status)
        return status

    @overload
    async def history(self, prompt_id: str) -> HistoryEntry | None: ...

    @overload
    async def history(self, prompt_id: None = None, *,
                      max_items: int | None = None) -> list[HistoryEntry]: ...

    async def history(
        self, prompt_id: str | None = None, *, max_items: int | None = None,
    ) -> HistoryEntry | list[HistoryEntry] | None:
        """One finished prompt (None while it is queued or running), or the recent ones,
        oldest first."""
        if prompt_id is not None:
            reply = await self._http.request("GET", f"/history/{quote(prompt_id, safe='')}")
            raw = reply.get(prompt_id) if isinstance(reply, dict) else None
            return self._entry(prompt_id, raw) if isinstance(raw, dict) else None
        params = {"max_items": max_items} if max_items is not None else None
        reply = await self._http.request("GET", "/history", params=params)
        return [self._entry(str(k), v) for k, v in (reply or {}).items() if isinstance(v, dict)]

    async def delete_pending(self, prompt_ids: str | Iterable[str]) -> None:
        """Remove prompts that have not started (a running prompt needs `interrupt`)."""
        ids = [prompt_ids] if isinstance(prompt_ids, str) else [str(p) for p in prompt_ids]
        self._deleted.update(ids)
        await self._http.request("POST", "/queue", json={"delete": ids}, idempotent=True)
        for run in list(self._runs):
            if run.prompt_id in ids:
                run.poke()

    async def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running prompt; with `prompt_id`, only if that prompt is the one running."""
        body = {"prompt_id": prompt_id} if prompt_id else None
        await self._http.request("POST", "/interrupt", json=body, idempotent=True)

    async def _stop_running(self, prompt_id: str, status: QueueStatus) -> bool:
        """Interrupt `prompt_id`, which `status` shows running; True if asked."""
        await self.interrupt(prompt_id)
        return True

    async def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        """Ask the server to unload models and free memory (done between prompts)."""
        await self._http.request("POST", "/free", idempotent=True,
                                 json={"unload_models": unload_models, "free_memory": free_memory})

    # -- jobs --
    async def queue(
        self, workflow: Workflow | Mapping[str, Any], *, client_id: str | None = None,
        extra_data: Mapping[str, Any] | None = None, label: str | None = None,
    ) -> Job:
        """Queue an API-format workflow and return its `Job`, followed over the WebSocket.

        A prompt the server refuses raises ValidationError with one line per bad node input.
        Each job has its own `client_id` unless one is given (the server sends a prompt's
        events only to the socket of its client id, and one socket per id)."""
        wf = workflow if isinstance(workflow, Workflow) else Workflow(workflow)
        if extra_data is not None and not isinstance(extra_data, Mapping):
            raise ValidationError("extra_data must be an object.")
        run = self._new_run(wf.data, client_id or _new_client_id())
        await run.connect()  # before the POST, so no event of the prompt can be missed
        try:
            prompt_id, number = await self._post_prompt(wf, run.client_id, extra_data)
        except BaseException:
            await run.close()
            raise
        run.prompt_id, run.number = prompt_id, number
        return self._start(run, label)

    async def attach(self, prompt_id: str, *, workflow: Workflow | Mapping[str, Any] | None = None,
                     label: str | None = None) -> Job:
        """Follow a prompt queued earlier (by this kernel before a restart, or elsewhere)."""
        status = await self.queue_status()
        item = status._items.get(prompt_id)
        if item is None:
            entry = await self.history(prompt_id)
            if entry is None:
                raise NotFound(f"The {self.service} has no prompt {prompt_id} in its queue or history.")
            nodes = entry.workflow
            client_id = None
        else:
            nodes = item[2] if len(item) > 2 and isinstance(item[2], dict) else {}
            extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
            theirs = str(extra.get("client_id") or "")
            # Only take over an id we made: reusing a browser tab's id would steal its events.
            client_id = theirs if theirs.startswith(CLIENT_ID_PREFIX) else _new_client_id()
        if workflow is not None:
            nodes = (workflow if isinstance(workflow, Workflow) else Workflow(workflow)).data
        run = self._new_run(nodes, client_id or _new_client_id())
        run.prompt_id = prompt_id
        if item is not None:
            await run.connect()
        return self._start(run, label)

    def _new_run(self, nodes: Mapping[str, Any], client_id: str) -> _PromptRun:
        return _PromptRun(self, nodes, client_id)

    def _start(self, run: _PromptRun, label: str | None) -> Job:
        job = Job(run, kind=self.kind, id=run.prompt_id, label=label or f"{self.label} · {run.prompt_id[:8]}")
        run.bind(job)
        self._runs.add(run)
        return job

    async def _post_prompt(
        self, wf: Workflow, client_id: str, extra_data: Mapping[str, Any] | None,
    ) -> tuple[str, Any]:
        body: dict[str, Any] = {"prompt": wf.to_api(), "client_id": client_id}
        if extra_data:  # a Secret (e.g. api_key_comfy_org) is revealed in the request body only
            body["extra_data"] = {k: v.get() if isinstance(v, Secret) else v for k, v in extra_data.items()}
        try:
            reply = await self._http.request("POST", "/prompt", json=body, idempotent=False)
        except BadRequest as exc:
            if isinstance(exc.detail, dict) and ("error" in exc.detail or "node_errors" in exc.detail):
                error = ValidationError(rejection_message(exc.detail, wf.data, self.service))
                error.detail = exc.detail  # type: ignore[attr-defined]
                raise error from None
            raise
        except SubmitUncertain:
            # Our client id is unique to this submit: if the server took it, it is findable.
            found = await self._find_by_client_id(client_id)
            if found is None:
                raise
            log.info("The %s took prompt %s although its reply was lost.", self.service, found)
            return found, None
        prompt_id = reply.get("prompt_id") if isinstance(reply, dict) else None
        if not prompt_id:
            raise APIError(f"The {self.service} accepted the prompt but returned no prompt_id.")
        dropped = reply.get("node_errors")
        if dropped:
            log.warning("%s", rejection_message({"error": {"message": "some outputs were dropped"},
                                                 "node_errors": dropped}, wf.data, self.service))
        return str(prompt_id), reply.get("number")

    async def _find_by_client_id(self, client_id: str) -> str | None:
        with contextlib.suppress(RunComfyError):
            status = await self.queue_status()
            for prompt_id, item in status._items.items():
                if len(item) > 3 and isinstance(item[3], dict) and item[3].get("client_id") == client_id:
                    return prompt_id
            for entry in await self.history(max_items=64):
                prompt = entry.raw.get("prompt")
                if (isinstance(prompt, list) and len(prompt) > 3 and isinstance(prompt[3], dict)
                        and prompt[3].get("client_id") == client_id):
                    return entry.prompt_id
        return None

    # -- helpers shared with the job backend --
    def _view_url(self, filename: str, subfolder: str = "", type: str = "output") -> str:
        query = urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        return f"{self._http.base_url}/view?{query}"

    def _media(self, outputs: Any) -> tuple[list[Media], list[str]]:
        """Media (with /view URLs) and text from ComfyUI `outputs`, per node or for one node."""
        with_urls: dict[str, Any] = {}
        for node_id, per_kind in (outputs.items() if isinstance(outputs, dict) else ()):
            if not isinstance(per_kind, dict):
                continue
            with_urls[str(node_id)] = {
                key: [{**item, "url": self._view_url(str(item["filename"]), str(item.get("subfolder") or ""),
                                                     str(item.get("type") or "output"))}
                      if isinstance(item, dict) and item.get("filename") else item
                      for item in items] if isinstance(items, list) else items
                for key, items in per_kind.items()
            }
        return media_from_outputs(with_urls, self._fetcher)

    def _entry(self, prompt_id: str, raw: dict[str, Any]) -> HistoryEntry:
        prompt = raw.get("prompt")
        has_nodes = isinstance(prompt, list) and len(prompt) > 2 and isinstance(prompt[2], dict)
        nodes = prompt[2] if has_nodes else {}
        status = raw.get("status") if isinstance(raw.get("status"), dict) else {}
        messages = {m[0]: m[1] for m in status.get("messages") or []
                    if isinstance(m, (list, tuple)) and len(m) == 2}
        error = None
        if "execution_interrupted" in messages:
            state = Status.CANCELLED
        elif status.get("status_str") == "error" or "execution_error" in messages:
            state = Status.FAILED
            data = messages.get("execution_error")
            error = (self._failure_text(data, nodes) if isinstance(data, dict)
                     else "The ComfyUI run failed without details.")
        else:  # success, or an old server that records no status
            state = Status.SUCCEEDED
        media, text = self._media(raw.get("outputs")) if state is Status.SUCCEEDED else ([], [])
        return HistoryEntry(prompt_id, state, media, text, error, workflow=nodes, raw=raw)

    def _failure_text(self, data: Mapping[str, Any], nodes: Mapping[str, Any]) -> str:
        """What an `execution_error` says, for the exception."""
        return execution_error_message(data, nodes)

    def _ws_url(self, client_id: str) -> str:
        parts = urlsplit(self._base.get())
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, f"{parts.path}/ws", f"clientId={quote(client_id)}", ""))

    async def _handshake(self, open_once: Callable[[], Awaitable[None]]) -> None:
        """`open_once()` (a WebSocket handshake), tried again after a connection error, a 5xx or a
        429 (after its Retry-After, capped), for up to WS_RETRY_TIMEOUT s."""
        with retries_of(f"{self.service} WebSocket handshake"):
            async for attempt in stamina.retry_context(on=_ws_retry, attempts=WS_ATTEMPTS,
                                                       timeout=WS_RETRY_TIMEOUT, wait_initial=0.25,
                                                       wait_max=4.0):
                with attempt:
                    await open_once()

    async def _answering(self, timeout: float = 10.0) -> None:
        """Raise TransportError (saying why, briefly) unless one GET /queue, without retries (and
        so without their log lines), is answered: the probe of a server that stopped answering."""
        try:
            await asyncio.wait_for(self._http.once("GET", "/queue"), timeout)
        except RunComfyError as exc:
            if transient(exc):
                why = f"HTTP {exc.status}" if isinstance(exc, APIError) else str(exc)
                raise TransportError(why) from None
        except httpx.ConnectError:
            raise TransportError("connection refused") from None
        except (httpx.HTTPError, OSError, asyncio.TimeoutError) as exc:
            raise TransportError(_ws_reason(exc)) from None

    async def _answers(self, timeout: float) -> bool:
        try:
            await self._answering(timeout)
        except TransportError:
            return False
        return True

    async def _open_socket(self, client_id: str) -> ClientConnection:
        from websockets.asyncio.client import connect

        ws = await connect(self._ws_url(client_id), open_timeout=15, close_timeout=2, max_size=64 * 2**20,
                           logger=_ws_log, user_agent_header=USER_AGENT)
        try:  # must be the first message: it asks for previews that name their prompt (type 4)
            await ws.send(json.dumps({"type": "feature_flags",
                                      "data": {"supports_preview_metadata": True}}))
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


# --- one prompt, followed ----------------------------------------------------------------------


class _Dropped:
    def __init__(self, generation: int) -> None:
        self.generation = generation


class _Unreachable(Exception):
    """A call to the server failed transiently; the outage is logged and the contact checked."""


_POKE = object()
_END = object()    # what a frame asks for: the prompt ended (the end-of-prompt marker)
_CHECK = object()  # the queue changed: check where the prompt is


class _Held:
    """An output that exists only as a WebSocket frame (`SaveImageWebsocket`): its bytes are here,
    so `read()` and `save()` need no download. The bytes stay out of the repr."""

    def __init__(self, data: bytes, storage: Storage) -> None:
        self._data = data
        self._storage = storage

    def __repr__(self) -> str:
        return f"<{len(self._data)} bytes from the WebSocket>"

    @property
    def loop(self) -> Any:
        return self._storage.loop

    async def read(self, media: Media) -> bytes:
        return self._data

    async def save(self, media: Media, path: Path) -> Path:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:60]}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as sink:
                sink.write(self._data)
            return claim(Path(tmp), path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


class _PromptRun:
    """The JobBackend of one prompt: the WebSocket for live events, `/queue` and `/history`
    whenever the socket drops, goes quiet or a cancel was asked for. A server that stops answering
    is probed (one attempt, no retries) until it answers again; after the contact timeout without
    any answer the job fails with ContactLost."""

    IDLE_CHECK = 10.0        # a quiet socket: check /queue and /history this often
    POLL_INTERVAL = 1.0      # without a socket (or while ending or cancelling)
    MAX_DROPS = 20           # then follow the prompt by polling only
    HISTORY_WAIT = 5.0       # history is written a moment after execution_success
    CATCH_UP_WAIT = 5.0      # at most this long for the frames of a prompt the history shows ended
    CATCH_UP_QUIET = 1.0     # ... and no longer once the socket stays quiet this long
    CANCEL_CALL_TIMEOUT = 15.0
    RECONNECT_WHEN_SILENT = True  # a quiet socket may have been unregistered (see _reconnect)

    def __init__(self, api: AsyncComfyUI, nodes: Mapping[str, Any], client_id: str) -> None:
        self.api = api
        self.nodes = dict(nodes)
        self.client_id = client_id
        self.prompt_id = ""
        self.number: Any = None
        self.job: Job | None = None
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._generation = 0
        self._drops = self._polls = 0
        self._last_message = 0.0
        self._current: str | None = None
        self._done: set[str] = set()
        self._last_progress: tuple[Any, ...] | None = None
        self._emitted: list[Media] = []
        self._held: list[Media] = []  # outputs that came as frames (SaveImageWebsocket)
        self._text: list[str] = []
        self._succeeded = self._cancelling = self._ended = False
        self._outage = self._socket_warned = False
        self._contact: Contact | None = None
        self._watcher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<ComfyUI prompt {self.prompt_id or '(not queued)'}>"

    def bind(self, job: Job) -> None:
        self.job = job
        self._count()
        # A job detached before its first step never runs `run`: close the socket regardless.
        self._watcher = asyncio.get_running_loop().create_task(self._close_when_done(job))

    async def _close_when_done(self, job: Job) -> None:
        try:
            await job.wait()
        finally:
            await self.close()
            self.api._runs.discard(self)

    def poke(self) -> None:
        """Check the queue and history now (after a cancel or a delete)."""
        self._inbox.put_nowait(_POKE)

    # -- contact --
    @property
    def contact(self) -> Contact:
        if self._contact is None:
            self._contact = Contact(self.api.service, self.prompt_id,
                                    f"`await {self.api.handle}.attach({self.prompt_id!r})`")
        return self._contact

    def _answered(self) -> None:
        self.contact.answered()
        if self._outage:
            self._outage = False
            log.info("The %s answers again; following prompt %s on.", self.api.service, self.prompt_id)

    def _unanswered(self, reason: str) -> None:
        """One line when an outage starts (not one per attempt); ContactLost past the contact timeout."""
        if not self._outage:
            self._outage = True
            log.warning("No answer from the %s (%s); prompt %s is checked again until it answers, for "
                        "up to %.0f s.", self.api.service, reason, self.prompt_id, self.contact.limit)
        self.contact.check()

    async def _reach(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, or _Unreachable when the server did not answer it. During an outage a single
        probe comes first, so the waiting logs no retries."""
        contact = self.contact
        if self._outage and not await self.api._answers(max(0.5, contact.limit - contact.silent)):
            self._unanswered("still no answer")
            raise _Unreachable
        try:  # cut at the contact timeout: a server that takes connections but never answers
            value = await asyncio.wait_for(call(), max(0.5, contact.limit - contact.silent))
        except (asyncio.TimeoutError, RunComfyError) as exc:
            if isinstance(exc, JobError) or not (transient(exc) or isinstance(exc, asyncio.TimeoutError)):
                raise
            self._unanswered(str(exc) or "timed out")
            raise _Unreachable from None
        self._answered()
        return value

    # -- socket --
    async def connect(self) -> None:
        try:
            await self.api._handshake(self._open)
        except _WS_ERRORS as exc:
            self._socket_warned = True
            log.warning("Could not open the %s's WebSocket (%s); the prompt is followed by polling, "
                        "without live progress.", self.api.service, _ws_reason(exc))

    async def _open(self) -> None:
        self._adopt(await self.api._open_socket(self.client_id))

    def _adopt(self, ws: ClientConnection) -> None:
        self._generation += 1
        self._ws = ws
        self._socket_warned = False
        self._last_message = asyncio.get_running_loop().time()
        self._reader = asyncio.get_running_loop().create_task(self._read(ws, self._generation))

    async def _read(self, ws: ClientConnection, generation: int) -> None:
        try:
            async for message in ws:
                self._inbox.put_nowait(message)
        except _WS_ERRORS:
            pass
        finally:
            self._inbox.put_nowait(_Dropped(generation))

    async def close(self) -> None:
        ws, reader, self._ws, self._reader = self._ws, self._reader, None, None
        self._generation += 1
        if reader is not None:
            reader.cancel()
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 3.0)

    async def _reconnect(self, retry: bool = True) -> None:
        try:
            await self._reopen(retry)
        except _WS_ERRORS as exc:
            if not self._socket_warned:  # once per lost socket, however often it is tried again
                self._socket_warned = True
                log.warning("Lost the %s's WebSocket and could not reconnect (%s); following prompt %s "
                            "by polling.", self.api.service, _ws_reason(exc), self.prompt_id)

    async def _reopen(self, retry: bool) -> None:
        # The old socket is closed first: the server keeps one socket per client id, and an old
        # one closing after the new one registered would unregister the new one.
        await self.close()
        await (self.api._handshake(self._open) if retry else self._open())

    # -- the JobBackend protocol --
    async def run(self, job: Job) -> JobResult:
        self.job = job
        try:
            outcome = await self._reconcile()  # the position, or a prompt that already ended
            while outcome is None:
                outcome = await self._next()
            return outcome
        finally:
            await self.close()
            self.api._runs.discard(self)

    async def cancel(self) -> bool:
        service = self.api.service
        if self._outage and not await self.api._answers(5.0):
            raise TransportError(f"The {service} does not answer: the cancel of prompt {self.prompt_id} "
                                 "could not be sent.")
        try:
            async with asyncio.timeout(self.CANCEL_CALL_TIMEOUT):
                return await self._cancel()
        except TimeoutError:
            raise TransportError(f"The {service} did not answer the cancel of prompt {self.prompt_id} "
                                 f"within {self.CANCEL_CALL_TIMEOUT:g} s.") from None

    async def _cancel(self) -> bool:
        status = await self.api.queue_status()
        accepted = False
        if self.prompt_id in status.pending:
            await self.api.delete_pending([self.prompt_id])
            status = await self.api.queue_status()
            accepted = self.prompt_id not in status.running  # else it started meanwhile
        if self.prompt_id in status.running:  # it ends with execution_interrupted
            accepted = await self.api._stop_running(self.prompt_id, status)
        self._cancelling = self._cancelling or accepted
        self.poke()
        return accepted

    # -- the loop --
    async def _next(self) -> JobResult | None:
        quick = self._ws is None or self._succeeded or self._cancelling
        try:
            item = await asyncio.wait_for(self._inbox.get(),
                                          self.POLL_INTERVAL if quick else self.IDLE_CHECK)
        except asyncio.TimeoutError:
            return await self._on_idle()
        if isinstance(item, _Dropped):
            return await self._on_drop(item)
        if item is _POKE:
            return await self._reconcile()
        asked = self._take(item)
        if asked is _END:
            return await self._finish()
        if asked is _CHECK:
            return await self._reconcile(max_age=1.0)
        return None

    def _take(self, item: Any) -> object | None:
        """Process one frame of the socket; what it asks for (_END, _CHECK) or None."""
        self._answered()
        self._last_message = asyncio.get_running_loop().time()
        if isinstance(item, bytes):
            self._binary(item)
            return None
        try:
            message = item if isinstance(item, dict) else json.loads(item)
        except ValueError:
            return None
        return self._message(message) if isinstance(message, dict) else None

    async def _on_drop(self, item: _Dropped) -> JobResult | None:
        if item.generation != self._generation:
            return None  # a socket we closed ourselves
        self._ws = None  # it is gone; while the server does not answer, it is probed, not reopened
        self._drops += 1
        try:
            await self._reach(self.api._answering)
        except _Unreachable:
            return None
        if self._generation != item.generation:  # meanwhile a new socket took the run over (Cloud's)
            return await self._reconcile()
        if self._drops <= self.MAX_DROPS:
            await self._reconnect()
        else:
            await self.close()
        return await self._reconcile()

    async def _on_idle(self) -> JobResult | None:
        if self._succeeded:
            return await self._finish()
        was_out = self._outage
        outcome = await self._reconcile(max_age=0.0 if self._ws is None else 1.0)
        if outcome is not None or self._outage:
            return outcome
        self._polls += 1
        loop = asyncio.get_running_loop()
        silent = loop.time() - self._last_message
        if self._ws is None and self._drops <= self.MAX_DROPS and (was_out or self._polls % 5 == 0):
            await self._reconnect(retry=was_out)  # live events again once the socket is back
        elif (self.RECONNECT_WHEN_SILENT and self._ws is not None and self.job is not None
              and self.job.status is Status.RUNNING and silent > 2 * self.IDLE_CHECK):
            # The server may have unregistered our socket (see _reconnect); registering again
            # is cheap and it re-sends the running node.
            await self._reconnect()
        return None

    # -- what the server says --
    def _message(self, message: dict[str, Any]) -> object | None:
        job = self.job
        assert job is not None
        kind = message.get("type")
        data = message.get("data") if isinstance(message.get("data"), dict) else {}
        prompt_id = data.get("prompt_id")
        if prompt_id is not None and prompt_id != self.prompt_id:
            return None  # another prompt of a shared client id
        if kind == "status":  # the queue changed: our position may have
            return _CHECK if job.status is Status.QUEUED else None
        if kind == "execution_start":
            if job.status is Status.QUEUED:
                job.emit(Started())
        elif kind == "execution_cached":
            self._mark_done(*(str(n) for n in data.get("nodes") or []))
        elif kind == "executing":
            node = data.get("node")
            if node is None:
                if prompt_id is None and job.status is not Status.RUNNING:
                    return None
                self._ended = True
                return _END  # the end-of-prompt marker
            self._node_started(str(data.get("display_node") or node))
        elif kind == "progress":
            self._progress(data.get("node"), data.get("value"), data.get("max"))
        elif kind == "progress_state":
            self._progress_state(data.get("nodes"))
        elif kind == "executed":
            self._executed(str(data.get("display_node") or data.get("node")), data.get("output"))
        elif kind == "execution_success":
            self._succeeded = True  # the outputs come from /history after the end marker
        elif kind == "execution_error":
            raise JobFailed(self.api._failure_text(data, self.nodes), job_id=self.prompt_id,
                            detail=data)
        elif kind == "execution_interrupted":
            raise JobCancelled(f"Prompt {self.prompt_id} was interrupted on the {self.api.service}.",
                               job_id=self.prompt_id, detail=data)
        return None  # unknown and custom types are ignored

    def _progress_state(self, nodes: Any) -> None:
        for node_id, state in (nodes.items() if isinstance(nodes, dict) else ()):
            if not isinstance(state, dict):
                continue
            shown = str(state.get("display_node_id") or node_id)
            if state.get("state") == "finished":
                self._mark_done(shown)
            elif state.get("state") == "running" and (state.get("max") or 0) > 1:
                self._progress(shown, state.get("value"), state.get("max"))

    def _executed(self, node: str, output: Any) -> None:
        self._mark_done(node)
        media, text = self.api._media({node: output})
        self._text += text
        for item in media:
            self._output(item)

    def _output(self, media: Media) -> None:
        if media not in self._emitted:
            self._emitted.append(media)
            assert self.job is not None
            self.job.emit(Output(media))

    def _binary(self, frame: bytes) -> None:
        job = self.job
        if job is None or len(frame) < 8:
            return
        kind, word = struct.unpack(">II", frame[:8])
        if kind == 1:  # no prompt id: ours if we are running (the socket is this prompt's own,
            # or Comfy Cloud's router found ours the only job running)
            if job.status is Status.RUNNING:
                self._image(frame[8:], _PREVIEW_MIME.get(word, "image/jpeg"), self._current)
        elif kind == 4:
            meta = preview_metadata(frame)
            if meta is not None and meta.get("prompt_id") in (None, self.prompt_id):
                node = meta.get("display_node_id") or meta.get("node_id") or self._current
                self._image(frame[8 + word:], str(meta.get("image_type") or "image/jpeg"),
                            str(node) if node is not None else None)
        # 3 (text to a node) and unknown types: nothing to show

    def _image(self, data: bytes, mime: str, node: str | None) -> None:
        """A preview, or, from a node that saves to the socket, an output held in memory."""
        info = self.nodes.get(node) if node is not None else None
        if not (isinstance(info, dict) and info.get("class_type") in SOCKET_SAVERS):
            assert self.job is not None
            self.job.emit(Preview(data, mime, node))
            return
        n = sum(1 for m in self._held if m.node == node) + 1
        name = f"ws_{node}_{n}{_IMAGE_EXTENSIONS.get(mime, '.png')}"
        media = Media(url=f"websocket:{self.prompt_id}/{node}/{n}", filename=name, kind="image", node=node,
                      _fetcher=_Held(data, self.api._storage))
        self._held.append(media)
        self._output(media)

    def _node_started(self, node: str) -> None:
        if node == self._current:
            return  # re-sent after a reconnect
        if self._current is not None:
            self._mark_done(self._current)
        self._current = node
        self._count()
        assert self.job is not None
        self.job.emit(NodeStarted(node, self._title(node)))

    def _progress(self, node: Any, value: Any, maximum: Any) -> None:
        if not isinstance(value, (int, float)) or not isinstance(maximum, (int, float)):
            return
        node = str(node) if node is not None else self._current
        if (node, value, maximum) == self._last_progress:
            return  # progress and progress_state report the same step
        self._last_progress = (node, value, maximum)
        assert self.job is not None
        self.job.emit(Progress(value, maximum, node))

    def _title(self, node: str) -> str:
        info = self.nodes.get(node) if isinstance(self.nodes.get(node), dict) else {}
        meta = info.get("_meta") if isinstance(info.get("_meta"), dict) else {}
        return str(meta.get("title") or info.get("class_type") or node)

    def _mark_done(self, *nodes: str) -> None:
        self._done.update(n for n in nodes if n in self.nodes)
        self._count()

    def _count(self) -> None:
        # Read by widgets as "nodes 3/7": cached and executed nodes count as done.
        if self.job is not None:
            self.job.nodes_total = len(self.nodes)
            self.job.nodes_done = len(self._done)

    # -- the outcome --
    async def _finish(self) -> JobResult | None:
        """The prompt ended (marker, or success and silence): its outcome is in /history."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.HISTORY_WAIT
        while True:
            try:
                entry = await self._reach(self._outcome)
            except _Unreachable:
                entry = None
            if entry is not None:
                return await self._conclude(entry)
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.2)
        if self._succeeded:  # no history on this server: what the socket delivered
            self._mark_done(*self.nodes)
            return JobResult(job_id=self.prompt_id, media=list(self._emitted), text=list(self._text))
        return await self._reconcile()

    async def _outcome(self) -> HistoryEntry | None:
        """The prompt's end (None while it is queued or running)."""
        return await self.api.history(self.prompt_id)

    def _follow_queue(self, status: QueueStatus) -> bool:
        """Emit Started or Queued(position) from `status`; False if the prompt is in neither list."""
        job = self.job
        assert job is not None
        if self.prompt_id in status.running:
            if job.status is Status.QUEUED:
                job.emit(Started())
            return True
        if self.prompt_id in status.pending:
            position = status.position(self.prompt_id)
            if job.status is Status.QUEUED and (position != job.position or not any(
                    isinstance(e, Queued) for e in job.history)):
                job.emit(Queued(position))
            return True
        return False

    async def _reconcile(self, max_age: float = 0.0) -> JobResult | None:
        """Where the prompt is now; its result or end once the history has it."""
        try:
            entry = await self._reach(lambda: self._locate(max_age))
        except _Unreachable:
            return None
        return await self._conclude(entry) if entry is not None else None

    async def _locate(self, max_age: float) -> HistoryEntry | None:
        """The prompt's history entry, or None while /queue has it (in that order, so a prompt
        that finishes in between is found in the history)."""
        for attempt in range(3):
            if self._follow_queue(await self.api._queue_snapshot(max_age if attempt == 0 else 0.0)):
                return None
            entry = await self._outcome()
            if entry is not None:
                return entry
            if self.prompt_id in self.api._deleted:
                raise JobCancelled(f"Prompt {self.prompt_id} was removed from the ComfyUI queue "
                                   "before it ran.", job_id=self.prompt_id)
            if attempt < 2:
                await asyncio.sleep(0.3)
        raise JobFailed(f"Prompt {self.prompt_id} is neither queued nor in the history of the "
                        f"{self.api.service}: it was deleted there, or the server restarted.",
                        job_id=self.prompt_id)

    async def _conclude(self, entry: HistoryEntry) -> JobResult:
        """Settle from the history once the frames the socket holds for the prompt are processed:
        a fast prompt ends before they are read, and some of its outputs exist only there."""
        await self._catch_up()
        return self._settle(entry)

    async def _catch_up(self) -> None:
        """Process the frames received, in order, up to the end-of-prompt marker (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.CATCH_UP_WAIT
        while not self._ended:
            wait = min(self.CATCH_UP_QUIET, deadline - loop.time()) if self._ws is not None else 0.0
            try:
                item = self._inbox.get_nowait() if wait <= 0 else await asyncio.wait_for(
                    self._inbox.get(), wait)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                return
            if isinstance(item, _Dropped):
                if item.generation == self._generation:
                    return  # the socket is gone: nothing more will come
            elif item is not _POKE:
                self._take(item)

    def _settle(self, entry: HistoryEntry) -> JobResult:
        detail = entry.raw.get("execution_error") or entry.raw.get("status")  # Cloud's job, or history
        if entry.status is Status.CANCELLED:
            raise JobCancelled(f"Prompt {self.prompt_id} was interrupted on the {self.api.service}.",
                               job_id=self.prompt_id, detail=detail)
        if entry.status is Status.FAILED:
            raise JobFailed(entry.error or "The ComfyUI run failed.", job_id=self.prompt_id, detail=detail)
        self._mark_done(*self.nodes)
        result = entry.result
        result.media += [m for m in self._held if m not in result.media]  # history has no file for them
        return result


__all__ = [
    "AsyncComfyUI", "Device", "HistoryEntry", "QueueStatus", "SystemStats", "UploadedFile",
    "execution_error_message", "rejection_message",
]
