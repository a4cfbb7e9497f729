"""Switchable faults: each applies to the next `count` matching requests (-1: all of them)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

FAULTS = {
    # name: the operations it applies to by default
    "rate_limit": "any", "server_error": "any", "http_error": "any", "body_error": "submit",
    "drop": "submit", "delay": "submit", "job_fails": "submit", "slow_queue": "submit",
    "truncate": "download",
    # machines (target: a server_id or "*"); see machines.py and comfyui.py
    "never_ready": "ready", "slow_ready": "ready", "ws_drop": "ws", "node_raises": "run",
}
OPERATIONS = {"submit", "status", "result", "cancel", "download", "ready", "ws", "run", "any"}


@dataclass
class Fault:
    name: str
    deployment: str = "*"
    count: int = 1
    on: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in FAULTS:
            raise ValueError(f"unknown fault {self.name!r}; known: {', '.join(FAULTS)}")
        self.on = self.on or FAULTS[self.name]
        if self.on not in OPERATIONS:
            raise ValueError(f"unknown operation {self.on!r}; known: {', '.join(sorted(OPERATIONS))}")


class Faults:
    """The armed faults; thread-safe (tests arm them from outside the emulator's loop)."""

    def __init__(self) -> None:
        self._armed: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._armed.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    def take(self, deployment: str, operation: str, names: set[str] | None = None) -> Fault | None:
        """The first armed fault matching, its count used up by one."""
        with self._lock:
            for fault in self._armed:
                if (fault.deployment in ("*", deployment)
                        and fault.on in ("any", operation)
                        and (names is None or fault.name in names)):
                    if fault.count > 0:
                        fault.count -= 1
                        if fault.count == 0:
                            self._armed.remove(fault)
                    return fault
        return None
