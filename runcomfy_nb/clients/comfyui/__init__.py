"""ComfyUI's own HTTP + WebSocket API on any server (a RunComfy machine, a local ComfyUI) and, through
a dialect, on servers that speak it their own way (Comfy Cloud).

replies (what the server's answers become), messages (refusal and failure text), uploads, downloads
(output fetchers), dialect (a stock server's ways), sockets (handshake, own or shared socket),
frames (a prompt's frames as Job events), socket_run (`SocketRun`, the WebSocket run backend),
link (the client as its runs see it) and client (`ComfyClient`, `AsyncComfyUI`).
"""

from .client import CLIENT_ID_PREFIX, AsyncComfyUI, ComfyClient
from .dialect import Calls, Dialect
from .messages import PromptRejected, execution_error_message, rejection_message
from .replies import Device, HistoryEntry, QueueStatus, SystemStats, UploadedFile
from .socket_run import SocketRun
from .sockets import preview_metadata

__all__ = [
    "CLIENT_ID_PREFIX", "AsyncComfyUI", "Calls", "ComfyClient", "Device", "Dialect", "HistoryEntry",
    "PromptRejected", "QueueStatus", "SocketRun", "SystemStats", "UploadedFile",
    "execution_error_message", "preview_metadata", "rejection_message",
]
