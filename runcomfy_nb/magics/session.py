"""What the magics of one kernel share: the config, the blocking client, the emulator."""

from __future__ import annotations

import os
from typing import Any

from .. import sync
from ..config import Config
from ..facade import RunComfy

_ENV_KEYS = ("RUNCOMFY_TOKEN", "RUNCOMFY_BASE_URL", "RUNCOMFY_MODEL_API_URL", "COMFY_CLOUD_URL",
             "RUNCOMFY_USER_ID")


class Session:
    def __init__(self) -> None:
        self.config = Config.from_env()
        self._client: Any = None
        self.emulator: Any = None
        self.comfy_target: str | None = None  # a machine id or a ComfyUI URL for %%runcomfy prompt
        self.exit_hook = False
        self._saved_env: dict[str, str | None] = {}

    @property
    def client(self) -> Any:
        """The blocking `RunComfy` client for the current config (made on first use)."""
        if self._client is None:
            self._client = RunComfy(config=self.config)
        return self._client

    def use(self, config: Config) -> None:
        if self._client is not None:
            sync.run(sync.unwrap(self._client).aclose())
        self._client = None
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
