"""What the magics of one kernel share: the config, the blocking client, the emulator."""

from __future__ import annotations

import os
from typing import Any

from .. import sync
from ..config import Config
from ..errors import ValidationError
from ..facade import ComfyCloud, ComfyUI, RunComfy

_ENV_KEYS = ("RUNCOMFY_TOKEN", "RUNCOMFY_BASE_URL", "RUNCOMFY_MODEL_API_URL", "COMFY_CLOUD_URL",
             "COMFY_CLOUD_API_KEY", "RUNCOMFY_USER_ID")


class Session:
    def __init__(self) -> None:
        self.config = Config.from_env()
        self._client: Any = None
        self._cloud: Any = None
        self.emulator: Any = None
        self.comfy_target: str | None = None  # a machine id or a ComfyUI URL for %%runcomfy prompt
        self.exit_hook = False
        self._comfy: dict[str, Any] = {}
        self._saved_env: dict[str, str | None] = {}

    @property
    def client(self) -> Any:
        """The blocking `RunComfy` client for the current config (made on first use)."""
        if self._client is None:
            self._client = RunComfy(config=self.config)
        return self._client

    @property
    def cloud(self) -> Any:
        """The blocking `ComfyCloud` client for the current config (made on first use)."""
        if self._cloud is None:
            self._cloud = ComfyCloud(config=self.config)
        return self._cloud

    def comfy(self, target: str | None = None) -> Any:
        """A blocking ComfyUI client for a machine id or a URL (default: `%runcomfy connect`'s)."""
        target = target or self.comfy_target
        if not target:
            raise ValidationError("No ComfyUI target: pass --machine ID or --url URL, or run "
                                  "`%runcomfy connect ID|URL` first.")
        if target not in self._comfy:
            if target.startswith(("http://", "https://")):
                url: Any = target
            else:
                machines = self.client.machines
                info = machines.status(sync.call(lambda: sync.unwrap(machines).find(target)))
                if info.state != "ready" or info.url is None:
                    raise ValidationError(f"Machine {target[:8]} is {info.state}, not ready.")
                url = info.url
            self._comfy[target] = ComfyUI(url)
        return self._comfy[target]

    def use(self, config: Config) -> None:
        for client in (self._client, self._cloud):
            if client is not None:
                sync.run(sync.unwrap(client).aclose())
        self._client = self._cloud = None
        self._comfy.clear()
        self.config = config

    def point_env_at(self, values: dict[str, str]) -> None:
        """Set env vars so `rc.RunComfy()` in user code talks to the emulator too."""
        for key in _ENV_KEYS:
            self._saved_env.setdefault(key, os.environ.get(key))
        os.environ.update(values)

    def restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()


SESSION = Session()
