"""The HTTP client of ComfyUI's API, shared by every server that speaks it (`ComfyClient`, given a
`Dialect`), and `AsyncComfyUI`, the client of a stock server: a RunComfy machine or a local ComfyUI.

A stock server has no auth: on a RunComfy machine the URL itself is the secret, so it is kept in a
`Secret` and never appears in a repr, an exception or a log line of ours; messages say "ComfyUI
server". (Output `Media.url` is the server's `/view` URL and so does hold it; `Media` keeps it out of
its repr and the outputs' fetcher offers no `public_url`, so widgets never hand it to the browser.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, overload
from urllib.parse import quote, urlsplit, urlunsplit

from ...config import Secret
from ...errors import (
    APIError,
    BadRequest,
    NotFound,
    RunComfyError,
    SubmitUncertain,
    TransportError,
    UnexpectedReply,
    ValidationError,
)
from ...inputs import upload_local_files
from ...jobs import Job, finish_cancels
from ...journal import journal, server_of, submitting
from ...media import mime_type
from ...once import SharedReads
from ...provenance import record
from ...storage import Storage
from ...sweep import COMFYUI_CONCURRENCY, Sweep, check_values, workflow_sweep
from ...ui_format import is_ui_format, to_api
from ...workflow import UI_FORMAT_HELP, Workflow, check_workflow
from .dialect import Dialect
from .link import Link
from .messages import PromptRejected, rejection_message
from .replies import (
    HistoryEntry,
    QueueStatus,
    SystemStats,
    UploadedFile,
    client_id_of,
)
from .socket_run import SocketRun
from .sockets import OwnSocket, SharedSocket
from .uploads import upload_parts

CLIENT_ID_PREFIX = "rcnb-"  # marks client ids we made, so `attach` may take one over
log = logging.getLogger("runcomfy_nb")
_OBJECT_INFO: dict[str, tuple[bool, dict[str, Any]]] = {}  # server+credential → (complete?, class → schema)


def new_client_id() -> str:
    return f"{CLIENT_ID_PREFIX}{uuid.uuid4().hex}"


def _base_url(base_url: str | Secret) -> Secret:
    raw = base_url.get() if isinstance(base_url, Secret) else base_url
    if not isinstance(raw, str) or not raw.strip():
        raise ValidationError("base_url must be the ComfyUI server's address, e.g. http://127.0.0.1:8188.")
    raw = raw.strip()
    if "://" not in raw:
        raw = f"http://{raw}"
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationError("The ComfyUI server's address must be an http:// or https:// URL.")
    return Secret(urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")))


class ComfyClient:
    """A server that speaks ComfyUI's HTTP + WebSocket API at `base_url`, the way `dialect` says
    (default: a stock ComfyUI server). Its jobs are followed live over the WebSocket."""

    def __init__(self, base_url: str | Secret, *, dialect: Dialect | None = None,
                 timeout: float = 30.0, machine: str | None = None) -> None:
        self._dialect = dialect or Dialect()
        self._machine = machine  # the RunComfy machine's server id, when it runs on one
        self._base = _base_url(base_url)
        self._http = self._dialect.transport(self._base.get(), timeout)
        self._storage = Storage()
        self._link = Link(self, self._dialect, self._base, self._http, self._storage)
        self._fetcher = self._link.fetcher
        self._runs = self._link.runs
        self._shared = SharedSocket(self._link) if self._dialect.shared_socket else None
        self._reads = SharedReads()  # one /object_info read for every check waiting on it

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._dialect.shown_as(self._base.get())}>"

    @property
    def service(self) -> str:
        """How messages name the server."""
        return self._dialect.service

    async def __aenter__(self) -> ComfyClient:
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
                        "attach(prompt_id).", len(self._runs), self._dialect.label)
        for run in list(self._runs):
            if run.job is not None:
                run.job.detach()
        await self._http.aclose()
        await self._storage.aclose()
        if self._shared is not None:
            await self._shared.close()

    # -- plain calls --
    async def system_stats(self) -> SystemStats:
        return SystemStats.from_reply(await self._http.request("GET", "/system_stats"))

    async def object_info(self, node_class: str | None = None, *, refresh: bool = False) -> dict[str, Any]:
        """Every node class's schema, or one class's schema; cached per server and credential
        (`refresh=True` reads it again, e.g. after installing nodes). Do not modify what it returns."""
        key = self._cache_key()
        complete, known = (False, {}) if refresh else _OBJECT_INFO.get(key, (False, {}))
        if node_class is None:
            if not complete:
                reply = await self._reads.read("object_info", lambda: self._http.request(
                    "GET", "/object_info", timeout=120.0))
                if not isinstance(reply, dict):
                    raise UnexpectedReply(f"The {self.service} sent no node list from /object_info.")
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

    def _cache_key(self) -> str:
        """Whose node list a cached `object_info` is: the server's (a stock server has no auth)."""
        return self._base.get()

    async def _node_list(self, refresh: bool) -> dict[str, Any] | None:
        try:
            return await self.object_info(refresh=refresh)
        except (APIError, TransportError) as exc:
            log.info("Could not read the %s's node list (%s): the full check was skipped; only the "
                     "workflow itself was checked.", self.service, type(exc).__name__)
            return None

    async def check(self, workflow: Workflow | Mapping[str, Any]) -> dict[str, Any] | None:
        """Check `workflow` against the server's node schemas (`object_info`, see
        `workflow.check_workflow`): every problem in one ValidationError, before anything is sent.
        A problem found with a cached node list is checked again once against a fresh read (a node,
        model or upload may be there since). Returns the node list used (None: unreadable)."""
        wf = await self.api_workflow(workflow)
        cached = _OBJECT_INFO.get(self._cache_key(), (False, {}))[0]
        info = await self._node_list(refresh=False)
        what = f"the workflow for the {self.service}"
        try:
            check_workflow(wf, info, what=what)
        except ValidationError:
            if info is None or not cached:
                raise
            info = await self._node_list(refresh=True)
            check_workflow(wf, info, what=what)
        return info

    async def upload(
        self, file: str | os.PathLike[str] | bytes, *, filename: str | None = None,
        subfolder: str = "", type: str = "input", overwrite: bool = False, mask: bool = False,
        original_ref: UploadedFile | Mapping[str, str] | None = None,
    ) -> UploadedFile:
        """Upload an image or video (a path or bytes) for a loader node. Without `overwrite`,
        a different file of the same name is stored as `name (1).ext`: use the returned name.
        `mask=True` uploads a mask applied to `original_ref` (an earlier upload)."""
        name, data, form = upload_parts(file, filename=filename, subfolder=subfolder, type=type,
                                        overwrite=overwrite, mask=mask, original_ref=original_ref)
        try:
            # Safe to repeat: the same content under the same name is stored once.
            reply = await self._http.request(
                "POST", "/upload/mask" if mask else "/upload/image", data=form,
                files={"image": (name, data, mime_type(name))}, idempotent=True, timeout=300.0)
        except BadRequest as exc:
            raise self._dialect.upload_refused(name, exc) from None
        if not isinstance(reply, dict) or not reply.get("name"):
            raise UnexpectedReply(f"The {self.service} took the upload of {name} but did not say where it "
                                  "put it.")
        return UploadedFile(name=str(reply["name"]), subfolder=str(reply.get("subfolder") or ""),
                            type=str(reply.get("type") or type))

    async def queue_status(self) -> QueueStatus:
        return QueueStatus.from_reply(await self._http.request("GET", "/queue"))

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
        path = self._dialect.history_path
        if prompt_id is not None:
            reply = await self._http.request("GET", f"{path}/{quote(prompt_id, safe='')}")
            raw = reply.get(prompt_id) if isinstance(reply, dict) else None
            return self._link.entry(prompt_id, raw) if isinstance(raw, dict) else None
        params = {"max_items": max_items} if max_items is not None else None
        reply = await self._http.request("GET", path, params=params)
        return [self._link.entry(str(k), v) for k, v in (reply or {}).items() if isinstance(v, dict)]

    async def delete_pending(self, prompt_ids: str | Iterable[str]) -> None:
        """Remove prompts that have not started (a running prompt needs `interrupt`)."""
        ids = [prompt_ids] if isinstance(prompt_ids, str) else [str(p) for p in prompt_ids]
        self._link.deleted.update(ids)
        await self._http.request("POST", "/queue", json={"delete": ids}, idempotent=True)
        for run in list(self._runs):
            if run.prompt_id in ids:
                run.poke()

    async def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running prompt; with `prompt_id`, only if that prompt is the one running."""
        await self._dialect.interrupt(self._link, prompt_id)

    async def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        """Ask the server to unload models and free memory (done between prompts)."""
        await self._http.request("POST", "/free", idempotent=True,
                                 json={"unload_models": unload_models, "free_memory": free_memory})

    # -- jobs --
    async def _submit(
        self, workflow: Workflow | Mapping[str, Any], client_id: str | None,
        extra_data: Mapping[str, Any] | None, label: str | None, *, validate: bool = True,
    ) -> Job:
        """Queue `workflow` (checked first unless `validate` is False) and return its Job; its
        socket is open before the POST, so no event of the prompt can be missed."""
        if extra_data is not None and not isinstance(extra_data, Mapping):
            raise ValidationError("extra_data must be an object.")
        wf = await upload_local_files(await self.api_workflow(workflow), self._stored_name)
        if validate:
            await self.check(wf)
        run = self._new_run(wf.data, client_id or new_client_id())
        await run.connect()
        kind, target, where = self._dialect.kind, self._target(), self._where()
        try:
            with submitting(kind, target, client_id=run.client_id, label=label, **where) as pending:
                prompt_id, number = await self._post_prompt(wf, run.client_id, extra_data)
        except BaseException:
            await run.close()
            raise
        run.prompt_id, run.number = prompt_id, number
        job = self._start(run, label)
        job.provenance = record(target=target, kind=kind, job_id=prompt_id, workflow=wf,
                                extra_data=extra_data)
        pending.taken(job, target=target, **where)
        return job

    def _target(self) -> str:
        """What provenance and the journal call this client's target: "comfyui" or "comfy cloud"."""
        return {"cloud": "comfy cloud"}.get(self._dialect.kind, self._dialect.kind)

    def _where(self) -> dict[str, str]:
        """Where this client's jobs run, for the journal: the machine's server id or the URL of a
        ComfyUI server that is not a machine (see journal.server_of); Comfy Cloud's API base."""
        if self._dialect.kind == "cloud":
            return {"base_url": self._base.get().rstrip("/")}
        return {"server": self._machine or server_of(self._base.get())}  # never a machine's URL

    async def api_workflow(self, workflow: Workflow | Mapping[str, Any]) -> Workflow:
        """`workflow` as an API-format Workflow: a UI-format export (ComfyUI's Save) is converted
        with the server's node schemas, as ComfyUI's Export (API) does (see ui_format)."""
        if isinstance(workflow, Workflow) or not is_ui_format(workflow):
            return workflow if isinstance(workflow, Workflow) else Workflow(workflow)
        info = await self._node_list(refresh=False)
        if info is None:
            raise ValidationError(f"{UI_FORMAT_HELP} (The {self.service}'s node list, needed to convert "
                                  "it here, could not be read.)")
        return Workflow(to_api(workflow, info))

    async def _stored_name(self, path: os.PathLike[str]) -> str:
        """Upload a local input file; what a loader's input takes to find it (its stored name)."""
        return (await self.upload(path)).ref

    async def attach(self, prompt_id: str, *, workflow: Workflow | Mapping[str, Any] | None = None,
                     label: str | None = None) -> Job:
        """Follow a prompt queued earlier (by this kernel before a restart, or elsewhere); the
        start of a journaled job's id is enough."""
        prompt_id = _journaled(prompt_id, self._dialect.kind)
        status = await self.queue_status()
        item = status.items.get(prompt_id)
        if item is None:
            entry = await self.history(prompt_id)
            if entry is None:
                raise NotFound(f"The {self.service} has no prompt {prompt_id} in its queue or history.")
            nodes = entry.workflow
            client_id = None
        else:
            nodes = item[2] if len(item) > 2 and isinstance(item[2], dict) else {}
            theirs = client_id_of(item) or ""
            # Only take over an id we made: reusing a browser tab's id would steal its events.
            client_id = theirs if theirs.startswith(CLIENT_ID_PREFIX) else new_client_id()
        if workflow is not None:
            nodes = (workflow if isinstance(workflow, Workflow) else Workflow(workflow)).data
        run = self._new_run(nodes, client_id or new_client_id())
        run.prompt_id = prompt_id
        if item is not None:
            await run.connect()
        job = self._start(run, label)
        where = self._where()
        journal().follow(job, target=self._target(), server=where.get("server"),
                         base_url=where.get("base_url"))
        return job

    def _new_run(self, nodes: Mapping[str, Any], client_id: str) -> SocketRun:
        feed = self._shared if self._shared is not None else OwnSocket(self._link, client_id)
        return SocketRun(self._link, feed, nodes)

    def _start(self, run: SocketRun, label: str | None) -> Job:
        job = Job(run, kind=self._dialect.kind, id=run.prompt_id,
                  label=label or f"{self._dialect.label} · {run.prompt_id[:8]}")
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
                raise PromptRejected(rejection_message(exc.detail, wf.data, self.service),
                                     detail=exc.detail) from None
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
            raise UnexpectedReply(f"The {self.service} accepted the prompt but returned no prompt_id.")
        dropped = reply.get("node_errors")
        if dropped:
            log.warning("%s", rejection_message({"error": {"message": "some outputs were dropped"},
                                                 "node_errors": dropped}, wf.data, self.service))
        return str(prompt_id), reply.get("number")

    async def _find_by_client_id(self, client_id: str) -> str | None:
        if not self._dialect.records_client_id:
            return None
        with contextlib.suppress(RunComfyError):
            status = await self.queue_status()
            for prompt_id, item in status.items.items():
                if client_id_of(item) == client_id:
                    return prompt_id
            for entry in await self.history(max_items=64):
                if client_id_of(entry.raw.get("prompt")) == client_id:
                    return entry.prompt_id
        return None


def _journaled(prompt_id: str, kind: str) -> str:
    """The whole id of the journaled `kind` job that `prompt_id` starts, else `prompt_id`."""
    try:
        entry = journal().find(prompt_id)
    except (ValidationError, OSError, sqlite3.Error):
        return prompt_id
    return entry.id if entry.kind == kind else prompt_id


class AsyncComfyUI(ComfyClient):
    """A ComfyUI server at `base_url` (e.g. a machine's `main_service_url`, or
    `http://127.0.0.1:8188`). `queue` returns a `Job` followed live over the WebSocket. `machine`
    (a RunComfy machine's server id; `Machine.comfyui()` gives it) is what the job journal keeps
    in place of the machine's URL."""

    def __init__(self, base_url: str | Secret, *, timeout: float = 30.0, machine: str | None = None) -> None:
        super().__init__(base_url, timeout=timeout, machine=machine)

    async def __aenter__(self) -> AsyncComfyUI:
        return self

    async def queue(
        self, workflow: Workflow | Mapping[str, Any], *, client_id: str | None = None,
        extra_data: Mapping[str, Any] | None = None, label: str | None = None, validate: bool = True,
    ) -> Job:
        """Queue an API-format workflow and return its `Job`, followed over the WebSocket.

        First checked against the server's node schemas (`object_info`, cached; see `check`):
        every problem at once, nothing sent; `validate=False` skips that. A prompt the server
        refuses raises ValidationError with one line per bad node input.
        Each job has its own `client_id` unless one is given (the server sends a prompt's
        events only to the socket of its client id, and one socket per id)."""
        return await self._submit(workflow, client_id, extra_data, label, validate=validate)

    async def sweep(self, workflow: Workflow | Mapping[str, Any], axes: Mapping[str, Sequence[Any]], *,
                    base: Mapping[Any, Any] | None = None, zip: bool = False,
                    concurrency: int | None = None, validate: bool = True) -> Sweep:
        """Queue `workflow` once per combination of `axes` (`{"seed": [1, 2], "KSampler.cfg": [4, 7]}`;
        see `AsyncRunComfy.sweep`), at most `concurrency` prompts (default 2: one running, one
        waiting) on the server's queue at once. Returns the running `Sweep`."""
        wf = await self.api_workflow(workflow)
        if validate:
            await check_values(lambda overrides: self.check(wf.override(overrides)), axes, base=base,
                               workflow=wf, zip=zip)
        return workflow_sweep(self.queue, wf, axes, base=base, zip=zip,
                              concurrency=concurrency or COMFYUI_CONCURRENCY, validate=validate)
