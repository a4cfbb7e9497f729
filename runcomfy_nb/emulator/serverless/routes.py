"""The serverless API's route table: queue calls under `/prod/v1` and `/prod/v2`, the Deployment API
reads and the instance proxy under `/prod/v2`, and the public output files."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from aiohttp import web

from ..envelope import absolute, error, iso, origin
from ..pool import RESULT_OPTIONAL, STATUS_OPTIONAL, QueueAPI, taken
from ..routing import Refused, Route
from ..storage import serve_file
from .deployments import Request, Serverless

PROXY = "/prod/v2/deployments/{dep}/instances/{instance}/proxy/{path:.+}"
PROXIED = {"free": "POST", "object_info": "GET"}  # what the instance's ComfyUI answers, and to which method


def _urls(request: web.Request, dep_id: str, rid: str) -> dict[str, str]:
    prefix = request.path.split("/")[2]  # v1 or v2, as the client called it
    base = f"{origin(request)}/prod/{prefix}/deployments/{dep_id}/requests/{rid}"
    return {"status_url": f"{base}/status", "result_url": f"{base}/result", "cancel_url": f"{base}/cancel"}


def _status_word(dep: dict[str, Any], job: Request) -> str:
    live = dep["status_style"] == "live"
    if job.cancel_pending:
        return "cancellation_requested"
    if job.status in ("succeeded", "failed"):
        return job.status if live else "completed"
    if job.status == "cancelled" and live:
        return "canceled"
    return job.status


class ServerlessAPI(QueueAPI):
    """The serverless API's handlers over `serverless`, and its table."""

    def __init__(self, serverless: Serverless) -> None:
        super().__init__(serverless.state)
        self.serverless = serverless

    def routes(self) -> list[Route]:
        rows = []
        for prefix in ("v1", "v2"):
            base = f"/prod/{prefix}/deployments/{{dep}}"
            rows += [
                Route("POST", f"{base}/inference", self.submit, "submit", self.enabled, after_taken=True),
                Route("GET", f"{base}/requests/{{rid}}/status", self.status, "status", self.queued,
                      optional=STATUS_OPTIONAL),
                Route("GET", f"{base}/requests/{{rid}}/result", self.result, "result", self.queued,
                      optional=RESULT_OPTIONAL),
                Route("POST", f"{base}/requests/{{rid}}/cancel", self.cancel, "cancel", self.queued),
            ]
        return [*rows,
                Route("GET", "/prod/v2/deployments", self.list_deployments),
                Route("GET", "/prod/v2/deployments/{dep}", self.get_deployment, enter=self.listed),
                Route("GET", "/prod/v2/deployments/{dep}/object_info", self.object_info, enter=self.listed),
                Route("GET", "/storage/object_info/{dep}.json", self.public_object_info),
                Route("POST", PROXY, self.proxy, enter=self.listed),
                Route("GET", PROXY, self.proxy, enter=self.listed),
                Route("GET", "/storage/output/{rid}/{filename}", self.output_file)]

    # --- what a route works on ---------------------------------------------------------------
    async def queued(self, request: web.Request, submit: bool = False) -> tuple[dict[str, Any], str]:
        """The deployment a queue call names, or Refused: 404, or HTTP 200 with a body-level 10003
        (deleted) or, for a submit, 10002 (disabled)."""
        dep = self.serverless.deployments.get(request.match_info["dep"])
        if dep is None:
            raise Refused(error(404, 404001, "Deployment not found"))
        if dep["deleted"]:
            raise Refused(error(200, 10003, f"DeletedDeployment: deployment {dep['id']} has been deleted"))
        if submit and not dep["is_enabled"]:
            raise Refused(error(200, 10002, f"DisabledDeployment: deployment {dep['id']} is disabled"))
        return dep, dep["id"]

    async def enabled(self, request: web.Request) -> tuple[dict[str, Any], str]:
        return await self.queued(request, submit=True)

    async def listed(self, request: web.Request) -> tuple[dict[str, Any], str]:
        """The deployment a Deployment API call names (404 if unknown or deleted)."""
        dep = self.serverless.deployments.get(request.match_info["dep"])
        if dep is None or dep["deleted"]:
            raise Refused(error(404, 404001, "Deployment not found"))
        return dep, dep["id"]

    def job(self, request: web.Request, dep: dict[str, Any]) -> Request:
        job = self.serverless.requests.get(request.match_info["rid"])
        if job is None or job.deployment != dep["id"]:
            raise Refused(error(404, 404001, "Request not found"))
        return job

    # --- queue calls ---------------------------------------------------------------------------
    async def submit(self, request: web.Request, dep: dict[str, Any]) -> web.StreamResponse:
        job = await taken(request, partial(self.serverless.create, dep))
        return web.json_response({"request_id": job.id, **_urls(request, dep["id"], job.id)})

    async def status(self, request: web.Request, dep: dict[str, Any]) -> dict[str, Any]:
        job = self.job(request, dep)
        body: dict[str, Any] = {"request_id": job.id, "status": _status_word(dep, job),
                                **_urls(request, dep["id"], job.id)}
        del body["cancel_url"]
        if job.status == "in_queue" and not job.cancel_pending:
            body["queue_position"] = self.serverless.queue_position(job)
        if job.instance_id:
            body["instance_id"] = job.instance_id
        return body

    async def result(self, request: web.Request, dep: dict[str, Any]) -> dict[str, Any]:
        job = self.job(request, dep)
        state = "canceled" if job.status == "cancelled" and dep["status_style"] == "live" else job.status
        body: dict[str, Any] = {"request_id": job.id, "status": state, "created_at": iso(job.created)}
        if job.done and job.finished_wall is not None:
            body["finished_at"] = iso(job.finished_wall)
        if job.status == "succeeded":
            key = "output" if dep["type"] == "lora" else "outputs"
            body[key] = absolute(job.outputs, origin(request))
            if job.instance_id and dep["type"] != "lora":
                body["instance_id"] = job.instance_id
        elif job.status == "failed":
            body["error"] = job.error
        return body

    async def cancel(self, request: web.Request, dep: dict[str, Any]) -> web.StreamResponse:
        job = self.job(request, dep)
        accepted = self.serverless.cancel(dep, job)
        if dep["status_style"] == "live":
            state = "cancellation_requested" if accepted else "not_cancellable"
            return web.json_response({"request_id": job.id, "status": state}, status=202)
        return web.json_response({"request_id": job.id, "status": "completed",
                                  "outcome": "cancelled" if accepted else "not_cancellable"}, status=202)

    # --- the Deployment API (reads) and the instance proxy: /prod/v2 only ------------------------
    async def list_deployments(self, request: web.Request, _: None) -> web.StreamResponse:
        ids = request.query.getall("ids", [])
        includes = set(request.query.getall("includes", []))
        return web.json_response([self.serverless.describe(dep, origin(request), includes)
                                  for dep in self.serverless.deployments.values()
                                  if not dep["deleted"] and (not ids or dep["id"] in ids)])

    async def get_deployment(self, request: web.Request, dep: dict[str, Any]) -> web.StreamResponse:
        return web.json_response(self.serverless.describe(dep, origin(request),
                                                          set(request.query.getall("includes", []))))

    async def object_info(self, request: web.Request, dep: dict[str, Any]) -> web.StreamResponse:
        if dep["type"] != "comfyui":
            return error(404, 404001, "Deployment has no ComfyUI workflow")
        return web.json_response(self.serverless.node_schemas(dep))

    async def public_object_info(self, request: web.Request, _: None) -> web.StreamResponse:
        dep = self.serverless.deployments.get(request.match_info["dep"])
        data = None
        if dep is not None and dep["type"] == "comfyui" and dep["object_info_public"]:
            data = json.dumps(self.serverless.node_schemas(dep)).encode()
        return await serve_file(request, self.serverless.state, data, request.match_info["dep"])

    async def proxy(self, request: web.Request, dep: dict[str, Any]) -> web.StreamResponse:
        if request.method == "GET" and not dep["proxy_get"]:
            return web.json_response({"detail": "Method Not Allowed"}, status=405)
        if not self.serverless.pools[dep["id"]].alive(request.match_info["instance"]):
            return error(404, 404001, "Instance not found or no longer running")
        route = request.match_info["path"].removeprefix("api/")
        name = "object_info" if route.startswith("object_info/") else route
        method = PROXIED.get(name)
        if method is None:  # what the instance's ComfyUI (aiohttp) answers
            return web.Response(status=404, text="404: Not Found")
        if request.method != method:
            return web.Response(status=405, text="405: Method Not Allowed")
        if route == "free":
            return web.Response(status=200)
        schemas = self.serverless.node_schemas(dep)
        if route.startswith("object_info/"):
            name = route.removeprefix("object_info/")
            return web.json_response({name: schemas[name]} if name in schemas else {})
        return web.json_response(schemas)

    async def output_file(self, request: web.Request, _: None) -> web.StreamResponse:
        rid, filename = request.match_info["rid"], request.match_info["filename"]
        job = self.serverless.requests.get(rid)
        return await serve_file(request, self.serverless.state, self.serverless.files.get((rid, filename)),
                                job.deployment if job else "*")
