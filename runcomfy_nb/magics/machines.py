"""`%runcomfy workflows | machines | launch | extend | stop | connect`: dedicated GPU machines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .. import sync
from ..errors import ValidationError
from .core import show_table
from .session import SESSION

if TYPE_CHECKING:
    from ..facade import Machines


def _machines() -> Machines:
    return SESSION.client.machines


def _resolve(ref: str) -> str:
    """The full id of the account's machine named by an id or its first characters."""
    return _machines().resolve(ref)


def workflows(magics: Any, line: str, cell: str | None) -> None:
    items = _machines().workflows()
    show_table([(w.name, w.version_id, w.updated_at) for w in items],
               ("workflow", "version_id (for launch)", "updated"))


def machines(magics: Any, line: str, cell: str | None) -> Any:
    from ..widgets import MachinePanel

    client = _machines()
    listed = client.list()
    return sync.on_loop(MachinePanel, client, include=listed)  # made where the machines' client lives


@magic_arguments()
@argument("version_id", help="the workflow version id (see %runcomfy workflows)")
@argument("--type", default="large", help="medium | large | extra-large | 2x-large | 2xl-turbo")
@argument("--duration", default="1h", help="how long it may run once Ready: 3600, 90m, 2h")
@argument("--wait", action="store_true", help="wait until it is Ready and connect to it")
@argument("--keep", action="store_true", help="leave it running when the kernel exits")
@argument("--out", help="store the machine under this name")
def _launch_args(line: str) -> None: ...


def launch(magics: Any, line: str, cell: str | None) -> Any:
    args = parse_argstring(_launch_args, line)
    machine = _machines().launch(args.version_id, server_type=args.type, duration=args.duration,
                                 keep=args.keep)
    if args.out:
        magics.shell.user_ns[args.out] = machine
    if args.wait:
        machine.wait_ready()
        SESSION.comfy_target = machine.id
        print(f"Machine {machine.id[:8]} is ready; `%%runcomfy prompt` now runs on it.")
    return machine


def extend(magics: Any, line: str, cell: str | None) -> None:
    words = line.split()
    if len(words) != 2:
        raise ValidationError("Usage: %runcomfy extend SERVER_ID 30m")
    info = _machines().extend(words[0], words[1])
    total = info.estimated_duration  # absent when the server's reply leaves it out
    said = f"was given {words[1]} more" if total is None else f"now runs {total / 3600:.2f} h in all"
    print(f"Machine {info.server_id[:8]} {said}.")


def stop(magics: Any, line: str, cell: str | None) -> None:
    target = line.strip()
    if not target:
        raise ValidationError("Usage: %runcomfy stop SERVER_ID, or %runcomfy stop --all")
    if target == "--all":
        stopped = _machines().stop_all(include_kept=True)
        print(f"Stopped {len(stopped)} machine(s): the server confirmed each; billing has ended."
              if stopped else "No machine launched by this kernel is running.")
        return
    print(stopped_text(_machines().stop(target)))


def stopped_text(info: Any) -> str:
    """What a confirmed stop (`Machines.stop` returned) tells the user."""
    if info.state == "stopping":
        return f"Machine {info.server_id[:8]} is stopping (server: {info.raw_status}); billing has ended."
    return f"Machine {info.server_id[:8]} is stopped (the server no longer has it); billing has ended."


def connect(magics: Any, line: str, cell: str | None) -> None:
    target = line.strip()
    if not target:
        raise ValidationError("Usage: %runcomfy connect SERVER_ID or %runcomfy connect http://host:8188")
    if target.startswith(("http://", "https://")):
        SESSION.comfy_target = target
        print("ComfyUI target set (its URL is kept out of cell output).")
        return
    server_id = _resolve(target)
    info = _machines().status(server_id)
    if info.state != "ready":
        raise ValidationError(f"Machine {server_id[:8]} is {info.state}, not ready.")
    SESSION.comfy_target = server_id
    print(f"ComfyUI target: machine {server_id[:8]}.")
