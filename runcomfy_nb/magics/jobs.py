"""`%runcomfy jobs` and `%runcomfy attach`: the journaled jobs of every kernel (see journal.py), and
following one again after a kernel restart."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .. import sync
from ..errors import NotFound, ValidationError
from ..jobs import Job, recent_jobs
from ..journal import Entry, journal
from ..pids import pid_alive
from ..timefmt import format_duration
from .core import Table
from .run import deliver, seconds
from .session import SESSION

KINDS = ("serverless", "comfyui", "model", "cloud")
STATUSES = ("submitting", "unknown", "queued", "running", "succeeded", "failed", "cancelled")
SHOWN = 20  # rows without --all
KEPT_DAYS = {"serverless": 7}  # how long a service keeps a finished job's output files
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def since(text: str) -> float:
    """`--since`: how far back, e.g. 90m, 12h, 1d, 2w (an epoch time is returned)."""
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower():
        raise ValueError(f"--since takes a span like 90m, 12h, 1d or 2w, not {text!r}")
    return time.time() - sum(float(n) * _UNITS[u] for n, u in parts)


def _answers(url: str) -> bool:
    """Whether anything listens at `url`'s host and port (a quick TCP connect, no request)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=0.5):
            return True
    except OSError:
        return False


class JobList(Table):
    """The journaled jobs `%runcomfy jobs` found, newest first (`Entry` objects); shows as a table,
    indexes like a list (`jobs[0].id`)."""

    HEADER = ("#", "kind", "job", "label", "status", "submitted", "took", "outputs", "note")

    def __init__(self, entries: list[Entry], live: dict[str, Job], gone: set[str]) -> None:
        super().__init__(entries)
        self.live, self.gone = live, gone

    def row(self, n: int, entry: Entry) -> tuple[str, ...]:
        job = self.live.get(entry.id)
        status = job.status.value if job is not None and not job.detached else entry.status
        end = entry.finished_at or (time.time() if entry.active else entry.updated_at)
        saved = sum(1 for o in entry.outputs if o.get("path"))
        outputs = f"{len(entry.outputs)}" + (f" ({saved} saved)" if saved else "") if entry.outputs else ""
        stamp = time.localtime(entry.submitted_at)
        shown = time.strftime("%H:%M:%S" if stamp[:3] == time.localtime()[:3] else "%b %d %H:%M", stamp)
        return (str(n), entry.kind, entry.id[:8] or "-", (entry.label or entry.target)[:40], status, shown,
                format_duration(end - entry.submitted_at), outputs, self.note(entry, job))

    def note(self, entry: Entry, job: Job | None) -> str:
        if entry.status == "unknown":
            return entry.note or "its submit's outcome is unknown"
        if entry.status == "submitting" and not pid_alive(entry.pid):
            return "its kernel ended while submitting: the outcome is unknown; check the service"
        if entry.status == "failed" and entry.error:
            return entry.error[:80]
        where = entry.server or entry.base_url or ""
        if where in self.gone:
            return "its machine or service is gone" if entry.active or entry.kind == "comfyui" else ""
        days = KEPT_DAYS.get(entry.kind)
        if entry.status == "succeeded" and days and entry.finished_at and (
                time.time() - entry.finished_at > days * 86400):
            return f"outputs deleted by the service ({days} days after the end)"
        if entry.active and (job is None or job.detached):
            if entry.pid != os.getpid() and pid_alive(entry.pid):
                return "followed by another kernel"
            return f"not followed: %runcomfy attach {entry.id[:8]}"
        if job is not None and job.status.value == "queued" and job.position is not None:
            return f"queue position {job.position}"
        return ""


def gone_places(entries: list[Entry]) -> set[str]:
    """The machines and services of these jobs that no longer answer: a machine not ready (one Server
    API call, when a token and user id are set), a ComfyUI URL or API base nothing listens at."""
    machines = {e.server for e in entries if e.kind == "comfyui" and e.server and "://" not in e.server}
    urls = {e.server or e.base_url for e in entries if (e.active or e.kind == "comfyui")
            and ("://" in (e.server or e.base_url or ""))}
    gone = {url for url in list(urls)[:8] if url and not _answers(url)}
    ready = _ready_machines({m for m in machines if m}) if machines else None
    if ready is not None:
        gone |= {m for m in machines if m is not None and m not in ready}
    return gone


_ready: tuple[float, frozenset[str]] | None = None  # when read, and the ready machines' ids
READY_FOR = 30.0  # seconds a read of the account's machines answers for (the Server API allows 1/s)


def _ready_machines(wanted: set[str]) -> frozenset[str] | None:
    """The account's ready machines, read again after READY_FOR seconds, or after 1 s when one of
    `wanted` was not ready (it may have been launched since); None when they cannot be read (no
    credentials, the Server API out of reach): then nothing is said of machines."""
    global _ready
    age = time.monotonic() - _ready[0] if _ready is not None else None
    if _ready is None or age is None or age > READY_FOR or (age > 1.0 and not wanted <= _ready[1]):
        try:
            machines = SESSION.client.machines.list()
        except Exception:
            return None
        _ready = (time.monotonic(), frozenset(m.server_id for m in machines if m.state == "ready"))
    return _ready[1]


@magic_arguments()
@argument("--all", action="store_true", help=f"every journaled job (default: the latest {SHOWN})")
@argument("--since", type=since, help="only jobs submitted within this span, e.g. 1d, 12h, 90m")
@argument("--kind", choices=KINDS, help="only jobs of this kind")
@argument("--status", choices=STATUSES, help="only jobs in this state (as last journaled)")
@argument("--out", help="store the list under this name")
def _jobs_args(line: str) -> None: ...


def jobs(magics: Any, line: str, cell: str | None) -> JobList | None:
    args = parse_argstring(_jobs_args, line)
    entries = journal().entries(kind=args.kind, status=args.status, since=args.since,
                                limit=None if args.all or args.since else SHOWN)
    found = JobList(entries, {job.id: job for job in recent_jobs()}, gone_places(entries))
    if args.out:
        magics.shell.user_ns[args.out] = found
    if not found:
        filtered = args.kind or args.status or args.since
        print("No job matches." if filtered else f"No jobs journaled yet (the journal: {journal().path}).")
        return None
    return found


@magic_arguments()
@argument("job", help="the job's id, or the start of it (see %%runcomfy jobs)")
@argument("--out", help="store the result (or the job, with --no-wait) under this name")
@argument("--timeout", type=seconds, help="seconds to wait for the result")
@argument("--no-wait", action="store_true", help="show the live progress and return the job at once")
def _attach_args(line: str) -> None: ...


def attach(magics: Any, line: str, cell: str | None) -> Any:
    args = parse_argstring(_attach_args, line)
    entry = journal().find(args.job)
    saved = [o["path"] for o in entry.outputs if o.get("path") and os.path.exists(o["path"])]
    days = KEPT_DAYS.get(entry.kind)
    if (entry.status == "succeeded" and days and entry.finished_at
            and time.time() - entry.finished_at > days * 86400):
        ago = (time.time() - entry.finished_at) / 86400
        raise ValidationError(f"Job {entry.id[:8]} ended {ago:.0f} days ago: the service deletes outputs "
                              f"after {days} days, so they are gone there. " + _copies(saved))
    try:
        job = _live(entry.id) or _follow(entry)
    except NotFound as exc:
        raise ValidationError(f"{exc} {_copies(saved)}") from None
    result = deliver(magics, job, args)
    copies = {o["filename"]: Path(o["path"]) for o in entry.outputs if o.get("path") in saved}
    for media in getattr(sync.unwrap(result), "media", ()):  # copies saved before: its gallery links them
        if not media.copies and media.filename in copies:
            media.copies.append(copies[media.filename])
    return result


def _copies(saved: list[str]) -> str:
    return f"Saved copies here: {', '.join(saved)}." if saved else "No copy was saved here."


def _live(job_id: str) -> Any:
    """The job (blocking view) as this kernel still follows it, if it does."""
    job = next((j for j in reversed(recent_jobs()) if j.id == job_id and not j.detached), None)
    return None if job is None else sync.wrap(job)


def _follow(entry: Entry) -> Any:
    """The journaled job followed again by the client of its kind (blocking facade)."""
    if entry.kind == "cloud":
        return SESSION.cloud.attach(entry.id)
    if entry.kind == "comfyui" and entry.server and "://" in entry.server:
        return SESSION.comfy(entry.server).attach(entry.id)
    return SESSION.client.attach(entry.id)
