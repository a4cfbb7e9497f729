"""A kept emulator: `python -m runcomfy_nb.emulator --state FILE` in a process of its own session, so
it outlives the kernel that started it (a kernel restart kills the kernel's process group, not it).

Once it listens, the process writes the state file (mode 0600: it holds the token): its URLs, pid,
speed, token and Comfy Cloud key, user id, deployments and model count. A later kernel reads it with
`find()`, which also checks the process still answers with that token: a state file of a process
that died (or of a port now served by something else) counts as none, and is removed. `stop()`
ends the process and returns only once it has ended.

The file is `$RUNCOMFY_EMULATOR_STATE`, else `emulator.json` beside the job journal: the journal
records jobs against this emulator's URL, so the two belong together. Beside it: `.lock` (one kernel
at a time finds or starts one) and `.log` (the process's stderr, for a failed start; no secret).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..pids import pid_alive

STATE_ENV = "RUNCOMFY_EMULATOR_STATE"
TOKEN_ENV = "RUNCOMFY_EMULATOR_TOKEN"  # the token a new emulator accepts (never on its command line)
START_TIMEOUT = 30.0  # seconds: a cold import of aiohttp and the emulator takes a second or two
STOP_TIMEOUT = 10.0
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # started here: reaped by stop(), never GC-warned


@dataclass(frozen=True)
class KeptEmulator:
    """A running kept emulator, as its state file describes it. `stop()` ends it."""

    url: str
    cloud_url: str
    pid: int
    speed: float
    user_id: str
    deployments: list[str]
    models: int
    started_at: float
    token: str = field(repr=False)
    comfy_api_key: str = field(repr=False)

    def deployment_ids(self) -> list[str]:
        """The serverless deployments it serves (as `Emulator.deployment_ids`)."""
        return list(self.deployments)

    def stop(self) -> None:
        """End the process (see `stop`)."""
        stop(self)


def state_path() -> Path:
    """Where a kept emulator's state file is: `$RUNCOMFY_EMULATOR_STATE`, else beside the journal."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    from ..journal import journal_path

    return journal_path().with_name("emulator.json")


def write_state(path: Path, kept: KeptEmulator) -> None:
    """Write the state atomically, readable by this user only (it holds the token)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(asdict(kept), file)
    os.replace(tmp, path)


def read_state(path: Path | None = None) -> KeptEmulator | None:
    """The state file's emulator, whether or not it still runs (None: no readable file)."""
    try:
        data = json.loads((path or state_path()).read_text())
        return KeptEmulator(**data)
    except (OSError, ValueError, TypeError):
        return None


def remove_state(path: Path, pid: int) -> None:
    """Remove the state file if it still describes process `pid` (a newer one's stays)."""
    kept = read_state(path)
    if kept is not None and kept.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie has ended; a child of ours is reaped here)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    return pid_alive(pid)


def answers(kept: KeptEmulator, timeout: float = 2.0) -> bool:
    """Whether the emulator at `kept.url` answers an authenticated read with `kept.token`."""
    try:
        reply = httpx.get(f"{kept.url}/prod/v2/deployments", timeout=timeout,
                          headers={"Authorization": f"Bearer {kept.token}"})
    except httpx.HTTPError:
        return False
    return reply.status_code == 200


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One kernel at a time finds or starts the kept emulator (two would start two)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(f"{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no lock; a race there starts a second emulator
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def find(path: Path | None = None) -> tuple[KeptEmulator | None, KeptEmulator | None]:
    """(the running kept emulator or None, the state of one that had ended or None). The stale
    state file of an ended one is removed."""
    path = path or state_path()
    kept = read_state(path)
    if kept is None:
        return None, None
    if process_alive(kept.pid) and answers(kept):
        return kept, None
    remove_state(path, kept.pid)
    return None, kept


def _spawn(path: Path, speed: float, token: str | None) -> subprocess.Popen[bytes]:
    from ..config import ENV_NAMES, SECRETS

    # the user's real token and key are of no use to the emulator: they stay out of its environment
    env = {k: v for k, v in os.environ.items() if k not in {n for s in SECRETS for n in ENV_NAMES[s]}}
    if token:
        env[TOKEN_ENV] = token
    else:
        env.pop(TOKEN_ENV, None)
    log = path.with_name(f"{path.name}.log")  # start-up errors; holds no secret (--state prints none)
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as err:
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = (getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
                                       | getattr(subprocess, "DETACHED_PROCESS", 0))
        else:
            kwargs["start_new_session"] = True  # not killed with the kernel's process group
        return subprocess.Popen(
            [sys.executable, "-m", "runcomfy_nb.emulator", "--port", "0", "--speed", repr(speed),
             "--state", str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=err, env=env, **kwargs)


def start(speed: float, *, token: str | None = None, path: Path | None = None,
          timeout: float = START_TIMEOUT) -> KeptEmulator:
    """Start a kept emulator and return it once it listens (RuntimeError if it could not start)."""
    path = path or state_path()
    child = _spawn(path, speed, token)
    _CHILDREN[child.pid] = child
    deadline = time.monotonic() + timeout
    while True:
        kept = read_state(path)
        if kept is not None and kept.pid == child.pid:
            return kept
        if child.poll() is not None or time.monotonic() > deadline:
            stop_pid(child.pid)
            log = path.with_name(f"{path.name}.log")
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise RuntimeError("the kept emulator could not start"
                               + (f": {tail[0]}" if tail else f" within {timeout:g} s"))
        time.sleep(0.05)  # the child writes its state file within a second or two


def find_or_start(speed: float, *, token: str | None = None,
                  path: Path | None = None) -> tuple[KeptEmulator, bool, KeptEmulator | None]:
    """(the kept emulator, whether it was started now, the state of an ended one it replaces)."""
    path = path or state_path()
    with _locked(path):
        kept, ended = find(path)
        if kept is not None:
            return kept, False, None
        return start(speed, token=token, path=path), True, ended


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM `pid` (SIGKILL if it outlasts `timeout`); True once it has ended."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for sig, wait in ((None, timeout), (getattr(signal, "SIGKILL", signal.SIGTERM), 5.0)):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while process_alive(pid):
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)  # the emulator closes its sockets and exits within a second
        else:
            _CHILDREN.pop(pid, None)
            return True
    return False


def stop(kept: KeptEmulator, path: Path | None = None) -> None:
    """End the kept emulator's process and remove its state file; RuntimeError if it did not end."""
    ours = kept.pid in _CHILDREN or answers(kept)  # else the pid may be another process's by now
    if ours and process_alive(kept.pid) and not stop_pid(kept.pid):
        raise RuntimeError(f"the kept emulator (pid {kept.pid}) did not end; end it by hand")
    remove_state(path or state_path(), kept.pid)
