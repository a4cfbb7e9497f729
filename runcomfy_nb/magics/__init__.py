"""IPython magics: `%runcomfy SUBCOMMAND ...` and `%%runcomfy SUBCOMMAND ...`.

Each subcommand lives in a module of this package, listed in `registry.SUBCOMMANDS` and imported
when it first runs, so `%load_ext` stays light. Magics parse arguments and call the blocking
facade; they hold no protocol logic. Every
runcomfy_nb error reaches the user as one line (`UsageError`), never a traceback.
"""

from __future__ import annotations

import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from traitlets import Bool, Float, Unicode, observe

from ..config import SETTINGS
from ..errors import RunComfyError
from .registry import SUBCOMMANDS, help_text

_loaded: dict[int, RunComfyMagics] = {}


@magics_class
class RunComfyMagics(Magics):
    """The `%runcomfy` magics; settings via `%config RunComfyMagics.<name> = value`."""

    auto_cancel = Bool(
        True, config=True,
        help="Ctrl-C while a cell waits for a job cancels the remote job (False: it runs on).",
    ).tag(config=True)
    timeout = Float(900.0, config=True, help="Default seconds a cell waits for a job.").tag(
        config=True
    )
    output_dir = Unicode(
        "", help="Default folder of every save and of auto_save ('': RUNCOMFY_OUTPUT_DIR, else outputs).",
    ).tag(config=True)
    auto_save = Bool(
        False, help="Save every job's outputs into output_dir as it finishes (also RUNCOMFY_AUTO_SAVE=1).",
    ).tag(config=True)

    @observe("output_dir", "auto_save")
    def _into_settings(self, change: Any) -> None:
        # the setting lives in config.SETTINGS, where every save (and `rc.RunComfy()`) reads it
        if change["name"] == "output_dir" and not change["new"]:
            SETTINGS.pop("output_dir", None)
        else:
            SETTINGS[change["name"]] = change["new"]

    @line_cell_magic
    def runcomfy(self, line: str, cell: str | None = None) -> Any:
        """Drive RunComfy from a notebook; `%runcomfy --help` lists the subcommands."""
        words = line.strip().split(maxsplit=1)
        name = words[0] if words else ""
        rest = words[1] if len(words) > 1 else ""
        if name in ("", "help", "-h", "--help"):
            print(help_text())
            return None
        command = SUBCOMMANDS.get(name)
        if command is None:
            raise UsageError(f"Unknown subcommand {name!r}. {help_text(short=True)}")
        if command.cell and cell is None:
            raise UsageError(f"%%runcomfy {name} is a cell magic: put it on the first line of a "
                             "cell and the body below it. IPython refuses an empty body: to run "
                             f"{command.unchanged} unchanged, make the body a comment (# as saved).")
        try:
            return command.handler()(self, rest, cell)
        except RunComfyError as exc:
            raise UsageError(str(exc)) from None
        except ValueError as exc:  # e.g. shlex on an unclosed quote
            raise UsageError(str(exc)) from None


def split_args(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"Could not read the arguments: {exc}.") from None


def load(ipython: Any) -> None:
    magics = RunComfyMagics(shell=ipython)
    ipython.register_magics(magics)
    _loaded[id(ipython)] = magics


def unload(ipython: Any) -> None:
    _loaded.pop(id(ipython), None)
