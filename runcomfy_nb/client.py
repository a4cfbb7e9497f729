"""`AsyncRunComfy`: one entry point holding the config and a transport per RunComfy API."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from .clients.comfyui import AsyncComfyUI
from .clients.deployments import SERVICE as SERVERLESS
from .clients.deployments import Deployments
from .clients.machines import SERVICE as SERVER_API
from .clients.machines import Machines
from .clients.models import SERVICE as MODEL_API
from .clients.models import Models
from .config import Config
from .errors import MissingCredentials, NotFound, ValidationError
from .jobs import Job, finish_cancels
from .journal import Entry, journal
from .ratelimit import RateLimiter
from .storage import Storage
from .sweep import Sweep, check_values, deployment_concurrency, start_sweep
from .transport import Transport

log = logging.getLogger("runcomfy_nb")
Closable = TypeVar("Closable", Transport, Storage)
_limiters: dict[tuple[str, int], RateLimiter] = {}


def _account_limiter(base_url: str, token: str) -> RateLimiter:
    """One Server API limiter per account in this process: 0.8 request/s in bursts of 2, a margin
    under the server's 1 request/s, so jitter in arrival times never pushes a call past its bucket."""
    return _limiters.setdefault((base_url, hash(token)), RateLimiter(0.8, 2))


class AsyncRunComfy:
    """The RunComfy APIs. Token and URLs come from arguments, else the environment
    (`RUNCOMFY_TOKEN`, `RUNCOMFY_BASE_URL`, ...; see `Config.from_env`)."""

    def __init__(self, token: str | None = None, *, config: Config | None = None,
                 **settings: Any) -> None:
        self.config = config or Config.from_env(token=token, **settings)
        self._closables: list[Transport | Storage] = []
        self._deployments: Deployments | None = None
        self._machines: Machines | None = None
        self._models: Models | None = None
        self._storage: Storage | None = None
        self._comfy: list[AsyncComfyUI] = []  # the ComfyUI clients of jobs attached on machines

    def __repr__(self) -> str:
        return f"<AsyncRunComfy token={'set' if self.config.token else 'missing'}>"

    def _keep(self, thing: Closable) -> Closable:
        self._closables.append(thing)
        return thing

    @property
    def storage(self) -> Storage:
        """Downloads of output files (without our credentials)."""
        if self._storage is None:
            self._storage = self._keep(Storage())
        return self._storage

    def _transport(self, base_url: str, service: str, *, limited: bool = False) -> Transport:
        """A transport to one RunComfy API with the account's token, closed with the client;
        `limited`: paced by the account's Server API limiter."""
        token = self.config.require_token()
        limiter = _account_limiter(base_url, token.get()) if limited else None
        return self._keep(Transport(base_url, service=service, auth={"Authorization": token},
                                    auth_scheme="Bearer ", timeout=self.config.timeout, limiter=limiter))

    @property
    def deployments(self) -> Deployments:
        """Serverless deployments (ComfyUI-style and LoRA)."""
        if self._deployments is None:
            self._deployments = Deployments(self._transport(self.config.base_url, SERVERLESS),
                                            self.storage, version=self.config.serverless_version)
        return self._deployments

    @property
    def machines(self) -> Machines:
        """Dedicated GPU machines and cloud-saved workflows (Server API; needs RUNCOMFY_USER_ID)."""
        if self._machines is None:
            self.config.require_token()
            if not self.config.user_id:
                raise MissingCredentials(
                    "No RunComfy user id: set RUNCOMFY_USER_ID (the UUID in your dashboard URL) "
                    "or pass user_id=..."
                )
            # The Server API allows 1 request/s with short bursts: stay under it, never see 429.
            self._machines = Machines(self._transport(self.config.base_url, SERVER_API, limited=True),
                                      self.config.user_id)
        return self._machines

    @property
    def models(self) -> Models:
        """Hosted catalog models by model_id (Model API, at `config.model_api_url`)."""
        if self._models is None:
            self._models = Models(self._transport(self.config.model_api_url, MODEL_API), self.storage)
        return self._models

    async def sweep(self, deployment_id: str, base_overrides: Mapping[Any, Any] | None = None,
                    axes: Mapping[str, Sequence[Any]] | None = None, *, zip: bool = False,
                    concurrency: int | None = None, validate: bool = True) -> Sweep:
        """Run the deployment once per combination of `axes` (`{"seed": [1, 2], "KSampler.cfg":
        [4, 7]}`: NODE.input or an input name one node of the saved workflow has), merged over
        `base_overrides`; the cartesian product, or the n-th values together with `zip=True`. At most
        `concurrency` jobs in flight (default: `deployment_concurrency` of its max_instances and
        queue_size). Each submit is checked first (`validate`, as `deployments.submit`); a refused
        one fails its cell with nothing sent. Returns the running `Sweep`: `await sweep.result()`,
        `await sweep.cancel()`."""
        deployment = await self.deployments.get(deployment_id, payload=True)
        workflow = deployment.payload.workflow if deployment.payload is not None else None
        limit = concurrency or deployment_concurrency(deployment.max_instances, deployment.queue_size)
        if validate:
            await check_values(lambda overrides: self.deployments.validate(deployment_id, overrides),
                               axes or {}, base=base_overrides, workflow=workflow, zip=zip)

        def submit(overrides: dict[str, Any]) -> Awaitable[Job]:
            return self.deployments.submit(deployment_id, overrides, validate=validate)

        return start_sweep(submit, axes or {}, base=base_overrides, workflow=workflow, zip=zip,
                           concurrency=limit)

    async def attach(self, job_id: str) -> Job:
        """Follow a journaled job again, by its id or the start of one (`%runcomfy jobs` lists
        them; after a kernel restart too): a serverless, LoRA or Model API request, or a prompt on
        one of your machines. A job that ended gives its result again while the service keeps it."""
        entry = journal().find(job_id)
        if entry.kind == "serverless":
            self._same_server(entry, self.config.base_url)
            return self.deployments.attach(entry.target, entry.id, label=entry.label)
        if entry.kind == "model":
            self._same_server(entry, self.config.model_api_url)
            return self.models.attach(entry.id, model_id=entry.target or None, label=entry.label)
        if entry.kind == "comfyui" and entry.server and "://" not in entry.server:
            return await self._attach_on_machine(entry)
        if entry.kind == "comfyui":
            raise ValidationError(f"Job {entry.id} ran on the ComfyUI server at {entry.server}: attach it "
                                  f"with `rc.AsyncComfyUI({entry.server!r}).attach({entry.id!r})` (or "
                                  f"`%runcomfy attach {entry.id[:8]}`).")
        raise ValidationError(f"Job {entry.id} is a Comfy Cloud job: attach it with `rc.AsyncComfyCloud()"
                              f".attach({entry.id!r})` (or `%runcomfy attach {entry.id[:8]}`).")

    @staticmethod
    def _same_server(entry: Entry, base_url: str) -> None:
        if entry.base_url and entry.base_url.rstrip("/") != base_url.rstrip("/"):
            raise ValidationError(f"Job {entry.id} was submitted to {entry.base_url}, and this client "
                                  f"talks to {base_url}: point the config there (e.g. RUNCOMFY_BASE_URL) "
                                  "to attach it.")

    async def _attach_on_machine(self, entry: Entry) -> Job:
        server = entry.server or ""
        info = await self.machines.status(server)
        if info.state != "ready" or info.url is None:
            raise NotFound(f"Job {entry.id} ran on machine {server[:8]}, which is "
                           f"{info.raw_status or info.state} now: its ComfyUI (and the outputs it kept) are "
                           "gone. Saved copies, if any, are listed by `%runcomfy jobs`.")
        comfy = AsyncComfyUI(info.url, machine=server)
        self._comfy.append(comfy)
        return await comfy.attach(entry.id, label=entry.label)

    async def aclose(self) -> None:
        """Close the connections, once the cancels that interrupted waits started have ended. Jobs
        still being followed are detached: they go on on the server, and `attach` follows them again."""
        await finish_cancels()
        left = [job for api in (self._deployments, self._models) if api is not None
                for job in api.followed if not job.done]
        if left:
            log.warning("%d job(s) still running were detached when the client closed; re-attach with "
                        "client.attach(job_id) or %%runcomfy attach (%%runcomfy jobs lists them).",
                        len(left))
        for job in left:
            job.detach()
        for closable in reversed(self._closables):
            await closable.aclose()
        self._closables.clear()
        for comfy in self._comfy:
            await comfy.aclose()
        self._comfy.clear()
        self._deployments = self._storage = self._machines = self._models = None

    async def __aenter__(self) -> AsyncRunComfy:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
