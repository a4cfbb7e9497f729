"""What the magics of one kernel share: the clients for the current config, the emulator."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from collections.abc import MutableMapping
from typing import Any

from .. import loops, sync
from ..config import ENV_NAMES, SECRETS, SETTINGS, Config, Secret
from ..errors import ValidationError
from ..facade import ComfyCloud, ComfyUI, RunComfy
from ..jobs import recent_jobs


async def _close_when_idle(clients: list[Any]) -> None:
    """Close clients replaced after a config change once the jobs running here then have ended:
    their polls and cancels go through these clients, so closing at once would cut them off."""
    loop = asyncio.get_running_loop()
    running = [job for job in recent_jobs() if job.loop is loop and not job.done and not job.detached]
    await asyncio.gather(*(job.wait() for job in running), return_exceptions=True)
    for client in clients:
        with contextlib.suppress(Exception):
            await client.aclose()


Closing = asyncio.Task[None] | concurrent.futures.Future[None]


def _close_soon(*clients: Any) -> Closing:
    """Start `_close_when_idle(clients)` on the loop this is called on (theirs: see `sync.on_loop`)."""
    return loops.spawn(asyncio.get_running_loop(), _close_when_idle(list(clients)))


class Session:
    def __init__(self) -> None:
        self._made_with: Config | None = None  # the config the cached clients were made with
        self._client: RunComfy | None = None
        self._cloud: ComfyCloud | None = None
        self._comfy: dict[str, ComfyUI] = {}
        self._closing: set[Closing] = set()
        self.emulator: Any = None
        self.comfy_target: str | None = None  # a machine id or a ComfyUI URL for %%runcomfy prompt
        # what `%runcomfy emulate` replaced: (store, key) -> (the value before, the value it set)
        self._emulated: dict[tuple[str, str], tuple[Any, Any]] = {}

    @property
    def config(self) -> Config:
        """The configuration now: the environment, then the settings made in this kernel."""
        return Config.from_env()

    def _current(self) -> Config:
        """The config now; the cached clients are replaced when it changed since they were made."""
        config = Config.from_env()
        if config != self._made_with:
            self._retire()
            self._made_with = config
        return config

    def _retire(self) -> None:
        old = [c for c in (self._client, self._cloud, *self._comfy.values()) if c is not None]
        self._client = self._cloud = None
        self._comfy.clear()
        if old:
            closing = sync.on_loop(_close_soon, *old)
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    @property
    def client(self) -> RunComfy:
        """The blocking `RunComfy` client for the current config (remade when the config changed)."""
        config = self._current()
        if self._client is None:
            self._client = RunComfy(config=config)
        return self._client

    @property
    def cloud(self) -> ComfyCloud:
        """The blocking `ComfyCloud` client for the current config (remade when the config changed)."""
        config = self._current()
        if self._cloud is None:
            self._cloud = ComfyCloud(config=config)
        return self._cloud

    def comfy(self, target: str | None = None) -> ComfyUI:
        """A blocking ComfyUI client for a machine id or a URL (default: `%runcomfy connect`'s)."""
        target = target or self.comfy_target
        if not target:
            raise ValidationError("No ComfyUI target: pass --machine ID or --url URL, or run "
                                  "`%runcomfy connect ID|URL` first.")
        self._current()
        if target not in self._comfy:
            if target.startswith(("http://", "https://")):
                url: str | Secret = target
            else:
                machines = self.client.machines
                info = machines.status(machines.resolve(target))
                if info.state != "ready" or info.url is None:
                    raise ValidationError(f"Machine {target[:8]} is {info.state}, not ready.")
                url = info.url
            self._comfy[target] = ComfyUI(url)
        return self._comfy[target]

    def point_at(self, values: dict[str, str]) -> None:
        """Point this kernel's settings, and the environment (so `rc.RunComfy()` in user code and
        subprocesses follow), at `values` (Config field names), keeping what was there before."""
        for key, value in values.items():
            setting = Secret(value) if key in SECRETS else value
            self._replace("settings", SETTINGS, key, setting)
            self._replace("env", os.environ, ENV_NAMES[key][0], value)

    def _replace(self, store: str, mapping: MutableMapping[str, Any], key: str, value: Any) -> None:
        before, _ = self._emulated.get((store, key), (mapping.get(key), None))
        self._emulated[(store, key)] = (before, value)
        mapping[key] = value

    def give_back(self) -> None:
        """Undo `point_at` where a value is still the one it set; what the user set meanwhile stays."""
        for (store, key), (before, value) in self._emulated.items():
            mapping: MutableMapping[str, Any] = SETTINGS if store == "settings" else os.environ
            if mapping.get(key) != value:
                continue
            if before is None:
                mapping.pop(key, None)
            else:
                mapping[key] = before
        self._emulated.clear()


SESSION = Session()
