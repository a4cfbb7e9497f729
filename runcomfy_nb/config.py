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


ENV_NAMES: dict[str, tuple[str, ...]] = {  # each setting's environment variables, the first set wins
    "token": ("RUNCOMFY_TOKEN", "RUNCOMFY_API_KEY"),
    "user_id": ("RUNCOMFY_USER_ID",),
    "comfy_api_key": ("COMFY_CLOUD_API_KEY",),
    "base_url": ("RUNCOMFY_BASE_URL",),
    "model_api_url": ("RUNCOMFY_MODEL_API_URL",),
    "comfy_cloud_url": ("COMFY_CLOUD_URL",),
    "serverless_version": ("RUNCOMFY_SERVERLESS_VERSION",),
    "timeout": ("RUNCOMFY_TIMEOUT",),
    "output_dir": ("RUNCOMFY_OUTPUT_DIR",),
    "auto_save": ("RUNCOMFY_AUTO_SAVE",),
}
SECRETS = frozenset({"token", "comfy_api_key"})
SETTINGS: dict[str, Any] = {}
"""Settings made in this process (`%runcomfy login`, `%runcomfy config KEY=VALUE`, `%runcomfy emulate`,
`%config RunComfyMagics.output_dir`), by Config field name: they win over the environment, and
keyword arguments win over them. Secrets are kept as `Secret`s."""

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def parse_setting(name: str, text: str) -> Any:
    """The value of setting `name` written as text (an environment variable, `%runcomfy config`)."""
    if name == "timeout":
        try:
            value = float(text)
        except ValueError:
            value = 0.0
        if not 0 < value < float("inf"):
            raise ConfigError(f"timeout must be a positive number of seconds, not {text!r}")
        return value
    if name == "auto_save":
        if text.strip().lower() not in _TRUE | _FALSE:
            raise ConfigError(f"auto_save must be on or off (1/0, true/false, yes/no), not {text!r}")
        return text.strip().lower() in _TRUE
    return text.strip()


@dataclass(frozen=True)
class Config:
    """Where each API lives, the credentials for it, and where outputs are saved.

    `Config.from_env()` reads the environment at each call — `RUNCOMFY_TOKEN` (or `RUNCOMFY_API_KEY`),
    `RUNCOMFY_USER_ID`, `COMFY_CLOUD_API_KEY`, `RUNCOMFY_BASE_URL`, `RUNCOMFY_MODEL_API_URL`,
    `COMFY_CLOUD_URL`, `RUNCOMFY_SERVERLESS_VERSION`, `RUNCOMFY_TIMEOUT`, `RUNCOMFY_OUTPUT_DIR` and
    `RUNCOMFY_AUTO_SAVE` — then the settings made in this process (`SETTINGS`); keyword arguments win.
    `serverless_version` is the prefix of the four serverless queue calls, `/prod/v1` (default, as the
    queue pages document it) or `/prod/v2`; the deployment list and the instance proxy are v2 only.
    `output_dir` is the default folder of every save; with `auto_save` every job's outputs are saved
    there as it finishes.
    """

    token: Secret | None = None
    user_id: str | None = None
    comfy_api_key: Secret | None = None
    base_url: str = DEFAULT_BASE_URL
    model_api_url: str = DEFAULT_MODEL_API_URL
    comfy_cloud_url: str = DEFAULT_COMFY_CLOUD_URL
    serverless_version: str = "v1"
    timeout: float = 30.0
    output_dir: str = "outputs"
    auto_save: bool = False

    @classmethod
    def from_env(cls, **overrides: Any) -> Config:
        values: dict[str, Any] = {}
        for name, env_names in ENV_NAMES.items():
            text = _env(*env_names)
            if text is not None:
                values[name] = parse_setting(name, text)
        values.update(SETTINGS)
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
        if not self.output_dir:
            object.__setattr__(self, "output_dir", "outputs")

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
            "output_dir": self.output_dir,
            "auto_save": "on" if self.auto_save else "off",
        }
