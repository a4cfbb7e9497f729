"""The client as its jobs' backends and sockets see it: `Link` (a socket_run.Server and a
sockets.Opener) over the client's public calls, the shared `/queue` snapshot and the probe."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

import httpx

from ...config import Secret
from ...errors import APIError, RunComfyError, TransportError, transient
from ...media import Fetcher, Media, media_from_outputs
from ...status import Status
from ...storage import Storage
from ...transport import Transport
from .dialect import Dialect
from .downloads import HeldBytes
from .messages import socket_reason
from .replies import HistoryEntry, QueueStatus, entry_status, entry_workflow
from .sockets import open_socket

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from .socket_run import SocketRun


class Client(Protocol):
    """The public calls of a client that its Link uses."""

    async def queue_status(self) -> QueueStatus: ...

    async def history(self, prompt_id: str) -> HistoryEntry | None: ...

    async def delete_pending(self, prompt_ids: str | Iterable[str]) -> None: ...


class QueueSnapshots:
    """`/queue`, shared by every job of a client when `max_age` seconds old is recent enough: a
    `status` broadcast reaches every job's socket at once, and a sweep of many queued jobs must not
    answer it with as many requests."""

    def __init__(self, read: Callable[[], Awaitable[QueueStatus]]) -> None:
        self._read = read
        self._last: tuple[float, QueueStatus] | None = None
        self._task: asyncio.Task[QueueStatus] | None = None

    async def get(self, max_age: float) -> QueueStatus:
        loop = asyncio.get_running_loop()
        if max_age <= 0:
            return await self._take()
        if self._last is not None and loop.time() - self._last[0] <= max_age:
            return self._last[1]
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._take())
        return await asyncio.shield(self._task)

    async def _take(self) -> QueueStatus:
        status = await self._read()
        self._last = (asyncio.get_running_loop().time(), status)
        return status

    def running(self) -> tuple[str, ...]:
        """The prompts the last snapshot showed running."""
        return self._last[1].running if self._last else ()


class Link:
    """What the jobs and the dialect of one client call (socket_run.Server, sockets.Opener,
    dialect.Calls): the client's public calls, its Transport, outputs and WebSocket, the dialect's
    ways, and the client's bookkeeping (`runs` followed, prompts `deleted` from the queue)."""

    def __init__(self, client: Client, dialect: Dialect, base: Secret, http: Transport,
                 storage: Storage) -> None:
        self._client = client
        self._base = base
        self._storage = storage
        self.dialect = dialect
        self.http = http
        self.fetcher = dialect.fetcher(http, storage)
        self.snapshots = QueueSnapshots(client.queue_status)
        self.runs: set[SocketRun] = set()
        self.deleted: set[str] = set()  # prompts we removed from the queue: gone means cancelled

    @property
    def service(self) -> str:
        return self.dialect.service

    async def open_socket(self, client_id: str) -> ClientConnection:
        """A WebSocket to the server under `client_id`."""
        return await open_socket(self.dialect.ws_url(self._base.get(), client_id))

    def last_running(self) -> tuple[str, ...]:
        return self.snapshots.running()

    async def answering(self, timeout: float = 10.0) -> None:
        """Raise TransportError (saying why, briefly) unless one GET /queue, without retries (and
        so without their log lines), is answered: the probe of a server that stopped answering."""
        try:
            await asyncio.wait_for(self.http.once("GET", "/queue"), timeout)
        except RunComfyError as exc:
            if transient(exc):
                why = f"HTTP {exc.status}" if isinstance(exc, APIError) else str(exc)
                raise TransportError(why) from None
        except httpx.ConnectError:
            raise TransportError("connection refused") from None
        except (httpx.HTTPError, OSError, asyncio.TimeoutError) as exc:
            raise TransportError(socket_reason(exc)) from None

    async def answers(self, timeout: float) -> bool:
        try:
            await self.answering(timeout)
        except TransportError:
            return False
        return True

    async def queue_status(self) -> QueueStatus:
        return await self._client.queue_status()

    async def history(self, prompt_id: str) -> HistoryEntry | None:
        return await self._client.history(prompt_id)

    async def queue_snapshot(self, max_age: float) -> QueueStatus:
        return await self.snapshots.get(max_age)

    async def delete_pending(self, prompt_ids: str | Iterable[str]) -> None:
        await self._client.delete_pending(prompt_ids)

    async def stop_running(self, prompt_id: str, status: QueueStatus) -> bool:
        return await self.dialect.stop_running(self, prompt_id, status)

    def was_deleted(self, prompt_id: str) -> bool:
        return prompt_id in self.deleted

    async def outcome(self, prompt_id: str, nodes: Mapping[str, Any]) -> HistoryEntry | None:
        return await self.dialect.outcome(self, prompt_id, nodes)

    async def locate(self, prompt_id: str, nodes: Mapping[str, Any]) -> HistoryEntry | Status | None:
        return await self.dialect.locate(self, prompt_id, nodes)

    def view_url(self, filename: str, subfolder: str = "", type: str = "output") -> str:
        """The `/view` URL of an output (it holds a machine's secret address)."""
        query = urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        return f"{self.http.base_url}/view?{query}"

    def outputs(self, outputs: Any) -> tuple[list[Media], list[str]]:
        """Media (with /view URLs) and text from ComfyUI `outputs`, per node or for one node."""
        with_urls: dict[str, Any] = {}
        for node_id, per_kind in (outputs.items() if isinstance(outputs, dict) else ()):
            if not isinstance(per_kind, dict):
                continue
            with_urls[str(node_id)] = {
                key: [{**item, "url": self.view_url(str(item["filename"]), str(item.get("subfolder") or ""),
                                                    str(item.get("type") or "output"))}
                      if isinstance(item, dict) and item.get("filename") else item
                      for item in items] if isinstance(items, list) else items
                for key, items in per_kind.items()
            }
        return media_from_outputs(with_urls, self.fetcher)

    def entry(self, prompt_id: str, raw: dict[str, Any]) -> HistoryEntry:
        """A `/history` entry as a HistoryEntry."""
        nodes = entry_workflow(raw)
        state, failure = entry_status(raw)
        error = None
        if state is Status.FAILED:
            error = (self.dialect.failure_text(failure, nodes) if failure is not None
                     else "The ComfyUI run failed without details.")
        media, text = self.outputs(raw.get("outputs")) if state is Status.SUCCEEDED else ([], [])
        return HistoryEntry(prompt_id, state, media, text, error, workflow=nodes, raw=raw)

    def frame_fetcher(self, data: bytes) -> Fetcher:
        return HeldBytes(data, self._storage)

    def release(self, run: SocketRun) -> None:
        self.runs.discard(run)
