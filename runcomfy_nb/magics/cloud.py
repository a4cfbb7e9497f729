"""`%%runcomfy cloud`: run the cell's workflow on Comfy Cloud and follow it live."""

from __future__ import annotations

from typing import Any

from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..errors import ValidationError
from ..workflow import Workflow, parse_cell
from .prompt import uploaded_namespace
from .run import deliver, seconds
from .session import SESSION
from .sweeps import run_sweep, sweep_arguments, take_sweeps


@magic_arguments()
@argument("--workflow", help="an API-format workflow file the cell's override lines apply to")
@argument("--upload", action="append", default=[],
          help="upload this file first; the cell may use its stored name as {{upload}}")
@argument("--partner-key", choices=("auto", "yes", "no"), default="auto",
          help="send the Comfy API key for Partner (API) nodes: auto (when the workflow has one), yes, no")
@argument("--out", help="store the result (or the job, with --no-wait) under this name")
@argument("--timeout", type=seconds, help="seconds to wait before cancelling the job")
@argument("--no-wait", action="store_true", help="return the job at once; it runs on")
@argument("--no-validate", action="store_true",
          help="send without first checking the workflow against Comfy Cloud's nodes")
@sweep_arguments
def _cloud_args(line: str) -> None: ...


def cloud_request(cell: str, namespace: dict[str, Any], base: Workflow | None) -> tuple[Workflow, Any]:
    """The workflow and extra_data a cell asks for: an API-format workflow, `{"prompt": ...,
    "extra_data": ...}` as Cloud's /api/prompt takes it, or override lines on `base`."""
    kind, data = parse_cell(cell, namespace, base)
    if kind == "json":
        if isinstance(data, dict) and "prompt" in data:
            extra = data.get("extra_data")
            if extra is not None and not isinstance(extra, dict):
                raise ValidationError("extra_data must be an object.")
            if extra and {"api_key_comfy_org", "auth_token_comfy_org"} & extra.keys():
                raise ValidationError("Do not put a key in the cell (it would be saved with the notebook): "
                                      "the Comfy API key is sent for Partner nodes by itself "
                                      "(COMFY_CLOUD_API_KEY; see --partner-key).")
            return Workflow(data["prompt"]), extra or None
        return Workflow(data), None
    if base is None:
        if not data:
            raise ValidationError("The cell is empty: give an API-format workflow, or --workflow FILE.")
        raise ValidationError("Override lines need the workflow they change: add --workflow FILE.")
    return base.override(data), None


def cloud_arguments(magics: Any, args: Any, cell: str | None, client: Any) -> dict[str, Any]:
    """The keyword arguments of `queue` a cell asks for (uploading `--upload` files first)."""
    base = Workflow.load(args.workflow) if args.workflow else None
    workflow, extra = cloud_request(cell or "", uploaded_namespace(magics, client, args.upload), base)
    partner = {"auto": None, "yes": True, "no": False}[args.partner_key]
    return {"workflow": workflow, "partner_key": partner, "extra_data": extra,
            "validate": not args.no_validate}


def cloud(magics: Any, line: str, cell: str | None) -> Any:
    line, sweep = take_sweeps(line)
    args = parse_argstring(_cloud_args, line)
    client = SESSION.cloud
    request = cloud_arguments(magics, args, cell, client)
    if sweep is not None:
        workflow = request.pop("workflow")
        return run_sweep(magics, lambda axes, **how: client.sweep(workflow, axes, **request, **how),
                         sweep, out=args.out)
    return deliver(magics, client.queue(**request), args)
