"""Configuration and credentials: where the APIs live and the secrets that open them."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from .errors import ConfigError, MissingCredentials

DEFAULT_BASE_URL = "https://api.runcomfy.net"
DEFAULT_MODEL_API_URL = "https://model-api.runcomfy.net"
DEFAULT_COMFY_CLOUD_URL = "https://cloud.comfy.org"


class Secret:
    """A credential whose repr and str never show its value; call `.get()` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("a secret must be a non-empty string")
        self._value = value.strip()

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('[secure]')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:  # pickling would write the value out
        raise TypeError("a Secret cannot be pickled")


def _secret(value: str | Secret | None) -> Secret | None:
    if value is None or isinstance(value, Secret):
        return value
    return Secret(value) if value.strip() else None


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


@dataclass(frozen=True)
class Config:
    """Where each API lives and the credentials for it.

    `Config.from_env()` reads `RUNCOMFY_TOKEN` (or `RUNCOMFY_API_KEY`), `RUNCOMFY_USER_ID`,
    `COMFY_CLOUD_API_KEY`, `RUNCOMFY_BASE_URL`, `RUNCOMFY_MODEL_API_URL`, `COMFY_CLOUD_URL` and
    `RUNCOMFY_SERVERLESS_VERSION`; keyword arguments win over the environment.
    `serverless_version` is the prefix of the four serverless queue calls, `/prod/v1` (default, as the
    queue pages document it) or `/prod/v2`; the deployment list and the instance proxy are v2 only.
    """

    token: Secret | None = None
    user_id: str | None = None
    comfy_api_key: Secret | None = None
    base_url: str = DEFAULT_BASE_URL
    model_api_url: str = DEFAULT_MODEL_API_URL
    comfy_cloud_url: str = DEFAULT_COMFY_CLOUD_URL
    serverless_version: str = "v1"
    timeout: float = 30.0

    @classmethod
    def from_env(cls, **overrides: Any) -> Config:
        values: dict[str, Any] = {
            "token": _env("RUNCOMFY_TOKEN", "RUNCOMFY_API_KEY"),
            "user_id": _env("RUNCOMFY_USER_ID"),
            "comfy_api_key": _env("COMFY_CLOUD_API_KEY"),
            "base_url": _env("RUNCOMFY_BASE_URL") or DEFAULT_BASE_URL,
            "model_api_url": _env("RUNCOMFY_MODEL_API_URL") or DEFAULT_MODEL_API_URL,
            "comfy_cloud_url": _env("COMFY_CLOUD_URL") or DEFAULT_COMFY_CLOUD_URL,
            "serverless_version": _env("RUNCOMFY_SERVERLESS_VERSION") or "v1",
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        object.__setattr__(self, "token", _secret(self.token))
        object.__setattr__(self, "comfy_api_key", _secret(self.comfy_api_key))
        for name in ("base_url", "model_api_url", "comfy_cloud_url"):
            object.__setattr__(self, name, getattr(self, name).rstrip("/"))
        if self.serverless_version not in ("v1", "v2"):
            raise ConfigError("serverless_version (RUNCOMFY_SERVERLESS_VERSION) must be 'v1' or 'v2', "
                             f"not {self.serverless_version!r}")

    def with_(self, **changes: Any) -> Config:
        return replace(self, **changes)

    def require_token(self) -> Secret:
        if self.token is None:
            raise MissingCredentials(
                "No RunComfy API token: set RUNCOMFY_TOKEN (from your RunComfy profile page) "
                "or pass token=... (in a notebook, `%runcomfy emulate` uses the local emulator)."
            )
        return self.token

    def masked(self) -> dict[str, str]:
        """The settings as text, with every secret masked: safe to display."""

        def mask(secret: Secret | None) -> str:
            return "set ([secure])" if secret else "not set"

        return {
            "token": mask(self.token),
            "user_id": self.user_id or "not set",
            "comfy_api_key": mask(self.comfy_api_key),
            "base_url": self.base_url,
            "model_api_url": self.model_api_url,
            "comfy_cloud_url": self.comfy_cloud_url,
            "serverless_version": self.serverless_version,
            "timeout": f"{self.timeout:g} s",
        }
