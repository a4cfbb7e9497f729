"""`%%runcomfy run DEPLOYMENT_ID`: submit the cell to a serverless deployment and follow it."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING, Any

from IPython import get_ipython
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from .. import sync
from ..errors import JobFailed, ValidationError
from ..jobs import CANCEL_WAIT
from ..workflow import parse_cell
from .session import SESSION
from .sweeps import run_sweep, sweep_arguments, take_sweeps

if TYPE_CHECKING:
    from ..facade import Job, JobResult  # the blocking views' types (stub-only classes)

COMFY_KEYS = {"overrides", "workflow_api_json", "extra_data"}


def seconds(text: str) -> float:
    """A `--timeout` value: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


@magic_arguments()
@argument("deployment", help="the deployment id")
@argument("--out", help="store the result (or the job, with --no-wait) under this name")
@argument("--timeout", type=seconds, help="seconds to wait before cancelling the job")
@argument("--no-wait", action="store_true", help="return the job at once; it runs on")
@argument("--no-validate", action="store_true",
          help="send without first checking the cell against the deployment's workflow and nodes")
@sweep_arguments
def _run_args(line: str) -> None: ...


def submit_arguments(kind: str, data: Any) -> dict[str, Any]:
    """Keyword arguments of `Deployments.submit` for a parsed cell body."""
    if kind == "overrides":
        return {"overrides": data}
    if not isinstance(data, dict):
        raise ValidationError("The cell's JSON must be an object: the body the API takes.")
    if COMFY_KEYS & data.keys():
        unknown = sorted(data.keys() - COMFY_KEYS)
        if unknown:
            raise ValidationError(
                f"Unknown top-level field(s) {', '.join(unknown)}: a ComfyUI deployment takes "
                "overrides, workflow_api_json and extra_data."
            )
        return {"overrides": data.get("overrides"), "workflow": data.get("workflow_api_json"),
                "extra_data": data.get("extra_data")}
    return {"inputs": data}  # a LoRA deployment's own schema


def show_progress(job: Job, *, follow: bool = True) -> None:
    """Show `job`'s progress: a JobProgress widget where a widget front end is (it refreshes its
    saved fallback when the job ends), else the text view (`console.wants_text_view`: terminal
    IPython, Colab, `RUNCOMFY_PROGRESS=text`) on stdout, live where `\r` rewrites a line (a TTY or
    a kernel's output area). `follow=False` (`--no-wait`): the text view says the state once, so
    no later line lands in the middle of what the user types next."""
    from .. import console

    shell = get_ipython()
    if console.wants_text_view(shell):
        live = console._isatty(sys.stdout) or getattr(shell, "kernel", None) is not None
        view = console.TextProgress(job, sys.stdout, live=live and follow)
        if not follow and not view.ended:
            view.close()
            if view.live:
                view._write("\n")
        return
    from ..widgets import JobProgress

    display(sync.on_loop(JobProgress, job))  # made on the job's loop, where its events arrive


def follow(magics: Any, job: Job, *, timeout: float | None, out: str | None) -> JobResult | None:
    """Show live progress, wait for the result (Ctrl-C cancels unless auto_cancel is off),
    store it under `out` and return it. A failed job's error is told once, by its progress view;
    the cell still fails, with a one-line pointer there."""
    try:
        show_progress(job)  # inside: a Ctrl-C even before the wait began must cancel the job
        result = job.result(timeout=timeout or magics.timeout,
                            cancel_on_interrupt=magics.auto_cancel)
    except KeyboardInterrupt:
        print(interrupted(magics, job))
        return None
    except JobFailed as exc:
        if job.error is not exc:  # not the job's own failure: its view did not tell it
            raise
        raise JobFailed(f"Job {job.id} failed: its error is shown in its progress above.",
                        job_id=job.id) from None
    if out:
        magics.shell.user_ns[out] = result
    return result


def interrupted(magics: Any, job: Job) -> str:
    """What came of a Ctrl-C, as the server last told it. `job.result` has already cancelled the
    job when it was waiting; one more try covers a Ctrl-C before the wait began."""
    if not magics.auto_cancel:
        return (f"Interrupted: job {job.id} runs on (auto_cancel is off); "
                "its progress above keeps updating.")
    if not job.done:
        with contextlib.suppress(Exception):  # its outcome is told below
            job.cancel(wait=CANCEL_WAIT)
    status = job.status.value
    if job.done:
        return f"Interrupted: job {job.id} is {status}."
    return (f"Interrupted: the server did not confirm the cancel of job {job.id}; it was {status} "
            "when last seen and may still be running there (see `%runcomfy jobs`).")


def deliver(magics: Any, job: Job, args: Any) -> Job | JobResult | None:
    """`--no-wait`: show the job's progress and return the job (stored under `--out`); else follow
    it to its result (see `follow`)."""
    if args.no_wait:
        show_progress(job, follow=False)
        if args.out:
            magics.shell.user_ns[args.out] = job
        return job
    return follow(magics, job, timeout=args.timeout, out=args.out)


def run_request(magics: Any, args: Any, cell: str | None) -> dict[str, Any]:
    """The keyword arguments of `Deployments.submit` a cell asks for; node titles and class names
    in override lines are resolved by the submit, against the deployment's saved workflow."""
    kind, data = parse_cell(cell or "", magics.shell.user_ns)
    return {**submit_arguments(kind, data), "validate": not args.no_validate}


def run(magics: Any, line: str, cell: str | None) -> Any:
    line, sweep = take_sweeps(line)
    args = parse_argstring(_run_args, line)
    request = run_request(magics, args, cell)
    if sweep is None:
        return deliver(magics, SESSION.client.deployments.submit(args.deployment, **request), args)
    if "overrides" not in request or request.get("workflow") is not None:
        raise ValidationError("--sweep varies a ComfyUI deployment's overrides: give override lines "
                              "(or {\"overrides\": ...}) in the cell, not a whole workflow or LoRA inputs.")
    overrides, validate = request["overrides"], request["validate"]
    return run_sweep(magics, lambda axes, **how: SESSION.client.sweep(
        args.deployment, overrides, axes, validate=validate, **how), sweep, out=args.out)
