"""`%runcomfy jobs`: every job this kernel started or attached, of every kind."""

from __future__ import annotations

import time
from typing import Any

from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..events import Output
from ..jobs import Job, recent_jobs
from ..timefmt import format_duration
from .core import Table

KINDS = ("serverless", "comfyui", "model", "cloud")


class JobList(Table):
    """The jobs `%runcomfy jobs` found; shows as a table, indexes like a list (`jobs[-1]`)."""

    HEADER = ("#", "kind", "job", "status", "submitted", "took", "outputs", "note")

    def row(self, n: int, job: Job) -> tuple[str, ...]:
        outputs = sum(isinstance(e, Output) for e in job.history)
        note = ""
        if job.detached:
            note = "detached: no longer followed here (it may still run)"
        elif job.error is not None and job.status.value == "failed":
            note = str(job.error).splitlines()[0][:80]
        elif job.status.value == "queued" and job.position is not None:
            note = f"queue position {job.position}"
        elif job.status.value == "running" and job.progress:
            value, maximum = job.progress
            note = f"node {job.node or '?'}: {value:g}/{maximum:g}"
        return (str(n), job.kind, job.label, job.status.value,
                time.strftime("%H:%M:%S", time.localtime(job.submitted_at)), format_duration(job.elapsed),
                str(outputs) if outputs else "", note)


@magic_arguments()
@argument("--kind", choices=KINDS, help="only jobs of this kind")
@argument("--active", action="store_true", help="only jobs still queued or running (and followed here)")
@argument("--out", help="store the list under this name")
def _jobs_args(line: str) -> None: ...


def jobs(magics: Any, line: str, cell: str | None) -> JobList | None:
    args = parse_argstring(_jobs_args, line)
    found = JobList(job for job in recent_jobs()
                    if (args.kind is None or job.kind == args.kind)
                    and not (args.active and (job.done or job.detached)))
    if args.out:
        magics.shell.user_ns[args.out] = found
    if not found:
        print("No jobs yet in this kernel." if not (args.kind or args.active) else "No job matches.")
        return None
    return found
