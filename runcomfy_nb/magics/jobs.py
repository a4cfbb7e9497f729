"""`%runcomfy jobs`: every job this kernel started or attached, of every kind."""

from __future__ import annotations

import html
import time
from typing import Any

from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..jobs import Job, Output, recent_jobs
from ..timefmt import format_duration
from .registry import subcommand

KINDS = ("serverless", "comfyui", "model", "cloud")
HEADER = ("#", "kind", "job", "status", "submitted", "took", "outputs", "note")


def _row(n: int, job: Job) -> tuple[str, ...]:
    outputs = sum(isinstance(e, Output) for e in job.history)
    note = ""
    if job.error is not None and job.status.value == "failed":
        note = str(job.error).splitlines()[0][:80]
    elif job.status.value == "queued" and job.position is not None:
        note = f"queue position {job.position}"
    elif job.status.value == "running" and job.progress:
        value, maximum = job.progress
        note = f"node {job.node or '?'}: {value:g}/{maximum:g}"
    return (str(n), job.kind, job.label, job.status.value,
            time.strftime("%H:%M:%S", time.localtime(job.submitted_at)), format_duration(job.elapsed),
            str(outputs) if outputs else "", note)


class JobList(list[Job]):
    """The jobs `%runcomfy jobs` found; shows as a table, indexes like a list (`jobs[-1]`)."""

    def rows(self) -> list[tuple[str, ...]]:
        return [_row(n, job) for n, job in enumerate(self)]

    def __repr__(self) -> str:
        rows = [HEADER, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                         for r in rows)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in HEADER)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                       for r in self.rows())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@magic_arguments()
@argument("--kind", choices=KINDS, help="only jobs of this kind")
@argument("--active", action="store_true", help="only jobs still queued or running")
@argument("--out", help="store the list under this name")
def _jobs_args(line: str) -> None: ...


@subcommand("jobs", "jobs [--kind serverless|comfyui|model|cloud] [--active] [--out NAME]",
            "List the jobs of this kernel, every kind, with status, time and outputs.")
def jobs(magics: Any, line: str, cell: str | None) -> JobList | None:
    args = parse_argstring(_jobs_args, line)
    found = JobList(job for job in recent_jobs()
                    if (args.kind is None or job.kind == args.kind) and not (args.active and job.done))
    if args.out:
        magics.shell.user_ns[args.out] = found
    if not found:
        print("No jobs yet in this kernel." if not (args.kind or args.active) else "No job matches.")
        return None
    return found
