"""The blocking clients, made from the async ones by `sync.blocking_class` (no second copy)."""

from __future__ import annotations

from .client import AsyncRunComfy
from .sync import blocking_class

RunComfy = blocking_class(
    AsyncRunComfy, "The RunComfy APIs, blocking: `AsyncRunComfy` run on a background loop."
)

__all__ = ["RunComfy"]
