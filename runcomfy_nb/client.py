"""`AsyncRunComfy`: one entry point holding the config and a transport per RunComfy API."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from .clients.deployments import SERVICE as SERVERLESS
from .clients.deployments import Deployments
from .config import Config
from .transport import Storage, Transport


class AsyncRunComfy:
    """The RunComfy APIs. Token and URLs come from arguments, else the environment
    (`RUNCOMFY_TOKEN`, `RUNCOMFY_BASE_URL`, ...; see `Config.from_env`)."""

    def __init__(self, token: str | None = None, *, config: Config | None = None,
                 **settings: Any) -> None:
        self.config = config or Config.from_env(token=token, **settings)
        self._closables: list[Transport | Storage] = []
        self._deployments: Deployments | None = None
        self._storage: Storage | None = None

    def __repr__(self) -> str:
        return f"<AsyncRunComfy token={'set' if self.config.token else 'missing'}>"

    def _keep(self, thing: Any) -> Any:
        self._closables.append(thing)
        return thing

    @property
    def storage(self) -> Storage:
        """Downloads of output files (without our credentials)."""
        if self._storage is None:
            self._storage = self._keep(Storage())
        return self._storage

    @property
    def deployments(self) -> Deployments:
        """Serverless deployments (ComfyUI-style and LoRA)."""
        if self._deployments is None:
            token = self.config.require_token()
            transport = Transport(self.config.base_url, service=SERVERLESS,
                                  auth={"Authorization": token}, auth_scheme="Bearer ",
                                  timeout=self.config.timeout)
            self._deployments = Deployments(self._keep(transport), self.storage,
                                            version=self.config.serverless_version)
        return self._deployments

    async def aclose(self) -> None:
        for closable in reversed(self._closables):
            await closable.aclose()
        self._closables.clear()
        self._deployments = self._storage = None

    async def __aenter__(self) -> AsyncRunComfy:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
