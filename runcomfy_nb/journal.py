"""The job journal: one small SQLite file that remembers every submitted job, so `%runcomfy jobs` and
`attach` work after a kernel restart, from another kernel or from a script.

It lives at `$RUNCOMFY_JOURNAL`, else `jobs.sqlite3` in the user data dir (platformdirs), mode 0600,
in WAL mode with short transactions, so kernels and scripts can write at once. A row holds the job's
kind, target, ids, parameters (its provenance without secrets; of a serverless job the overrides,
not the whole workflow), status, error, outputs (names, the URLs of storage-hosted files, local paths
once saved; never bytes) and timestamps. Machine URLs are never written: a ComfyUI job on a RunComfy
machine keeps the machine's server id.

A submit writes its row before the POST (`begin`); the reply fills it in (`Pending.taken`); a
submit whose reply never arrived stays as `unknown` with what to do (`Pending.lost`); a refused one
is removed. From then on the row follows the Job's status changes (`follow`).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError, SubmitUncertain, UnexpectedReply, ValidationError
from .events import Event, Failed, Finished, Output
from .provenance import without_secrets

if TYPE_CHECKING:
    from .jobs import Job

FILE_NAME = "jobs.sqlite3"
ACTIVE = ("submitting", "unknown", "queued", "running")
COLUMNS = ("job_id", "kind", "target", "server", "base_url", "status", "submitted_at", "updated_at",
           "finished_at", "label", "client_id", "notebook", "pid", "params", "outputs", "error", "note")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    row INTEGER PRIMARY KEY, job_id TEXT, kind TEXT NOT NULL, target TEXT NOT NULL, server TEXT,
    base_url TEXT, status TEXT NOT NULL, submitted_at REAL NOT NULL, updated_at REAL NOT NULL,
    finished_at REAL, label TEXT, client_id TEXT, notebook TEXT, pid INTEGER, params TEXT,
    outputs TEXT, error TEXT, note TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_id ON jobs(job_id);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs(submitted_at);
"""
_MACHINE_HOST = re.compile(r"^([0-9a-f][0-9a-f-]{7,})-comfyui\.runcomfy\.com$", re.IGNORECASE)


def journal_path() -> Path:
    """Where the journal is: `$RUNCOMFY_JOURNAL`, else `jobs.sqlite3` in the user data dir."""
    moved = os.environ.get("RUNCOMFY_JOURNAL", "").strip()
    if moved:
        return Path(moved).expanduser()
    import platformdirs

    return platformdirs.user_data_path("runcomfy_nb") / FILE_NAME


def server_of(url: str) -> str:
    """What a ComfyUI job's row keeps of its server: a RunComfy machine's server id (its URL grants
    access, so it is never written), else the URL without credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    machine = _MACHINE_HOST.match(host)
    if machine:
        return machine.group(1)
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _notebook() -> str | None:
    """The notebook the kernel runs, where the front end says (Jupyter's JPY_SESSION_NAME, VS Code's
    `__vsc_ipynb_file__`)."""
    named = os.environ.get("JPY_SESSION_NAME")
    if named:
        return named
    ipython = __import__("sys").modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    found = shell.user_ns.get("__vsc_ipynb_file__") if shell is not None else None
    return str(found) if found else None


@dataclass(frozen=True)
class Entry:
    """One journaled job (see the module docstring); `outputs` are dicts with `filename`, `kind`,
    `url` (storage-hosted files only), `subfolder`, `type` and `path` (once saved here)."""

    id: str
    kind: str
    target: str
    status: str
    submitted_at: float
    updated_at: float
    server: str | None = None
    base_url: str | None = None
    finished_at: float | None = None
    label: str | None = None
    client_id: str | None = None
    notebook: str | None = None
    pid: int | None = None
    params_json: str = field(default="", repr=False)
    outputs: list[dict[str, Any]] = field(default_factory=list, repr=False)
    error: str | None = None
    note: str | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The job's parameters (its provenance without secrets), read when asked for."""
        found: dict[str, Any] = json.loads(self.params_json or "{}")
        return found

    @property
    def active(self) -> bool:
        """Not known to have ended (it may still run, or its submit's outcome is unknown)."""
        return self.status in ACTIVE

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Entry:
        values = dict(row)
        values.pop("row", None)
        values["id"] = values.pop("job_id") or ""
        values["params_json"] = values.pop("params") or ""
        values["outputs"] = json.loads(values["outputs"] or "[]")
        return cls(**values)


def _params(provenance: dict[str, Any]) -> dict[str, Any]:
    """What a row keeps of a job's provenance: all of it, but a serverless job's whole workflow (its
    deployment's saved workflow with the overrides kept here: tens of KB a job, rebuilt at will)."""
    if "overrides" in provenance or "inputs" in provenance:
        provenance = {k: v for k, v in provenance.items() if k != "workflow"}
    kept: dict[str, Any] = without_secrets(provenance)
    return kept


def _output(media: Any, storage_hosted: bool) -> dict[str, Any]:
    found = {"filename": media.filename, "kind": media.kind, "subfolder": media.subfolder,
             "type": media.type}
    if storage_hosted:  # a machine's or Cloud's /view URL is rebuilt by its client, never written
        found["url"] = media.url
    return found


class Journal:
    """The journal file; one connection per process, used under a lock (the sync facade's loop
    thread and the kernel's main thread both use it)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else journal_path()
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Journal {self.path}>"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # created private, never widened
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout = 30000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(_SCHEMA)
        for extra in ("-wal", "-shm"):  # SQLite makes them with the umask's mode
            side = self.path.with_name(self.path.name + extra)
            if side.exists():
                side.chmod(0o600)
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                self._db = self._connect()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                if self._db is None:
                    if not self.path.exists():
                        return []
                    self._db = self._connect()
                return self._db.execute(sql, args).fetchall()
            except (sqlite3.Error, OSError) as exc:
                raise ConfigError(f"The job journal at {self.path} cannot be read ({exc}): move that file "
                                  "away, or set RUNCOMFY_JOURNAL to another path.") from None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- writing --
    def begin(self, *, kind: str, target: str, server: str | None = None, base_url: str | None = None,
              client_id: str | None = None, label: str | None = None) -> Pending:
        """A row for a submit about to be sent (status `submitting`)."""
        now = time.time()
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO jobs (kind, target, server, base_url, status, submitted_at, updated_at, "
                "label, client_id, notebook, pid) VALUES (?, ?, ?, ?, 'submitting', ?, ?, ?, ?, ?, ?)",
                (kind, target, server, base_url, now, now, label, client_id, _notebook(), os.getpid()))
        return Pending(self, int(cursor.lastrowid or 0))

    def follow(self, job: Job, *, target: str, server: str | None = None,
               base_url: str | None = None, row: int | None = None) -> None:
        """Record `job` (in row `row`, a submit's, or its own row, made if new) and keep its status,
        error and outputs up to date as its events arrive."""
        try:
            row = self._record(job, target, server, base_url, row)
        except (sqlite3.Error, OSError) as exc:
            _warn_once(exc)
            return
        _Follower(self, row, job)

    def _record(self, job: Job, target: str, server: str | None, base_url: str | None,
                row: int | None) -> int:
        now = time.time()
        params = json.dumps(_params(job.provenance), default=str) if job.provenance else None
        with self._write() as db:
            if row is None:
                found = db.execute("SELECT row, status, submitted_at FROM jobs WHERE job_id = ?",
                                   (job.id,)).fetchone()
                if found is None:
                    row = int(db.execute(
                        "INSERT INTO jobs (job_id, kind, target, server, base_url, status, submitted_at, "
                        "updated_at, label, notebook, pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (job.id, job.kind, target, server, base_url, job.status.value, now, now, job.label,
                         _notebook(), os.getpid())).lastrowid or 0)
                else:
                    row = int(found["row"])
                    if found["status"] in ACTIVE:  # attached mid-run: its time runs from the submit
                        job.submitted_at = min(job.submitted_at, float(found["submitted_at"]))
            db.execute("UPDATE jobs SET job_id = ?, status = ?, updated_at = ?, label = ?, note = NULL, "
                       "params = COALESCE(?, params), pid = ? WHERE row = ?",
                       (job.id, job.status.value, now, job.label, params, os.getpid(), row))
        return row

    def update(self, row: int, **values: Any) -> None:
        """Set columns of one row (and `updated_at`)."""
        values["updated_at"] = time.time()
        names = [n for n in values if n in COLUMNS]
        with self._write() as db:
            db.execute(f"UPDATE jobs SET {', '.join(f'{n} = ?' for n in names)} WHERE row = ?",
                       (*(values[n] for n in names), row))

    def forget(self, row: int) -> None:
        """Remove a submit's row that never got a job (the server refused it)."""
        with self._write() as db:
            db.execute("DELETE FROM jobs WHERE row = ? AND job_id IS NULL", (row,))

    def saved(self, job_id: str, filename: str, path: Path) -> None:
        """Output `filename` of job `job_id` was saved at `path`."""
        with self._write() as db:
            found = db.execute("SELECT row, outputs FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if found is None:
                return
            outputs = json.loads(found["outputs"] or "[]")
            for output in outputs:
                if output.get("filename") == filename and not output.get("path"):
                    output["path"] = str(path.resolve())
                    break
            else:
                outputs.append({"filename": filename, "path": str(path.resolve())})
            db.execute("UPDATE jobs SET outputs = ?, updated_at = ? WHERE row = ?",
                       (json.dumps(outputs), time.time(), found["row"]))

    # -- reading --
    def entries(self, *, kind: str | None = None, status: str | None = None, since: float | None = None,
                limit: int | None = None) -> list[Entry]:
        """Journaled jobs, newest first; `since` is an epoch time, `limit` a count."""
        where: list[str] = ["1"]
        args: list[Any] = []
        for column, value in (("kind", kind), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("submitted_at >= ?")
            args.append(since)
        sql = (f"SELECT * FROM jobs WHERE ({') AND ('.join(where)}) ORDER BY submitted_at DESC"
               + (" LIMIT ?" if limit is not None else ""))
        rows = self._read(sql, (*args, limit) if limit is not None else tuple(args))
        return [Entry.from_row(row) for row in rows]

    def count(self) -> int:
        rows = self._read("SELECT COUNT(*) AS n FROM jobs")
        return int(rows[0]["n"]) if rows else 0

    def find(self, prefix: str) -> Entry:
        """The one job whose id starts with `prefix`; ValidationError if none or several do."""
        prefix = str(prefix).strip()
        if not prefix:
            raise ValidationError("Give a job id (or the start of one); `%runcomfy jobs` lists them.")
        rows = self._read("SELECT * FROM jobs WHERE job_id >= ? AND job_id < ? ORDER BY submitted_at DESC "
                          "LIMIT 6", (prefix, prefix + "\U0010ffff"))
        if not rows:
            raise ValidationError(f"No journaled job has an id starting with {prefix!r}; `%runcomfy jobs "
                                  "--all` lists them all.")
        exact = [r for r in rows if r["job_id"] == prefix]
        if exact:
            return Entry.from_row(exact[0])
        if len(rows) > 1:
            shown = ", ".join(str(r["job_id"]) for r in rows[:5])
            raise ValidationError(f"{len(rows) if len(rows) < 6 else 'Several'} journaled jobs start with "
                                  f"{prefix!r} ({shown}): give more of the id.")
        return Entry.from_row(rows[0])


class Pending:
    """The row of a submit in flight: `taken(job, ...)` once the server answered with an id,
    `lost(note)` when the reply never came, `refused()` when nothing was taken. Journal errors are
    warned about once, never raised: the job matters more than its record."""

    def __init__(self, journal: Journal | None, row: int) -> None:
        self.journal, self.row = journal, row

    def taken(self, job: Job, *, target: str, server: str | None = None,
              base_url: str | None = None) -> None:
        if self.journal is not None:
            self.journal.follow(job, target=target, server=server, base_url=base_url, row=self.row)

    def lost(self, note: str) -> None:
        self._quietly(lambda j: j.update(self.row, status="unknown", note=note))

    def refused(self) -> None:
        self._quietly(lambda j: j.forget(self.row))

    def _quietly(self, write: Any) -> None:
        if self.journal is not None:
            try:
                write(self.journal)
            except (sqlite3.Error, OSError) as exc:
                _warn_once(exc)


class _Follower:
    """Writes a job's status changes, its error and its outputs to its row (never its previews or
    progress: a few writes per job)."""

    def __init__(self, journal: Journal, row: int, job: Job) -> None:
        self.journal, self.row = journal, row
        self.written = job.status
        self.storage_hosted = job.kind in ("serverless", "model")
        if not job.done:
            job.subscribe(self, replay=False)

    def __call__(self, job: Job, event: Event) -> None:
        if isinstance(event, Output):
            return
        values: dict[str, Any] = {}
        if job.status is not self.written:
            values["status"] = job.status.value
        if isinstance(event, Finished):
            values["outputs"] = json.dumps([_output(m, self.storage_hosted) for m in event.result.media])
        elif isinstance(event, Failed):
            values["error"] = str(event.error).splitlines()[0][:500] if str(event.error) else None
        if job.done:
            values["finished_at"] = job.finished_at or time.time()
        if values:
            self.written = job.status
            try:
                self.journal.update(self.row, **values)
            except (sqlite3.Error, OSError) as exc:  # an unwritable journal must not break the job
                _warn_once(exc)


_warned: list[str] = []


def _warn_once(exc: Exception) -> None:
    if not _warned:
        import logging

        logging.getLogger("runcomfy_nb").warning("The job journal could not be written (%s); jobs go on, "
                                                 "unrecorded.", exc)
        _warned.append(str(exc))


_journals: dict[Path, Journal] = {}
UNKNOWN_NOTE = ("its reply never arrived: it may run (and bill) there; it was not resent. Check the "
                "service's list of requests before submitting it again.")


@contextmanager
def submitting(kind: str, target: str, **where: Any) -> Iterator[Pending]:
    """The journal row of one submit (see `Journal.begin`) around its POST: a `SubmitUncertain`
    (or a reply without an id) leaves it `unknown`, any other error removes it. The caller calls
    `taken` with the Job. A journal that cannot be written is warned about once; the submit goes on."""
    try:
        pending = journal().begin(kind=kind, target=target, **where)
    except (sqlite3.Error, OSError) as exc:
        _warn_once(exc)
        pending = Pending(None, 0)
    try:
        yield pending
    except (SubmitUncertain, UnexpectedReply) as exc:
        pending.lost(f"{type(exc).__name__}: {UNKNOWN_NOTE}")
        raise
    except BaseException:
        pending.refused()
        raise


def journal() -> Journal:
    """This process's journal at `journal_path()` (a new one when RUNCOMFY_JOURNAL moved it)."""
    path = journal_path()
    if path not in _journals:
        _journals[path] = Journal(path)
    return _journals[path]


__all__ = ["ACTIVE", "Entry", "Journal", "Pending", "journal", "journal_path", "server_of", "submitting"]
