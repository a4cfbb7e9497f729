"""One read shared by every caller that wants it while it is in flight (`SharedReads.read`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class SharedReads:
    """Reads in flight by key: a caller asking for a key being read awaits that read instead of
    starting another (e.g. a thousand submits at once read a node list once). A caller cancelled
    while waiting leaves the read running for the others."""

    def __init__(self) -> None:
        self._reading: dict[Hashable, asyncio.Future[Any]] = {}

    async def read(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.ensure_future(make())
            self._reading[key] = reading
            reading.add_done_callback(lambda done: self._forget(key, done))
        result: T = await asyncio.shield(reading)
        return result

    def _forget(self, key: Hashable, done: asyncio.Future[Any]) -> None:
        if self._reading.get(key) is done:
            del self._reading[key]
        if not done.cancelled():
            done.exception()  # retrieved: no "never retrieved" warning when every caller went away
