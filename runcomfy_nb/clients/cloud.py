"""Comfy Cloud (cloud.comfy.org): Comfy Org's hosted ComfyUI, as `AsyncComfyCloud`.

Cloud speaks ComfyUI's protocol its own way, so `AsyncComfyCloud` is the shared `ComfyClient` given
`CloudDialect` (clients/cloud_dialect.py: the paths, the shared WebSocket, job status and outcome,
signed downloads, stopping and failure text), with Cloud's own calls: the account, its jobs, and
`queue` with the partner key.

Partner (API) nodes need the Comfy API key in the prompt's `extra_data.api_key_comfy_org` — the same
key as `X-API-Key`. By default `queue` adds it when the workflow holds a partner node (`api_node` or
an "api node" category in `object_info`, read once per server and cached), so such workflows just
work while others never carry it; `partner_key=True`/`False` forces it, a string or `Secret` sends
another key. If the node list cannot be read the key is sent: it only goes to the server that
already receives it as `X-API-Key`, and a partner node refused at run time wastes the run. The key
lives in the request body only: never in a repr, a log line, an exception, the Job or its result.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, Secret
from ..errors import MissingCredentials, ValidationError
from ..inputs import upload_local_files
from ..jobs import Job
from ..sweep import Sweep, check_values, cloud_concurrency, workflow_sweep
from ..workflow import Workflow
from .cloud_dialect import KEY_HELP, SERVICE, CloudDialect, CloudJob, cloud_error, cloud_failure_message
from .comfyui import ComfyClient

log = logging.getLogger("runcomfy_nb")


@dataclass(frozen=True)
class CloudUser:
    """The account of the API key: `status` is "active" or "waitlisted"."""

    id: str
    status: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def active(self) -> bool:
        return self.status == "active"


def _is_partner_node(schema: Any) -> bool:
    if not isinstance(schema, Mapping):
        return False
    return schema.get("api_node") is True or str(schema.get("category") or "").lower().startswith("api node")



class AsyncComfyCloud(ComfyClient):
    """Comfy Cloud: `queue` a workflow and follow the `Job` live (kind "cloud").

    The key comes from `api_key` or COMFY_CLOUD_API_KEY; `base_url` (or COMFY_CLOUD_URL) points
    elsewhere, e.g. at the emulator. Several jobs may run at once, up to the plan's limit. Uploads
    are content-addressed: `subfolder` and `overwrite` are accepted and ignored by Cloud.
    `history()` reads `/api/history_v2`.
    """

    def __init__(self, api_key: str | Secret | None = None, *, base_url: str | None = None,
                 config: Config | None = None, timeout: float | None = None) -> None:
        config = config or Config.from_env()
        if api_key is not None:
            config = config.with_(comfy_api_key=api_key)
        if config.comfy_api_key is None:
            raise MissingCredentials(f"No Comfy Cloud API key: {KEY_HELP}")
        self._key: Secret = config.comfy_api_key
        self._cloud = CloudDialect(self._key)
        super().__init__(base_url or config.comfy_cloud_url, dialect=self._cloud,
                         timeout=config.timeout if timeout is None else timeout)

    async def __aenter__(self) -> AsyncComfyCloud:
        return self

    def _cache_key(self) -> str:
        """Cloud's node list may differ per account: cached per server and key (a digest of it)."""
        return f"{super()._cache_key()}#{hashlib.sha256(self._key.get().encode()).hexdigest()[:16]}"

    # -- account and jobs --
    async def user(self) -> CloudUser:
        """The account of the key; `.active` is False while it has no subscription."""
        reply = await self._link.http.request("GET", "/user")
        reply = reply if isinstance(reply, dict) else {}
        return CloudUser(id=str(reply.get("id") or ""), status=str(reply.get("status") or ""), raw=reply)

    async def job_status(self, prompt_id: str) -> CloudJob:
        """The job's status (`GET /api/job/{id}/status`): no outputs; `error` if it failed."""
        return await self._cloud.job_status(self._link, prompt_id)

    async def job(self, prompt_id: str) -> CloudJob:
        """The job with its outputs and error (`GET /api/jobs/{id}`)."""
        return await self._cloud.job(self._link, prompt_id, {})

    async def jobs(self, *, status: str | list[str] | None = None, limit: int = 100,
                   offset: int = 0) -> list[CloudJob]:
        """The account's jobs, newest first; `status` filters ("pending", "in_progress", "completed",
        "failed", "cancelled"; a list or a comma-separated string). No outputs: see `job(id)`."""
        params: dict[str, Any] = {"limit": limit, "offset": offset, "sort_by": "create_time",
                                  "sort_order": "desc"}
        if status:
            params["status"] = status if isinstance(status, str) else ",".join(status)
        reply = await self._link.http.request("GET", "/jobs", params=params)
        rows = reply.get("jobs") if isinstance(reply, dict) else None
        return [self._cloud.read_job(self._link, row, {}) for row in rows or [] if isinstance(row, dict)]

    # -- submit --
    async def queue(
        self, workflow: Workflow | Mapping[str, Any], *, partner_key: bool | str | Secret | None = None,
        extra_data: Mapping[str, Any] | None = None, label: str | None = None, validate: bool = True,
    ) -> Job:
        """Submit an API-format workflow and return its `Job`, followed over the shared WebSocket.

        First checked against Cloud's node schemas (`object_info`, cached per key; see `check`):
        every problem at once, nothing sent; `validate=False` skips that.
        `partner_key`: None (default) sends the Comfy API key in `extra_data` when the workflow holds
        a Partner (API) node; True always, False never; a string or Secret sends that key instead.
        A workflow Cloud refuses raises ValidationError with one line per bad node input."""
        if extra_data is not None and not isinstance(extra_data, Mapping):
            raise ValidationError("extra_data must be an object.")
        wf = await upload_local_files(await self.api_workflow(workflow), self._stored_name)
        info = await self.check(wf) if validate else (
            await self._node_list(refresh=False) if partner_key is None else None)
        extra = dict(extra_data or {})
        key = self._partner_key(wf, partner_key, info)
        if key is not None:
            extra["api_key_comfy_org"] = key  # a Secret: revealed in the request body only
        return await self._submit(wf, None, extra or None, label, validate=False)

    async def sweep(self, workflow: Workflow | Mapping[str, Any], axes: Mapping[str, Sequence[Any]], *,
                    base: Mapping[Any, Any] | None = None, zip: bool = False,
                    concurrency: int | None = None, validate: bool = True,
                    partner_key: bool | str | Secret | None = None,
                    extra_data: Mapping[str, Any] | None = None) -> Sweep:
        """Submit `workflow` once per combination of `axes` (see `AsyncRunComfy.sweep`), at most
        `concurrency` jobs at once (default: what the Standard tier runs, plus one waiting);
        `partner_key` and `extra_data` as in `queue`. Returns the running `Sweep`."""
        wf = await self.api_workflow(workflow)
        if validate:
            await check_values(lambda overrides: self.check(wf.override(overrides)), axes, base=base,
                               workflow=wf, zip=zip)
        return workflow_sweep(self.queue, wf, axes, base=base, zip=zip,
                              concurrency=concurrency or cloud_concurrency(), validate=validate,
                              options={"partner_key": partner_key, "extra_data": extra_data})

    def _partner_key(self, wf: Workflow, choice: bool | str | Secret | None,
                     info: Mapping[str, Any] | None) -> Secret | None:
        if choice is None:  # unreadable node list: sent, as the module docstring says
            return self._key if info is None or self._has_partner_nodes(wf, info) else None
        if isinstance(choice, bool):
            return self._key if choice else None
        if isinstance(choice, Secret):
            return choice
        if not isinstance(choice, str) or not choice.strip():
            raise ValidationError("partner_key must be True, False, None or a non-empty key.")
        return Secret(choice)

    @staticmethod
    def _has_partner_nodes(wf: Workflow, info: Mapping[str, Any]) -> bool:
        return any(_is_partner_node(info.get(str(node.get("class_type"))))
                   for node in wf.data.values() if isinstance(node, Mapping))

    # -- stopping --
    async def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the account's running jobs — all of them: Cloud cannot stop just one. With
        `prompt_id`, only if that job is the sole one running (else ValidationError, nothing sent)."""
        await super().interrupt(prompt_id)

    async def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        """Not on Comfy Cloud: it manages its workers' memory itself."""
        raise ValidationError(f"{SERVICE} manages its workers' memory itself; there is no free().")


__all__ = ["AsyncComfyCloud", "CloudJob", "CloudUser", "cloud_error", "cloud_failure_message"]
