"""`%%runcomfy prompt`: queue a workflow on a machine's (or any) ComfyUI and follow every node."""

from __future__ import annotations

from typing import Any

from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..errors import ValidationError
from ..workflow import Workflow, parse_cell
from .run import follow, seconds
from .session import SESSION


@magic_arguments()
@argument("--machine", help="a machine id launched here (default: the `%%runcomfy connect` target)")
@argument("--url", help="any ComfyUI server URL")
@argument("--workflow", help="an API-format workflow file the cell's override lines apply to")
@argument("--upload", action="append", default=[],
          help="upload this file first; the cell may use its stored name as {{upload}}")
@argument("--out", help="store the result under this name")
@argument("--timeout", type=seconds, help="seconds to wait before cancelling the prompt")
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


def prompt(magics: Any, line: str, cell: str | None) -> Any:
    args = parse_argstring(_prompt_args, line)
    if args.machine and args.url:
        raise ValidationError("Give --machine or --url, not both.")
    comfy = SESSION.comfy(args.machine or args.url)
    base = Workflow.load(args.workflow) if args.workflow else None
    namespace = dict(magics.shell.user_ns)
    uploads = [comfy.upload(path) for path in args.upload]
    if uploads:
        namespace.update(upload=str(uploads[0]), uploads=[str(u) for u in uploads])
    workflow = workflow_from_cell(cell or "", namespace, base)
    job = comfy.queue(workflow)
    return follow(magics, job, timeout=args.timeout, out=args.out)
