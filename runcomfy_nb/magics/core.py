"""`%runcomfy config`, `%runcomfy login` and `%runcomfy emulate`."""

from __future__ import annotations

import getpass
import html
import os
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from ..config import ENV_NAMES, SECRETS, SETTINGS, Config, Secret, parse_setting
from ..errors import ConfigError
from ..workflow import did_you_mean
from .session import SESSION


def table_text(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """Rows as aligned text, for terminals and the text/plain of a table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def table_html(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Table(list[Any]):
    """A list (of jobs, models, ...) that a notebook shows as a table: `HEADER` and `row(n, item)`."""

    HEADER: tuple[str, ...] = ()

    def row(self, n: int, item: Any) -> tuple[str, ...]:
        raise NotImplementedError

    def rows(self) -> list[tuple[str, ...]]:
        return [self.row(n, item) for n, item in enumerate(self)]

    def __repr__(self) -> str:
        return table_text(self.rows(), self.HEADER)

    def _repr_html_(self) -> str:
        return table_html(self.rows(), self.HEADER)


def show_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    """A table: HTML in notebooks, aligned text in terminals."""
    display({"text/plain": table_text(rows, header), "text/html": table_html(rows, header)}, raw=True)


SETTABLE = tuple(name for name in ENV_NAMES if name not in SECRETS)


def _setting(word: str) -> tuple[str, Any]:
    """One `KEY=VALUE` of `%runcomfy config`: the setting and its value (None: back to the env)."""
    key, sep, text = word.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"Write settings as KEY=VALUE, e.g. `%runcomfy config output_dir=renders`, not "
                         f"{word!r} (KEY= goes back to the environment's value).")
    if key in SECRETS or any(w in key.lower() for w in ("token", "key", "secret", "password")):
        cloud = "comfy" in key.lower() or "cloud" in key.lower()
        how = "%runcomfy login --cloud" if cloud else "%runcomfy login"
        raise ConfigError(f"{key} is a secret: typed in a cell it is saved with the notebook, so it was not "
                          f"taken. Use `{how}` (it asks without echo and keeps it for this kernel only).")
    if key not in SETTABLE:
        raise ConfigError(f"Unknown setting {key!r}.{did_you_mean(key, SETTABLE)} "
                          f"Settings: {', '.join(SETTABLE)}.")
    return key, parse_setting(key, text) if text.strip() else None


def config(magics: Any, line: str, cell: str | None) -> None:
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"Could not read the settings: {exc}.") from None
    if not words:
        rows: list[tuple[str, ...]] = list(SESSION.config.masked().items())
        rows.append(("emulator", "running (local)" if SESSION.emulator else "off"))
        show_table(rows, ("setting", "value"))
        return
    changes = dict(_setting(word) for word in words)
    Config.from_env(**{k: v for k, v in changes.items() if v is not None})  # refuses a bad value now
    for key, value in changes.items():
        if value is None:
            SETTINGS.pop(key, None)
            print(f"{key}: back to {ENV_NAMES[key][0]} (or the default): {getattr(SESSION.config, key)}")
        else:
            SETTINGS[key] = value
            print(f"{key} = {value} for this kernel (it wins over {ENV_NAMES[key][0]}).")


@magic_arguments()
@argument("--user-id", help="your RunComfy user id (the UUID in your dashboard URL); asked when not given")
@argument("--cloud", action="store_true", help="ask for the Comfy Cloud API key instead of the token")
@argument("--forget", action="store_true", help="drop what login kept; the environment applies again")
def _login_args(line: str) -> None: ...


def login(magics: Any, line: str, cell: str | None) -> None:
    args = parse_argstring(_login_args, line)
    key, what, env = (("comfy_api_key", "Comfy Cloud API key", "COMFY_CLOUD_API_KEY") if args.cloud
                      else ("token", "RunComfy API token", "RUNCOMFY_TOKEN"))
    if args.forget:
        SETTINGS.pop(key, None)
        print(f"Forgot the {what} typed here; {env} applies again (if it is set).")
        return
    typed = getpass.getpass(f"{what} (not echoed, not saved in the notebook): ").strip()
    if not typed:
        print(f"Nothing typed: nothing changed (the {what} is {SESSION.config.masked()[key]}).")
        return
    user_id = args.user_id
    if not args.cloud and user_id is None:
        user_id = input("RunComfy user id (the UUID in your dashboard URL; Enter to skip): ").strip()
    SETTINGS[key] = Secret(typed)
    if user_id:
        SETTINGS["user_id"] = user_id.strip()
    print(f"The {what} is kept for this kernel only (not in the notebook, not in the environment) and "
          f"wins over {env}{'; user id set' if user_id else ''}. `%runcomfy login "
          f"{'--cloud ' if args.cloud else ''}--forget` drops it.")


@magic_arguments()
@argument("--speed", type=float, default=None,
          help="virtual seconds per real second (default 1: realistic run times)")
@argument("--keep", action="store_true",
          help="run it in a process of its own that outlives the kernel; a later kernel's `--keep` finds it")
@argument("--stop", action="store_true",
          help="stop the emulator and restore the settings (with --keep: the kept one too, if not used here)")
def _emulate_args(line: str) -> None: ...


def _point_at(emulator: Any) -> None:
    """Point the config at `emulator` (in-kernel or kept): token and key go to settings, never out."""
    SESSION.emulator = emulator
    SESSION.point_at({
        "token": emulator.token, "base_url": emulator.url, "model_api_url": emulator.url,
        "comfy_cloud_url": emulator.cloud_url, "comfy_api_key": emulator.comfy_api_key,
        "user_id": emulator.user_id,
    })


def _stop_kept_elsewhere() -> str | None:
    """Stop the kept emulator this kernel does not use, if one runs: what was stopped."""
    from ..emulator import process

    kept = process.find()[0]
    if kept is None:
        return None
    kept.stop()  # returns once its process has ended
    return f"The kept emulator (pid {kept.pid}) stopped: its process has ended."


def _stop(keep: bool) -> None:
    from ..emulator import process

    current = SESSION.emulator
    if current is None:
        kept = process.find()[0]
        if kept is not None and not keep:
            print(f"No emulator is used in this kernel; a kept one runs at {kept.url} (pid {kept.pid}): "
                  "`%runcomfy emulate --keep --stop` stops it.")
        else:
            print(_stop_kept_elsewhere() or "The emulator is not running.")
        return
    current.stop()  # a kept one's stop() returns once its process has ended
    SESSION.emulator = None
    SESSION.give_back()
    what = (f"Kept emulator stopped (pid {current.pid}: its process has ended)"
            if isinstance(current, process.KeptEmulator) else "Emulator stopped")
    print(f"{what}; runcomfy_nb talks to {SESSION.config.base_url} again, with the settings it had before "
          "(any you changed meanwhile kept).")
    if keep and not isinstance(current, process.KeptEmulator) and (said := _stop_kept_elsewhere()):
        print(said)


def _keep(speed: float | None) -> str:
    """Find the kept emulator or start one; point the config at it; what to say about it."""
    from ..emulator import process

    if SESSION.emulator is not None and not isinstance(SESSION.emulator, process.KeptEmulator):
        SESSION.emulator.stop()  # this kernel's own thread: the kept one replaces it
    token = os.environ.get("RUNCOMFY_EMULATOR_TOKEN")
    kept, started, ended = process.find_or_start(speed or 1.0, token=token)
    _point_at(kept)
    if started:
        how = f"started it in a process of its own (pid {kept.pid}) that outlives this kernel"
        if ended:
            how += f"; the kept emulator before it (pid {ended.pid}) had ended, and the jobs it held with it"
    else:
        how = f"found it still running from before (pid {kept.pid})"
        if speed is not None and speed != kept.speed:
            how += (f"; it runs at speed ×{kept.speed:g}, not the ×{speed:g} asked (`%runcomfy emulate "
                    "--stop`, then `--keep --speed`, to change it; its jobs end with it)")
    return (f"EMULATOR ON (kept): runcomfy_nb now talks to a local emulator at {kept.url} (speed "
            f"×{kept.speed:g}), not the RunComfy cloud, the Model API or Comfy Cloud; {how}. Deployments: "
            f"{', '.join(kept.deployments)}; models: {kept.models}. `%runcomfy emulate --stop` stops it "
            "and switches back.")


def _in_kernel(speed: float | None) -> str:
    """Start an emulator in this kernel's thread; point the config at it; what to say about it."""
    from ..emulator import Emulator, process

    note = ""
    if isinstance(SESSION.emulator, process.KeptEmulator):
        note = (f" The kept emulator at {SESSION.emulator.url} keeps running (`%runcomfy emulate --keep "
                "--stop` stops it).")
    elif SESSION.emulator is not None:
        SESSION.emulator.stop()
    emulator = Emulator(speed=speed or 1.0, token=os.environ.get("RUNCOMFY_EMULATOR_TOKEN"))
    emulator.start()
    _point_at(emulator)
    return (f"EMULATOR ON: runcomfy_nb now talks to a local emulator at {emulator.url} (speed "
            f"×{emulator.speed:g}), not the RunComfy cloud, the Model API or Comfy Cloud. Deployments: "
            f"{', '.join(emulator.deployment_ids())}; models: {len(emulator.model_ids())}; Comfy Cloud with "
            f"its own key. `%runcomfy emulate --stop` to switch back.{note}")


def emulate(magics: Any, line: str, cell: str | None) -> None:
    args = parse_argstring(_emulate_args, line)
    if args.stop:
        _stop(args.keep)
        return
    if args.speed is not None and args.speed <= 0:
        raise ValueError("--speed must be a positive number.")
    print(_keep(args.speed) if args.keep else _in_kernel(args.speed))
