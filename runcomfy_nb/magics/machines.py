"""`%runcomfy workflows | machines | launch | extend | stop | connect`: dedicated GPU machines."""

from __future__ import annotations

import atexit
from typing import Any

from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .. import sync
from ..errors import ValidationError
from .core import show_table
from .registry import subcommand
from .session import SESSION


def _machines() -> Any:
    return SESSION.client.machines


def _resolve(short: str) -> str:
    return sync.call(lambda: sync.unwrap(_machines()).find(short))


@subcommand("workflows", "workflows", "List your cloud-saved workflows and their version ids.")
def workflows(magics: Any, line: str, cell: str | None) -> None:
    items = _machines().workflows()
    show_table([(w.name, w.version_id, w.updated_at) for w in items],
               ("workflow", "version_id (for launch)", "updated"))


@subcommand("machines", "machines",
            "Your machines: status, uptime, estimated cost, time left, Stop / Extend buttons.")
def machines(magics: Any, line: str, cell: str | None) -> Any:
    from ..widgets import MachinePanel

    client = _machines()
    listed = client.list()
    return sync.call(lambda: MachinePanel(client, include=listed))


@magic_arguments()
@argument("version_id", help="the workflow version id (see %runcomfy workflows)")
@argument("--type", default="large", help="medium | large | extra-large | 2x-large | 2xl-turbo")
@argument("--duration", default="1h", help="how long it may run once Ready: 3600, 90m, 2h")
@argument("--wait", action="store_true", help="wait until it is Ready and connect to it")
@argument("--keep", action="store_true", help="leave it running when the kernel exits")
@argument("--out", help="store the machine under this name")
def _launch_args(line: str) -> None: ...


@subcommand("launch", "launch VERSION_ID [--type large] [--duration 1h] [--wait] [--keep] [--out NAME]",
            "Launch a GPU machine (it bills from Ready until stopped).")
def launch(magics: Any, line: str, cell: str | None) -> Any:
    args = parse_argstring(_launch_args, line)
    machine = _machines().launch(args.version_id, server_type=args.type, duration=args.duration)
    machine.keep = args.keep
    _stop_at_exit()
    if args.out:
        magics.shell.user_ns[args.out] = machine
    if args.wait:
        machine.wait_ready()
        SESSION.comfy_target = machine.id
        print(f"Machine {machine.id[:8]} is ready; `%%runcomfy prompt` now runs on it.")
    return machine


@subcommand("extend", "extend ID DURATION", "Give a machine more running time (e.g. 30m).")
def extend(magics: Any, line: str, cell: str | None) -> None:
    words = line.split()
    if len(words) != 2:
        raise ValidationError("Usage: %runcomfy extend SERVER_ID 30m")
    info = _machines().extend(_resolve(words[0]), words[1])
    print(f"Machine {info.server_id[:8]} now runs {info.estimated_duration / 3600:.2f} h in all.")


@subcommand("stop", "stop ID | --all", "Stop a machine (billing ends), or every one launched here.")
def stop(magics: Any, line: str, cell: str | None) -> None:
    target = line.strip()
    if not target:
        raise ValidationError("Usage: %runcomfy stop SERVER_ID, or %runcomfy stop --all")
    if target == "--all":
        stopped = _machines().stop_all(include_kept=True)
        print(f"Stopped {len(stopped)} machine(s)." if stopped else "No machine of this kernel is running.")
        return
    info = _machines().stop(_resolve(target))
    print(f"Machine {info.server_id[:8]} is {info.state}; billing has ended.")


def _stop_at_exit() -> None:
    """Once per kernel: at exit, stop the machines launched here that were not marked keep."""
    if SESSION.exit_hook:
        return
    SESSION.exit_hook = True
    atexit.register(stop_launched_machines)


def stop_launched_machines() -> None:
    client = SESSION._client  # only a client that exists can have launched machines
    if client is None:
        return
    try:
        stopped = client.machines.stop_all()
    except Exception as exc:  # at exit, say it rather than raise
        print(f"runcomfy_nb: could not stop the machines launched here ({exc}); "
              "check `%runcomfy machines` in a new kernel.")
        return
    if stopped:
        print(f"runcomfy_nb: stopped {len(stopped)} machine(s) launched by this kernel.")


@subcommand("connect", "connect ID | URL",
            "Run `%%runcomfy prompt` on this machine (id) or any ComfyUI server (URL).")
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
