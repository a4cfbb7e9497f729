"""The blocking clients, made from the async ones by `sync.blocking_class` (no second copy)."""

from __future__ import annotations

from .client import AsyncRunComfy
from .clients.cloud import AsyncComfyCloud
from .clients.comfyui import AsyncComfyUI
from .console import wait_view
from .sync import blocking_class, register_wait_view

register_wait_view(wait_view)  # a blocking job.result() shows text progress where no widget can

RunComfy = blocking_class(
    AsyncRunComfy, "The RunComfy APIs, blocking: `AsyncRunComfy` run on a background loop."
)

ComfyUI = blocking_class(
    AsyncComfyUI, "Any ComfyUI server, blocking: `AsyncComfyUI` run on a background loop."
)

ComfyCloud = blocking_class(
    AsyncComfyCloud, "Comfy Cloud, blocking: `AsyncComfyCloud` run on a background loop."
)

__all__ = ["ComfyCloud", "ComfyUI", "RunComfy"]
