"""`%runcomfy config` and `%runcomfy emulate`."""

from __future__ import annotations

import html
import os
from typing import Any

from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from .registry import subcommand
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


@subcommand("config", "config", "Show the current settings, secrets masked.")
def config(magics: Any, line: str, cell: str | None) -> None:
    rows = list(SESSION.config.masked().items())
    rows.append(("emulator", "running (local)" if SESSION.emulator else "off"))
    show_table(rows, ("setting", "value"))


@magic_arguments()
@argument("--speed", type=float, default=1.0,
          help="virtual seconds per real second (1 = realistic run times)")
@argument("--stop", action="store_true", help="stop the emulator and restore the settings")
def _emulate_args(line: str) -> None: ...


@subcommand("emulate", "emulate [--speed X] [--stop]",
            "Start the local emulator of the RunComfy APIs and point runcomfy_nb at it.")
def emulate(magics: Any, line: str, cell: str | None) -> None:
    args = parse_argstring(_emulate_args, line)
    if args.stop:
        if SESSION.emulator is None:
            print("The emulator is not running.")
            return
        SESSION.emulator.stop()
        SESSION.emulator = None
        SESSION.restore_env()
        SESSION.use(SESSION.config.from_env())
        print("Emulator stopped; runcomfy_nb talks to the RunComfy cloud again.")
        return
    if args.speed <= 0:
        raise ValueError("--speed must be a positive number.")
    from ..emulator import Emulator

    if SESSION.emulator is not None:
        SESSION.emulator.stop()
    emulator = Emulator(speed=args.speed, token=os.environ.get("RUNCOMFY_EMULATOR_TOKEN"))
    url = emulator.start()
    SESSION.emulator = emulator
    SESSION.point_env_at({
        "RUNCOMFY_TOKEN": emulator.token, "RUNCOMFY_BASE_URL": url,
        "RUNCOMFY_MODEL_API_URL": url, "COMFY_CLOUD_URL": emulator.cloud_url,
        "COMFY_CLOUD_API_KEY": emulator.comfy_api_key,
        "RUNCOMFY_USER_ID": emulator.user_id,
    })
    SESSION.use(SESSION.config.from_env())
    ids = ", ".join(emulator.deployment_ids())
    print(f"EMULATOR ON: runcomfy_nb now talks to a local emulator at {url} (speed ×{args.speed:g}),"
          f" not the RunComfy cloud, the Model API or Comfy Cloud. Deployments: {ids}; models: "
          f"{len(emulator.model_ids())}; Comfy Cloud with its own key. "
          "`%runcomfy emulate --stop` to switch back.")
