"""`%%runcomfy prompt`: queue a workflow on a machine's (or any) ComfyUI and follow every node."""

from __future__ import annotations

from typing import Any

from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..errors import ValidationError
from ..workflow import Workflow, parse_cell
from .run import follow, seconds
from .session import SESSION
from .sweeps import run_sweep, sweep_arguments, take_sweeps


@magic_arguments()
@argument("--machine", help="a machine id launched here (default: the `%%runcomfy connect` target)")
@argument("--url", help="any ComfyUI server URL")
@argument("--workflow", help="an API-format workflow file the cell's override lines apply to")
@argument("--upload", action="append", default=[],
          help="upload this file first; the cell may use its stored name as {{upload}}")
@argument("--out", help="store the result under this name")
@argument("--timeout", type=seconds, help="seconds to wait before cancelling the prompt")
@argument("--no-validate", action="store_true",
          help="send without first checking the workflow against the server's nodes")
@sweep_arguments
def _prompt_args(line: str) -> None: ...


def workflow_from_cell(cell: str, namespace: dict[str, Any], base: Workflow | None) -> Workflow:
    kind, data = parse_cell(cell, namespace, base)
    if kind == "json":
        return Workflow(data.get("prompt", data) if isinstance(data, dict) else data)
    if base is None:
        if not data:
            raise ValidationError("The cell is empty: give an API-format workflow, or --workflow FILE.")
        raise ValidationError("Override lines need the workflow they change: add --workflow FILE.")
    return base.override(data)


def uploaded_namespace(magics: Any, client: Any, paths: list[str]) -> dict[str, Any]:
    """The user's namespace plus `{{upload}}` / `{{uploads}}`: the stored names of `paths`,
    uploaded first."""
    namespace = dict(magics.shell.user_ns)
    uploads = [client.upload(path) for path in paths]
    if uploads:
        namespace.update(upload=str(uploads[0]), uploads=[str(u) for u in uploads])
    return namespace


def prompt_target(args: Any) -> Any:
    """The (blocking) ComfyUI client the arguments name."""
    if args.machine and args.url:
        raise ValidationError("Give --machine or --url, not both.")
    return SESSION.comfy(args.machine or args.url)


def prompt_request(magics: Any, args: Any, cell: str | None, comfy: Any) -> dict[str, Any]:
    """The keyword arguments of `queue` a cell asks for (uploading `--upload` files first)."""
    base = Workflow.load(args.workflow) if args.workflow else None
    namespace = uploaded_namespace(magics, comfy, args.upload)
    return {"workflow": workflow_from_cell(cell or "", namespace, base), "validate": not args.no_validate}


def prompt(magics: Any, line: str, cell: str | None) -> Any:
    line, sweep = take_sweeps(line)
    args = parse_argstring(_prompt_args, line)
    comfy = prompt_target(args)
    request = prompt_request(magics, args, cell, comfy)
    if sweep is not None:
        return run_sweep(magics, lambda axes, **how: comfy.sweep(
            request["workflow"], axes, validate=request["validate"], **how), sweep, out=args.out)
    return follow(magics, comfy.queue(**request), timeout=args.timeout, out=args.out)
