"""The exit guard: every machine this process launched is stopped when the process ends (end of
script, `sys.exit`, kernel shutdown, SIGTERM), unless it was launched with `keep=True`.

At exit the clients may be closed and their event loop gone, so the guard sends its DELETEs with
its own short-lived blocking HTTP client and the base URL and headers captured at launch. It
prints one line per machine: "billing has ended" only after the server answered that the machine
is stopping, else what the server said or what went wrong, and where to look.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from types import FrameType
from typing import Any

import httpx

from .timefmt import format_duration, parse_timestamp

BUDGET = 30.0  # seconds the guard may spend on all its machines at exit
_STOPPING = ("deleting", "stopping")
REFUSALS = 3  # a server that refuses connections this often will not answer in the budget either


@dataclass
class _Watched:
    machine: Any  # a clients.machines.Machine: its `keep` and `settled` are read at exit
    url: str  # the machine's DELETE URL
    headers: dict[str, str] = field(repr=False)  # carries the token: never shown


class ExitGuard:
    """The machines to stop at exit; `GUARD` is the process's one instance."""

    def __init__(self) -> None:
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.RLock()  # re-entrant: the SIGTERM handler runs on the main thread
        self._atexit = False
        self._signal = False
        self._previous: Any = None

    def __repr__(self) -> str:
        return f"<ExitGuard watching {len(self._watched)} machine(s)>"

    def install(self) -> None:
        """Register the atexit hook, and the SIGTERM handler when called from the main thread
        (only it may set one; a process that ignores SIGTERM is left as it is)."""
        with self._lock:
            if not self._atexit:
                atexit.register(self.run)
                self._atexit = True
            if self._signal or threading.current_thread() is not threading.main_thread():
                return
            previous = signal.getsignal(signal.SIGTERM)
            if previous is not signal.SIG_IGN:
                self._previous = previous
                signal.signal(signal.SIGTERM, self._on_sigterm)
            self._signal = True

    def watch(self, machine: Any, url: str, headers: dict[str, str]) -> None:
        """Stop `machine` at exit (unless `machine.keep` is then true) with DELETE `url`."""
        with self._lock:
            self._watched[machine.id] = _Watched(machine, url, dict(headers))
        self.install()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.run()
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
            return
        # the default action: end the process as SIGTERM would have
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def run(self) -> None:
        """Stop every watched machine not kept and not already confirmed stopped; each once."""
        with self._lock:
            due = [w for w in self._watched.values() if not w.machine.keep and not w.machine.settled]
            for watched in due:
                del self._watched[watched.machine.id]
        if not due:
            return
        deadline = time.monotonic() + BUDGET
        with httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0)) as client:
            for watched in due:
                _say(_stop(client, watched, deadline))


def _stop(client: httpx.Client, watched: _Watched, deadline: float) -> str:
    """One DELETE, retried on 429, 5xx and network errors until `deadline`; the line to print."""
    short = watched.machine.id[:8]
    refused = 0
    while True:
        wait = 1.0
        try:
            response = client.delete(watched.url, headers=watched.headers)
        except httpx.ConnectError:
            refused += 1
            problem = "could not connect"
            if refused >= REFUSALS:
                return _failed(short, problem)
        except httpx.HTTPError:
            problem = "the connection failed"
        else:
            done = _outcome(short, response)
            if done is not None:
                return done
            problem = f"HTTP {response.status_code}"
            wait = _retry_after(response) or wait
        if time.monotonic() + wait > deadline:
            return _failed(short, problem)
        time.sleep(wait)


def _failed(short: str, problem: str) -> str:
    return (f"runcomfy_nb: could not stop machine {short} at exit ({problem}); it may still be billing: "
            "check `%runcomfy machines` or the RunComfy dashboard.")


def _outcome(short: str, response: httpx.Response) -> str | None:
    """The line for a final answer, or None for one worth retrying (429, 5xx, an error body)."""
    status = response.status_code
    if status == 404:
        return f"runcomfy_nb: the server no longer knows machine {short} (404); nothing to stop."
    if status == 429 or status >= 500:
        return None
    if status >= 400:
        return (f"runcomfy_nb: the server refused to stop machine {short} at exit (HTTP {status}); it may "
                "still be billing: check `%runcomfy machines` or the RunComfy dashboard.")
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("error_code") is not None:
        return None
    raw = str(body.get("current_status") or "unknown")
    if raw.lower() not in _STOPPING:
        return (f"runcomfy_nb: the server took the stop of machine {short} but reports it {raw}; it may "
                "still be billing: check `%runcomfy machines` or the RunComfy dashboard.")
    billed = _billed(body, response)
    return f"runcomfy_nb: stopped machine {short} at exit ({raw}{billed}); billing has ended."


def _billed(body: dict[str, Any], response: httpx.Response) -> str:
    """', 2 min 05 s billed' from Ready to the server's own now (its Date header), when both are known."""
    ready = parse_timestamp(body.get("service_ready_at"))
    if ready is None:
        return ", never Ready: nothing billed"
    try:
        now = parsedate_to_datetime(response.headers["date"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return ""
    return f", {format_duration(now - ready)} billed"


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(10.0, max(0.0, float(response.headers["retry-after"])))
    except (KeyError, ValueError):
        return None


def _say(line: str) -> None:
    with contextlib.suppress(ValueError, OSError):  # stdout may be closed this late
        print(line, flush=True)


GUARD = ExitGuard()
