"""Switchable faults: each applies to the next `count` matching requests (-1: all of them).

A fault names a target (a deployment id, a server id, a workflow version id, a model id, "cloud" for
Comfy Cloud, or "*"), the operation it applies to (`on`; each fault has a default, see FAULTS) and its
own params. Armed three ways: `Emulator.set_fault(target, name, count, on=..., **params)`, a
deployment's or model's `"faults": [...]` in the config (`{"fault": name, "count": ..., "on": ...,
**params}`), or POST `/_emulator/faults` (`{"deployment": target, "fault": name, ...}`).

Request faults (answered by `reply` before, or for `drop`/`delay` on a submit, after the request was
processed): `rate_limit` (429 + `Retry-After: retry_after`), `server_error` (500), `http_error`
(`status`, `error_code`, `message`), `body_error` (HTTP 200 carrying `error_code`/`message` and no
status; the code may be a string, e.g. "internal_error", as on status polls and results), `drop`
(the connection is closed without an answer; on a submit after it was taken, or with `before: true`
before, so nothing is taken), `delay` (`seconds` of real time before answering).
Reply faults: `nulls` (on status and result: the real answer, with every field it leaves out present
as `null`, e.g. `"outputs": null` beside a LoRA's `"output"`; see `envelope.with_nulls`).
A server that vanishes mid-run is `Emulator.stop()` (its port closes, its jobs end) or `Emulator.kill()`
(its port closes and every connection is cut, while its state and jobs go on: `start()` serves them
again on the same port).
Job faults: `job_fails` (`message`), `slow_queue` (`seconds` virtual, extra wait in the queue).
Output faults: `odd_names` (serverless on "submit", the machines' ComfyUI on "run"): the job's
outputs are named ODD_NAMES (a path traversal, Windows device and dot names, a NUL byte, 300+
characters; ComfyUI's /view cannot serve `..` or NUL names, so its runs leave those out), one image each.
Download faults: `truncate` (full Content-Length, half the bytes, then the connection closes; on a
ranged request half of the range; `count=2` cuts two answers), `no_range` (Range and If-Range are
ignored: 200 with the whole file, no Accept-Ranges).
Comfy Cloud (cloud/) answers the request faults in its own `{"code", "message"}` shape (`http_error`
takes `code`), applies them to uploads too (`on="upload"`), and reads `node_raises` (`exception_type`
one of its categories, e.g. OOMError) and `ws_drop` as the machines' ComfyUI does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, NoReturn

from aiohttp import web

from .envelope import error

FAULTS = {
    # name: the operation it applies to unless `on` says otherwise
    "rate_limit": "any", "server_error": "any", "http_error": "any", "body_error": "submit",
    "drop": "submit", "delay": "submit", "job_fails": "submit", "slow_queue": "submit",
    "truncate": "download", "no_range": "download", "nulls": "any",
    "odd_names": "submit",  # serverless "submit", machines' ComfyUI "run": outputs named ODD_NAMES
    # machines (target: a server_id or "*"); see machines/ and comfyui/
    "never_ready": "ready", "slow_ready": "ready", "ws_drop": "ws", "node_raises": "run", "ws_refused": "ws",
    "not_json": "status",  # machines/: HTTP 200 whose body is an HTML page, not JSON
}
OPERATIONS = {"submit", "upload", "status", "result", "cancel", "download", "ready", "ws", "run", "any"}
REQUEST_FAULTS = {"rate_limit", "server_error", "http_error", "body_error", "drop", "delay"}
# hostile output names: traversal, reserved (Windows device, dot names), a NUL byte, oversized
ODD_NAMES = ("../../evil.png", "CON.png", ".", "..", "nul\x00byte.png", "o" * 300 + ".png")
_SPEC_KEYS = ("fault", "name", "deployment", "target", "count", "on")


@dataclass
class Fault:
    name: str
    deployment: str = "*"  # the target: a deployment id, server id, workflow version id, or "*"
    count: int = 1
    on: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in FAULTS:
            raise ValueError(f"unknown fault {self.name!r}; known: {', '.join(FAULTS)}")
        self.on = self.on or FAULTS[self.name]
        if self.on not in OPERATIONS:
            raise ValueError(f"unknown operation {self.on!r}; known: {', '.join(sorted(OPERATIONS))}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or (
                self.count < 1 and self.count != -1):
            raise ValueError(f"count must be a positive int or -1 (forever), not {self.count!r}")

    @classmethod
    def from_spec(cls, spec: dict[str, Any], target: str = "*") -> Fault:
        """A fault from its JSON form, `{"fault": name, "count": 1, "on": ..., **params}`."""
        if not isinstance(spec, dict):
            raise ValueError("a fault is a JSON object")
        name = spec.get("fault", spec.get("name"))
        if not isinstance(name, str):
            raise ValueError("a fault needs a name: {\"fault\": \"rate_limit\", ...}")
        params = {k: v for k, v in spec.items() if k not in _SPEC_KEYS}
        return cls(name, str(spec.get("deployment", spec.get("target", target))), spec.get("count", 1),
                   spec.get("on", "") or "", params)


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

    def armed(self) -> list[Fault]:
        with self._lock:
            return list(self._armed)

    def take(self, target: str, operation: str, names: Collection[str] | None = None) -> Fault | None:
        """The first armed fault matching, its count used up by one."""
        with self._lock:
            for fault in self._armed:
                if (fault.deployment in ("*", target)
                        and fault.on in ("any", operation)
                        and (names is None or fault.name in names)):
                    if fault.count > 0:
                        fault.count -= 1
                        if fault.count == 0:
                            self._armed.remove(fault)
                    return fault
        return None


async def reply(request: web.Request, fault: Fault | None) -> web.StreamResponse | None:
    """Apply a request fault: the answer to send instead of processing the request, or None to go on
    (no fault, or a `delay` that has been waited out). A `drop` closes the connection and never
    returns."""
    if fault is None:
        return None
    params = fault.params
    if fault.name == "rate_limit":
        response = error(429, 429001, "Too many requests")
        response.headers["Retry-After"] = str(params.get("retry_after", 1))
        return response
    if fault.name == "server_error":
        return error(500, 500001, "Internal server error")
    if fault.name == "http_error":
        return error(int(params.get("status", 500)), int(params.get("error_code", 500001)),
                     str(params.get("message", "Error")))
    if fault.name == "body_error":
        code = params.get("error_code", params.get("code", 10001))
        return error(200, code if isinstance(code, str) else int(code),
                     str(params.get("message", "InsufficientFunds: deployment disabled by balance")))
    if fault.name == "drop":
        drop(request)
    if fault.name == "delay":
        await asyncio.sleep(float(params.get("seconds", 1)))
    return None


def drop(request: web.Request) -> NoReturn:
    """Close the connection without an answer (the client sees it end mid-exchange)."""
    if request.transport is not None:
        request.transport.abort()
    # aiohttp treats a cancelled handler as a client that went away: nothing is written
    raise asyncio.CancelledError
