"""What a ComfyUI server's replies become: uploads, system stats, the queue and history entries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...events import JobResult
from ...media import Media
from ...status import Status


def as_dict(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_mapping(value: Any) -> Mapping[str, Any]:
    """`value` if it is a mapping, else an empty one."""
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class UploadedFile:
    """Where the server stored an upload; it may have renamed it (`cat (1).png`).
    `ref` (also `str(uploaded)`) is what a loader node's input takes."""

    name: str
    subfolder: str = ""
    type: str = "input"

    @property
    def ref(self) -> str:
        path = f"{self.subfolder}/{self.name}" if self.subfolder else self.name
        return path if self.type == "input" else f"{path} [{self.type}]"

    def __str__(self) -> str:
        return self.ref


@dataclass(frozen=True)
class Device:
    """A compute device of the server (`/system_stats`)."""

    name: str
    type: str
    index: int | None = None
    vram_total: int | None = None
    vram_free: int | None = None


@dataclass(frozen=True)
class SystemStats:
    """The server's versions, memory and devices (`/system_stats`)."""

    comfyui_version: str
    python_version: str = ""
    pytorch_version: str = ""
    os: str = ""
    ram_total: int | None = None
    ram_free: int | None = None
    devices: tuple[Device, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_reply(cls, reply: Any) -> SystemStats:
        reply = as_dict(reply)
        system = as_dict(reply.get("system"))
        devices = tuple(
            Device(name=str(d.get("name", "")), type=str(d.get("type", "")), index=d.get("index"),
                   vram_total=d.get("vram_total"), vram_free=d.get("vram_free"))
            for d in reply.get("devices") or [] if isinstance(d, dict)
        )
        return cls(
            comfyui_version=str(system.get("comfyui_version") or ""),
            python_version=str(system.get("python_version") or ""),
            pytorch_version=str(system.get("pytorch_version") or ""), os=str(system.get("os") or ""),
            ram_total=system.get("ram_total"), ram_free=system.get("ram_free"), devices=devices,
            raw=reply,
        )


@dataclass(frozen=True)
class QueueStatus:
    """Prompt ids running and pending, in the order they will run; `items` holds each one's
    `/queue` row (number, id, prompt, extra_data, ...)."""

    running: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    items: dict[str, list[Any]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_reply(cls, reply: Any) -> QueueStatus:
        reply = as_dict(reply)
        items: dict[str, list[Any]] = {}

        def ids(key: str) -> tuple[str, ...]:
            rows = [r for r in reply.get(key) or [] if isinstance(r, list) and len(r) >= 2]
            rows.sort(key=lambda r: r[0] if isinstance(r[0], (int, float)) else 0)
            for row in rows:
                items[str(row[1])] = row
            return tuple(str(r[1]) for r in rows)

        return cls(running=ids("queue_running"), pending=ids("queue_pending"), items=items)

    def position(self, prompt_id: str) -> int | None:
        """How many prompts run before this one (the running one included); None if absent."""
        if prompt_id in self.running:
            return 0
        if prompt_id in self.pending:
            return len(self.running) + self.pending.index(prompt_id)
        return None

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.running or prompt_id in self.pending


@dataclass(frozen=True)
class HistoryEntry:
    """A finished prompt: `status` is succeeded, failed or cancelled; `error` says why it failed."""

    prompt_id: str
    status: Status
    media: list[Media] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    error: str | None = None
    workflow: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def result(self) -> JobResult:
        return JobResult(job_id=self.prompt_id, media=list(self.media), text=list(self.text),
                         raw=self.raw)


def entry_status(raw: Mapping[str, Any]) -> tuple[Status, dict[str, Any] | None]:
    """How a `/history` entry ended, and its `execution_error` data if it failed with one."""
    status = as_dict(raw.get("status"))
    messages = {m[0]: m[1] for m in status.get("messages") or []
                if isinstance(m, (list, tuple)) and len(m) == 2}
    if "execution_interrupted" in messages:
        return Status.CANCELLED, None
    if status.get("status_str") == "error" or "execution_error" in messages:
        data = messages.get("execution_error")
        return Status.FAILED, data if isinstance(data, dict) else None
    return Status.SUCCEEDED, None  # success, or an old server that records no status


def entry_workflow(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The nodes of the prompt a `/history` entry ran (empty if it does not say)."""
    prompt = raw.get("prompt")
    if isinstance(prompt, list) and len(prompt) > 2 and isinstance(prompt[2], dict):
        return prompt[2]
    return {}


def client_id_of(row: Any) -> str | None:
    """The `client_id` in a queue row's or history prompt's extra_data (index 3), if any."""
    if isinstance(row, list) and len(row) > 3 and isinstance(row[3], dict):
        value = row[3].get("client_id")
        return str(value) if value is not None else None
    return None
