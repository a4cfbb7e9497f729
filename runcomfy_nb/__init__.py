"""runcomfy_nb: drive ComfyUI in the RunComfy cloud from a notebook.

`%load_ext runcomfy_nb` adds the `%runcomfy` magics; `AsyncRunComfy` is the async client and
`RunComfy` the same, blocking. Heavy modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AsyncRunComfy": "client",
    "RunComfy": "facade",
    "AsyncComfyUI": "clients.comfyui",
    "ComfyUI": "facade",
    "AsyncComfyCloud": "clients.cloud",
    "ComfyCloud": "facade",
    "Config": "config",
    "Secret": "config",
    "Job": "jobs",
    "JobResult": "jobs",
    "Status": "jobs",
    "Media": "media",
    "Workflow": "workflow",
    "Emulator": "emulator",
    "JobProgress": "widgets",
    "Gallery": "widgets",
    "MachinePanel": "widgets",
    **dict.fromkeys(
        ["RunComfyError", "ConfigError", "MissingCredentials", "ValidationError", "APIError",
         "AuthError", "PaymentRequired", "SubscriptionInactive", "RateLimited", "NotFound",
         "BadRequest", "ServerError", "UnexpectedReply", "MachineFailed", "TransportError",
         "SubmitUncertain", "JobError", "JobFailed",
         "ContactLost", "JobCancelled", "JobTimeout"],
        "errors",
    ),
}
__all__ = ["__version__", "load_ipython_extension", "unload_ipython_extension", *_EXPORTS]

if TYPE_CHECKING:
    from .client import AsyncRunComfy
    from .clients.cloud import AsyncComfyCloud
    from .clients.comfyui import AsyncComfyUI
    from .config import Config, Secret
    from .emulator import Emulator
    from .errors import (
        APIError,
        AuthError,
        BadRequest,
        ConfigError,
        ContactLost,
        JobCancelled,
        JobError,
        JobFailed,
        JobTimeout,
        MachineFailed,
        MissingCredentials,
        NotFound,
        PaymentRequired,
        RateLimited,
        RunComfyError,
        ServerError,
        SubmitUncertain,
        SubscriptionInactive,
        TransportError,
        UnexpectedReply,
        ValidationError,
    )
    from .facade import ComfyCloud, ComfyUI, RunComfy
    from .jobs import Job, JobResult, Status
    from .media import Media
    from .widgets import Gallery, JobProgress, MachinePanel
    from .workflow import Workflow


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runcomfy_nb' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def load_ipython_extension(ipython: Any) -> None:
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .magics import unload

    unload(ipython)
