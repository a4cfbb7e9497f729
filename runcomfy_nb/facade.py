"""The blocking clients, made from the async ones by `sync.blocking_class` (no second copy)."""

from __future__ import annotations

from .client import AsyncRunComfy
from .clients.cloud import AsyncComfyCloud
from .clients.comfyui import AsyncComfyUI
from .sync import blocking_class

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
