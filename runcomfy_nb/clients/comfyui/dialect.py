"""How a server speaks ComfyUI's protocol: `Dialect` is a stock ComfyUI server's way. A client is
given one; Comfy Cloud's (`clients/cloud_dialect.py`) says where Cloud differs: paths, the WebSocket
URL and its routing, how a running job is stopped, failure text, downloads and history."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

from ...errors import BadRequest
from ...media import Fetcher, Media
from ...status import Status
from ...storage import Storage
from ...transport import Transport
from .downloads import ViewFetcher
from .messages import SERVICE, execution_error_message
from .replies import HistoryEntry, QueueStatus


class Calls(Protocol):
    """What a dialect may call on its client."""

    @property
    def http(self) -> Transport: ...

    async def queue_status(self) -> QueueStatus: ...

    async def history(self, prompt_id: str) -> HistoryEntry | None: ...

    def outputs(self, outputs: Any) -> tuple[list[Media], list[str]]: ...


class Dialect:
    """A stock ComfyUI server: no auth (a machine's URL is the secret), one WebSocket per job
    under its own client id, `/history` for outcomes, `/view` for outputs."""

    service = SERVICE        # how messages name the server
    kind = "comfyui"         # `Job.kind` of its jobs
    label = "ComfyUI"        # the start of their default label
    handle = "comfy"         # what the re-attach hint of a lost job calls the client
    run_name = "ComfyUI prompt"  # how a job's backend names itself in its repr
    history_path = "/history"
    shared_socket = False    # True: the client's jobs share one socket, routed by prompt id
    records_client_id = True  # queue and history rows carry a prompt's client id

    def transport(self, base_url: str, timeout: float) -> Transport:
        """The Transport to `base_url` (auth, error mapping)."""
        return Transport(base_url, service=self.service, timeout=timeout)

    def fetcher(self, http: Transport, storage: Storage) -> Fetcher:
        """What downloads the outputs."""
        return ViewFetcher(storage)

    def ws_url(self, base_url: str, client_id: str) -> str:
        parts = urlsplit(base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, f"{parts.path}/ws", f"clientId={quote(client_id)}", ""))

    def shown_as(self, base_url: str) -> str:
        """What the client's repr shows of the server (never a machine's secret URL)."""
        return self.service

    def failure_text(self, data: Mapping[str, Any], nodes: Mapping[str, Any]) -> str:
        """What an `execution_error` says, for the exception."""
        return execution_error_message(data, nodes)

    def upload_refused(self, name: str, exc: BadRequest) -> BadRequest:
        """The error for an upload the server refused."""
        if exc.status == 413:
            return BadRequest(f"The {self.service} refused {name}: it is over the server's upload limit "
                              "(100 MB unless started with --max-upload-size).", status=413)
        return BadRequest(f"The {self.service} rejected the upload of {name} (HTTP {exc.status}): check "
                          "the subfolder (it must stay inside the folder) and the file.", status=exc.status)

    async def interrupt(self, server: Calls, prompt_id: str | None) -> None:
        """Stop the running prompt; with `prompt_id`, only if that prompt is the one running."""
        body = {"prompt_id": prompt_id} if prompt_id else None
        await server.http.request("POST", "/interrupt", json=body, idempotent=True)

    async def stop_running(self, server: Calls, prompt_id: str, status: QueueStatus) -> bool:
        """Interrupt `prompt_id`, which `status` shows running; True if asked."""
        await self.interrupt(server, prompt_id)
        return True

    async def outcome(self, server: Calls, prompt_id: str, nodes: Mapping[str, Any]) -> HistoryEntry | None:
        """The prompt's end (None while it is queued or running)."""
        return await server.history(prompt_id)

    async def locate(
        self, server: Calls, prompt_id: str, nodes: Mapping[str, Any],
    ) -> HistoryEntry | Status | None:
        """Where a prompt that `/queue` no longer lists is: its end, the Status of a job the server
        still runs, or None when the server does not know it."""
        return await self.outcome(server, prompt_id, nodes)
