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
@argument("--speed", type=float, default=1.0,
          help="virtual seconds per real second (1 = realistic run times)")
@argument("--stop", action="store_true", help="stop the emulator and restore the settings")
def _emulate_args(line: str) -> None: ...


def emulate(magics: Any, line: str, cell: str | None) -> None:
    args = parse_argstring(_emulate_args, line)
    if args.stop:
        if SESSION.emulator is None:
            print("The emulator is not running.")
            return
        SESSION.emulator.stop()
        SESSION.emulator = None
        SESSION.give_back()
        base = SESSION.config.base_url
        print(f"Emulator stopped; runcomfy_nb talks to {base} again, with the settings it had before "
              "(any you changed meanwhile kept).")
        return
    if args.speed <= 0:
        raise ValueError("--speed must be a positive number.")
    from ..emulator import Emulator

    if SESSION.emulator is not None:
        SESSION.emulator.stop()
    emulator = Emulator(speed=args.speed, token=os.environ.get("RUNCOMFY_EMULATOR_TOKEN"))
    url = emulator.start()
    SESSION.emulator = emulator
    SESSION.point_at({
        "token": emulator.token, "base_url": url, "model_api_url": url,
        "comfy_cloud_url": emulator.cloud_url, "comfy_api_key": emulator.comfy_api_key,
        "user_id": emulator.user_id,
    })
    ids = ", ".join(emulator.deployment_ids())
    print(f"EMULATOR ON: runcomfy_nb now talks to a local emulator at {url} (speed ×{args.speed:g}),"
          f" not the RunComfy cloud, the Model API or Comfy Cloud. Deployments: {ids}; models: "
          f"{len(emulator.model_ids())}; Comfy Cloud with its own key. "
          "`%runcomfy emulate --stop` to switch back.")
