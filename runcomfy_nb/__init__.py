"""runcomfy_nb: drive ComfyUI in the RunComfy cloud from a notebook.

`%load_ext runcomfy_nb` adds the `%runcomfy` magics; `AsyncRunComfy` is the async client and
`RunComfy` the same, blocking. Heavy modules load on first use.
"""

from __future__ import annotations

import importlib
import sys
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
    "JobResult": "events",
    "Status": "status",
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
    from .events import JobResult
    from .facade import ComfyCloud, ComfyUI, RunComfy
    from .jobs import Job
    from .media import Media
    from .status import Status
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

    register_display(ipython)
    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .magics import unload

    unload(ipython)


# --- display: the core imports no widget; IPython shows a JobResult as a Gallery ---------------


def _result_as_gallery(result: Any) -> Any:
    """IPython's printer for a JobResult: its media and text as a `Gallery`, static once it has
    loaded (a cell's value cannot be updated later, and a saved notebook keeps no widget state);
    then no widget is kept for it (in the kernel, nor in a front end without widgets).
    Saved files (`auto_save`, `save()`, an attached job's copies) are linked for download, and
    with two or more a ZIP of them beside the first is the "download all"."""
    from .widgets import Gallery
    from .widgets.fallback import WIDGET_VIEW

    paths = [m.saved for m in result.media]
    saved = [p for p in paths if p is not None]
    archive = saved[0].with_name(f"{result.job_id[:8]} outputs.zip") if len(saved) > 1 else None
    gallery = Gallery(result.media, text=result.text, paths=paths, archive=archive)
    data, meta = gallery.kept_bundle()
    if WIDGET_VIEW not in data:  # nothing shows the widget: its model and its layout's go
        gallery.layout.close()
        gallery.close()
    return data, meta


def register_display(ipython: Any = None) -> None:
    """Have `ipython` (default: the running shell, if any) show each JobResult as a Gallery. It
    costs nothing: the widgets are imported when the first JobResult is shown."""
    if ipython is None:
        running = sys.modules.get("IPython")
        ipython = running.get_ipython() if running is not None else None
    formatter = getattr(getattr(ipython, "display_formatter", None), "mimebundle_formatter", None)
    if formatter is not None:
        formatter.for_type_by_name("runcomfy_nb.events", "JobResult", _result_as_gallery)


register_display()
