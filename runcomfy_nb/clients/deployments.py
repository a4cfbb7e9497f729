"""RunComfy Serverless API: ComfyUI-style and LoRA deployments.

The queue (submit, status, result, cancel) under `/prod/v1` or `/prod/v2` (`Config.serverless_version`);
the deployment reads (list, get) and the instance proxy under `/prod/v2`, the only prefix they have.
"""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ..config import Secret
from ..errors import APIError, BadRequest, NotFound, TransportError, UnexpectedReply, ValidationError
from ..inputs import data_uri_inputs, require_public_urls
from ..jobs import Job
from ..journal import journal, submitting
from ..media import Media
from ..once import SharedReads
from ..polled import PolledRequests, Request, RequestResult, RequestStatus
from ..provenance import record
from ..storage import Storage
from ..transport import Transport
from ..ui_format import is_ui_format, to_api
from ..workflow import (
    NODE_ID,
    UI_FORMAT_HELP,
    Workflow,
    check_overrides,
    check_workflow,
    resolve_overrides,
)
from .deployment_info import Deployment
from .serverless_body import applied, build_body

log = logging.getLogger("runcomfy_nb")

SERVICE = "RunComfy Serverless API"
V2 = "/prod/v2/deployments"
# Body-level codes that gate a deployment, and what the user can do about each.
_GATES = {
    10002: "is disabled (DisabledDeployment, 10002): enable it on its page in the RunComfy dashboard, "
           "then try again",
    10003: "was deleted (DeletedDeployment, 10003): `await client.deployments.list()` shows the "
           "deployments that exist",
}


class Deployments(PolledRequests):
    """Submit to and follow serverless deployments (`submit` returns a running `Job`); read the
    account's deployments; call the ComfyUI of a live instance through the proxy."""

    service = SERVICE
    kind = "serverless"

    def __init__(self, transport: Transport, storage: Storage, *, version: str = "v1") -> None:
        super().__init__()
        self._http = transport
        self._storage = storage
        self._prefix = f"/prod/{version}/deployments"
        self._object_info: dict[str, dict[str, Any]] = {}
        self._object_info_of: dict[str, tuple[Any, ...]] = {}  # the deployment version each belongs to
        self._described: dict[str, Deployment] = {}  # the last read with its payload
        self._reads = SharedReads()

    def __repr__(self) -> str:
        return "<Deployments>"

    def _path(self, deployment_id: str, request_id: str | None = None, action: str = "") -> str:
        path = f"{self._prefix}/{quote(deployment_id, safe='')}"
        if request_id is not None:
            path += f"/requests/{quote(request_id, safe='')}"
        return f"{path}/{action}" if action else path

    async def _call(self, deployment_id: str, method: str, path: str, **kwargs: Any) -> Any:
        """One call about a deployment; a disabled or deleted deployment gets a message that says so."""
        try:
            return await self._http.request(method, path, **kwargs)
        except APIError as exc:
            gate = _GATES.get(exc.code) if isinstance(exc.code, int) else None
            if gate is None:
                raise
            raise type(exc)(f"{SERVICE}: deployment {deployment_id} {gate}.", status=exc.status,
                            code=exc.code, detail=exc.detail) from None

    async def submit(
        self,
        deployment_id: str,
        overrides: Mapping[Any, Any] | None = None,
        *,
        workflow: Workflow | Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
        extra_data: Mapping[str, Any] | None = None,
        comfy_api_key: str | Secret | None = None,
        label: str | None = None,
        validate: bool = True,
    ) -> Job:
        """Queue one request: `overrides` for the saved workflow, or `workflow=` to replace it,
        or `inputs=` for a LoRA deployment's own schema (not checked here). Node titles and unique
        class names in `overrides` are resolved to ids against the saved workflow. First, unless
        `validate=False`, the overrides (or the workflow) are checked as `validate` does; when the
        node schemas cannot be read only the saved workflow is checked against. The POST is never
        resent after it may have reached the server."""
        if not isinstance(deployment_id, str) or not deployment_id.strip():
            raise ValidationError("deployment_id must be the deployment's id (a string).")
        if inputs is not None:
            require_public_urls(inputs, f"LoRA deployment {deployment_id}")
        else:
            overrides = data_uri_inputs(overrides) if isinstance(overrides, Mapping) else overrides
            workflow = await self._api_workflow(deployment_id, workflow)
        body = build_body(overrides, workflow=workflow, inputs=inputs, extra_data=extra_data,
                          comfy_api_key=comfy_api_key)
        if inputs is None:
            await self._prepare(deployment_id, body, validate)
        ran = None if inputs is not None else await self._ran(deployment_id, body)
        where = {"base_url": self._http.base_url}
        with submitting(self.kind, deployment_id, label=label, **where) as pending:
            reply = await self._call(deployment_id, "POST", self._path(deployment_id, action="inference"),
                                     json=body, idempotent=False)
            request_id = self._request_id(reply)
        job = self._attach(deployment_id, request_id, label=label)
        job.provenance = record(target=deployment_id, kind=self.kind, job_id=job.id, workflow=ran,
                                overrides=body.get("overrides"), inputs=body if inputs is not None else None,
                                extra_data=extra_data)
        pending.taken(job, target=deployment_id, **where)
        return job

    async def _api_workflow(self, deployment_id: str, workflow: Workflow | Mapping[str, Any] | None
                            ) -> Workflow | Mapping[str, Any] | None:
        """`workflow=` as the API format, local files as data URIs; a UI-format export is converted
        with the deployment's node schemas (see ui_format)."""
        if workflow is None:
            return None
        data = workflow.to_api() if isinstance(workflow, Workflow) else workflow
        if is_ui_format(data):
            try:
                info = await self.object_info(deployment_id)
            except (APIError, TransportError):
                raise ValidationError(f"{UI_FORMAT_HELP} (The node schemas of deployment {deployment_id}, "
                                      "needed to convert it here, could not be read.)") from None
            data = to_api(data, info)
        return data_uri_inputs(data) if isinstance(data, Mapping) else data

    async def _ran(self, deployment_id: str, body: Mapping[str, Any]) -> Any:
        """The whole workflow a submit ran, for its outputs' provenance: `workflow_api_json`, or
        the saved workflow with the overrides applied (None when the saved one is not at hand)."""
        if "workflow_api_json" in body:
            return body["workflow_api_json"]
        try:
            saved = await self.workflow(deployment_id)
        except (APIError, TransportError):
            return None
        if saved is None:
            return None
        return applied(saved.data, body.get("overrides") or {})

    def attach(self, deployment_id: str, request_id: str, *, label: str | None = None) -> Job:
        """Follow an existing request as a Job (call inside the event loop); it is journaled."""
        job = self._attach(deployment_id, request_id, label=label)
        journal().follow(job, target=deployment_id, base_url=self._http.base_url)
        return job

    def _attach(self, deployment_id: str, request_id: str, *, label: str | None = None) -> Job:
        return self._follow(self._request(deployment_id, request_id), target=deployment_id,
                            what="The deployment run", label=label or f"{deployment_id} · {request_id[:8]}",
                            reattach=f"`client.deployments.attach({deployment_id!r}, {request_id!r})`")

    def _request(self, deployment_id: str, request_id: str) -> Request:
        def send(method: str, action: str, **kwargs: Any) -> Awaitable[Any]:
            return self._call(deployment_id, method, self._path(deployment_id, request_id, action),
                              **kwargs)

        return Request(request_id, send, self._storage)

    async def status(self, deployment_id: str, request_id: str) -> RequestStatus:
        """The request's state; `instance_id` (from in_progress on) opens the instance proxy."""
        return await self._request(deployment_id, request_id).status()

    async def result(self, deployment_id: str, request_id: str) -> RequestResult:
        return await self._request(deployment_id, request_id).result()

    async def cancel(self, deployment_id: str, request_id: str) -> bool:
        """Ask to cancel; True if accepted. The request may take a moment to stop."""
        return await self._request(deployment_id, request_id).cancel()

    # --- the Deployment API (reads) -------------------------------------------------------------

    @staticmethod
    def _includes(payload: bool, readme: bool) -> list[tuple[str, str]]:
        return [("includes", name) for name, wanted in (("payload", payload), ("readme", readme)) if wanted]

    async def get(self, deployment_id: str, *, payload: bool = False, readme: bool = False) -> Deployment:
        """One deployment; `payload=True` adds its saved workflow, default overrides and the
        address of its node schemas, `readme=True` its README."""
        reply = await self._call(deployment_id, "GET", f"{V2}/{quote(deployment_id, safe='')}",
                                 params=self._includes(payload, readme))
        deployment = Deployment.from_reply(reply)
        if payload:
            self._described[deployment_id] = deployment
        return deployment

    async def list(self, ids: Sequence[str] | None = None, *, payload: bool = False,
                   readme: bool = False) -> builtins.list[Deployment]:
        """The account's deployments (those named in `ids`, if given); `payload` and `readme` as
        in `get`."""
        if isinstance(ids, str):
            ids = [ids]
        params = [("ids", i) for i in ids or ()] + self._includes(payload, readme)
        reply = await self._http.request("GET", V2, params=params)
        items = reply if isinstance(reply, builtins.list) else (
            reply.get("deployments", []) if isinstance(reply, dict) else [])
        return [Deployment.from_reply(item) for item in items if isinstance(item, Mapping)]

    # --- the instance proxy ---------------------------------------------------------------------

    async def proxy(self, deployment_id: str, instance_id: str, path: str, body: Any = None, *,
                    method: str = "POST") -> Any:
        """Call the ComfyUI of a live instance (the `instance_id` of a request, from in_progress until
        the deployment's keep-warm period ends), e.g. `proxy(dep, inst, "api/free",
        {"unload_models": True, "free_memory": True})`. Returns the backend's reply: JSON, text,
        or None for an empty body. POST is what the API documents; GET is forwarded by the emulator
        and may be refused by the service. Only GET calls are retried."""
        method = method.upper()
        route = quote(str(path).lstrip("/"), safe="/?&=")
        url = (f"{V2}/{quote(deployment_id, safe='')}/instances/{quote(instance_id, safe='')}"
               f"/proxy/{route}")
        json_body = None if method in ("GET", "HEAD") else ({} if body is None else body)
        try:
            return await self._call(deployment_id, method, url, json=json_body)
        except NotFound as exc:
            if exc.code != 404001:  # the backend's own 404
                raise NotFound(f"{SERVICE}: the ComfyUI of instance {instance_id} has no route "
                               f"{route!r} ({method}).", status=exc.status, code=exc.code,
                               detail=exc.detail) from None
            reason = exc.detail.get("error_message") if isinstance(exc.detail, dict) else None
            raise NotFound(
                f"{SERVICE}: instance {instance_id} of deployment {deployment_id} is not reachable"
                f"{f' ({reason})' if reason else ''}. The proxy reaches an instance from its request's "
                "in_progress until the deployment's keep-warm period ends: use the instance_id of a "
                "request that is running or has just finished.",
                status=exc.status, code=exc.code, detail=exc.detail) from None

    async def object_info(self, deployment_id: str, instance_id: str | None = None, *,
                          refresh: bool = False) -> dict[str, Any]:
        """The node schemas (`/object_info`) of the deployment's ComfyUI: from a live instance
        through the proxy (GET) when `instance_id` is given and that works, else from the
        `object_info_url` of the deployment's payload. Cached per deployment; `refresh=True`
        reads again. Do not modify what it returns."""
        if refresh or deployment_id not in self._object_info:
            self._object_info[deployment_id] = await self._read_object_info(deployment_id, instance_id)
        return self._object_info[deployment_id]

    async def _read_object_info(self, deployment_id: str, instance_id: str | None,
                                deployment: Deployment | None = None) -> dict[str, Any]:
        if instance_id:
            try:  # the instance is gone (404), or the service forwards only POST (404/405)
                reply = await self.proxy(deployment_id, instance_id, "object_info", method="GET")
            except (NotFound, BadRequest):
                reply = None
            if isinstance(reply, dict) and reply:
                return reply
        deployment = deployment or await self.get(deployment_id, payload=True)
        url = deployment.payload.object_info_url if deployment.payload else None
        if not url:
            raise UnexpectedReply(f"{SERVICE}: deployment {deployment_id} has no object_info_url in its "
                                  "payload (a LoRA deployment has no ComfyUI nodes to check).")
        base = self._http.base_url
        if url.startswith(("/", f"{base}/prod/")):  # the API's own route: it needs our token
            reply = await self._http.request("GET", url.removeprefix(base), timeout=120.0)
        else:  # anywhere else (a storage host) never gets our credentials
            data = await self._storage.read(Media.from_url(url, filename="object_info.json",
                                                           fetcher=self._storage))
            try:
                reply = json.loads(data)
            except ValueError:
                reply = None
        if not isinstance(reply, dict) or not reply:
            raise UnexpectedReply(f"{SERVICE}: the node schemas of deployment {deployment_id} are "
                                  "not a JSON object of node classes.")
        return reply

    async def _nodes(self, deployment_id: str, deployment: Deployment,
                     instance_id: str | None) -> dict[str, Any] | None:
        """The deployment's node schemas, read again only when the deployment changed; None
        (logged) when they cannot be read."""
        version = (deployment.workflow_id, deployment.workflow_version, deployment.updated_at)
        if self._object_info_of.get(deployment_id) != version or deployment_id not in self._object_info:
            try:
                info = await self._reads.read(("object_info", deployment_id, version),
                                              lambda: self._read_object_info(deployment_id, instance_id,
                                                                             deployment))
            except (APIError, TransportError) as exc:
                log.info("Could not read the node schemas of deployment %s (%s): the full check was "
                         "skipped; only the saved workflow was checked against.", deployment_id,
                         type(exc).__name__)
                return None
            self._object_info[deployment_id], self._object_info_of[deployment_id] = info, version
        return self._object_info[deployment_id]

    async def _deployment(self, deployment_id: str, *, refresh: bool = False) -> Deployment:
        """The deployment with its payload, read once (one read for callers at the same time)."""
        if not refresh and deployment_id in self._described:
            return self._described[deployment_id]
        return await self._reads.read(("deployment", deployment_id),
                                      lambda: self.get(deployment_id, payload=True))

    async def workflow(self, deployment_id: str, *, refresh: bool = False) -> Workflow | None:
        """The deployment's saved workflow (None for a LoRA deployment): read once and cached,
        read again with `refresh=True` (and by `get(..., payload=True)`)."""
        deployment = await self._deployment(deployment_id, refresh=refresh)
        return deployment.payload.workflow if deployment.payload else None

    async def _prepare(self, deployment_id: str, body: dict[str, Any], validate: bool) -> None:
        """Resolve node names in `body["overrides"]` and, with `validate`, check the body."""
        overrides = body.get("overrides")
        named = any(not NODE_ID.fullmatch(ref) for ref in overrides or {})
        if not ((validate and (overrides or "workflow_api_json" in body)) or named):
            return  # nothing to check: no overrides run the saved workflow as it is
        try:
            saved = await self.workflow(deployment_id)
        except (APIError, TransportError) as exc:
            if named:
                raise
            log.info("Could not read deployment %s (%s): it was sent unchecked.", deployment_id,
                     type(exc).__name__)
            return
        if saved is None and "overrides" in body:
            if named:
                raise ValidationError(f"Deployment {deployment_id} has no saved ComfyUI workflow to "
                                      "find nodes by name in: address them by id.")
            log.info("Deployment %s has no saved workflow: its overrides were sent unchecked.",
                     deployment_id)
            return
        if not validate:
            body["overrides"] = await self._resolved(deployment_id, saved, overrides or {})
            return
        resolved = await self.validate(deployment_id, overrides, workflow=body.get("workflow_api_json"))
        if "overrides" in body:
            body["overrides"] = resolved

    async def _resolved(self, deployment_id: str, saved: Workflow | None,
                        overrides: Mapping[str, Any]) -> dict[str, Any]:
        """Names resolved against the saved workflow, read again once if one is not found there."""
        if saved is None:
            return dict(overrides)
        try:
            return resolve_overrides(saved, overrides)
        except ValidationError:
            newer = await self.workflow(deployment_id, refresh=True)
            if newer is None or newer.data == saved.data:
                raise
        return resolve_overrides(newer, overrides)

    async def _check(self, deployment_id: str, deployment: Deployment, overrides: Mapping[Any, Any] | None,
                     workflow: Workflow | Mapping[str, Any] | None,
                     instance_id: str | None) -> dict[str, dict[str, Any]]:
        nodes = await self._nodes(deployment_id, deployment, instance_id)
        if workflow is not None:
            check_workflow(workflow if isinstance(workflow, Workflow) else Workflow(workflow), nodes,
                           what=f"the workflow for deployment {deployment_id}")
            return {}
        saved = deployment.payload.workflow if deployment.payload else None
        if saved is None:
            raise ValidationError(f"Deployment {deployment_id} has no saved ComfyUI workflow to check "
                                  "overrides against (a LoRA deployment takes inputs=...).")
        return check_overrides(saved, overrides or {}, nodes,
                               what=f"the overrides for deployment {deployment_id}")

    async def validate(self, deployment_id: str, overrides: Mapping[Any, Any] | None = None, *,
                       workflow: Workflow | Mapping[str, Any] | None = None,
                       instance_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Check `overrides` against the deployment's saved workflow and its real nodes (or, with
        `workflow=`, every node of that workflow against the nodes) before anything is paid for:
        unknown node or input (with a did-you-mean), wrong type, value not in its list, out of
        range, a link replaced by a value, a required input missing. Raises one ValidationError
        naming every problem; returns the overrides keyed by node id (titles and unique class names
        resolved; `{}` with `workflow=`). The deployment is read once and cached; on a problem it
        is read again, and if it changed since, checked again. Its node schemas are cached until
        the deployment changes; when they cannot be read only the saved workflow is used."""
        deployment = await self._deployment(deployment_id)
        try:
            return await self._check(deployment_id, deployment, overrides, workflow, instance_id)
        except ValidationError:
            newer = await self._deployment(deployment_id, refresh=True)
            if (newer.workflow_version, newer.updated_at) == (deployment.workflow_version,
                                                              deployment.updated_at):
                raise
        return await self._check(deployment_id, newer, overrides, workflow, instance_id)
