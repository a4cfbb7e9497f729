"""The subcommand table behind `%runcomfy`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Subcommand:
    name: str
    usage: str
    summary: str
    cell: bool
    fn: Callable[[Any, str, str | None], Any]


SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(name: str, usage: str, summary: str, *, cell: bool = False) -> Callable[..., Any]:
    """Register `fn(magics, line, cell)` as `%runcomfy NAME`."""

    def register(fn: Callable[[Any, str, str | None], Any]) -> Callable[[Any, str, str | None], Any]:
        SUBCOMMANDS[name] = Subcommand(name, usage, summary, cell, fn)
        return fn

    return register


def help_text(short: bool = False) -> str:
    if short:
        return "Subcommands: " + ", ".join(sorted(SUBCOMMANDS)) + " (see %runcomfy --help)."
    width = max(len(c.usage) for c in SUBCOMMANDS.values())
    lines = ["Usage: %runcomfy SUBCOMMAND [options]   (%%runcomfy for the cell forms)", ""]
    for command in sorted(SUBCOMMANDS.values(), key=lambda c: c.name):
        prefix = "%%" if command.cell else "%"
        lines.append(f"  {prefix}runcomfy {command.usage.ljust(width)}  {command.summary}")
    lines += ["", "Settings: %runcomfy config KEY=VALUE (output_dir, auto_save, base_url, timeout, ...); "
              "%config RunComfyMagics (auto_cancel, timeout, output_dir, auto_save)."]
    return "\n".join(lines)
