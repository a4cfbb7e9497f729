"""The subcommand table behind `%runcomfy`: name → the module holding it, usage and one-line help.

`%load_ext` reads only this table; a subcommand's module (and the client stack it needs) is
imported when the subcommand first runs. The function is named as its subcommand.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Handler = Callable[[Any, str, "str | None"], Any]  # fn(magics, line, cell)


@dataclass(frozen=True)
class Subcommand:
    name: str
    module: str  # of this package: `run` is runcomfy_nb.magics.run
    usage: str
    summary: str
    cell: bool = False
    unchanged: str = ""  # a cell magic: what a body of only a comment runs as it is

    def handler(self) -> Handler:
        """The subcommand's function, its module imported on first use."""
        fn: Handler = getattr(importlib.import_module(f".{self.module}", __package__), self.name)
        return fn


SUBCOMMANDS: dict[str, Subcommand] = {c.name: c for c in [
    Subcommand("cloud", "cloud", "cloud [--workflow FILE] [--upload PATH] [--partner-key auto|yes|no] "
               "[--sweep KEY=VALUES] [--out NAME]", "Run the cell (API or UI workflow, or override lines on "
               "--workflow) on Comfy Cloud, checked first; live nodes and previews; --sweep: a grid.",
               cell=True, unchanged="the --workflow FILE"),
    Subcommand("config", "core", "config [KEY=VALUE ...]",
               "Show the settings (secrets masked), or set some for this kernel: output_dir, timeout, ..."),
    Subcommand("login", "core", "login [--user-id ID] [--cloud] [--forget]",
               "Type your RunComfy token (or --cloud: Comfy Cloud key) unechoed; kept for this kernel only."),
    Subcommand("emulate", "core", "emulate [--speed X] [--keep] [--stop]",
               "Start the local emulator of the RunComfy APIs and point runcomfy_nb at it; --keep: in its "
               "own process, which outlives the kernel."),
    Subcommand("jobs", "jobs", "jobs [--all] [--since 1d] [--kind serverless|comfyui|model|cloud] "
               "[--status S] [--out NAME]", "List the journaled jobs of every kernel, newest first: status, "
               "time, outputs, and which are unknown, unfollowed or gone."),
    Subcommand("attach", "jobs", "attach ID [--out NAME] [--timeout S] [--no-wait]",
               "Follow a journaled job again (its id or the start of it), also after a kernel restart."),
    Subcommand("workflows", "machines", "workflows",
               "List your cloud-saved workflows and their version ids."),
    Subcommand("machines", "machines", "machines",
               "Your machines: status, uptime, estimated cost, time left, Stop / Extend buttons."),
    Subcommand("launch", "machines",
               "launch VERSION_ID [--type large] [--duration 1h] [--wait] [--keep] [--out NAME]",
               "Launch a GPU machine (it bills from Ready until stopped)."),
    Subcommand("extend", "machines", "extend ID DURATION", "Give a machine more running time (e.g. 30m)."),
    Subcommand("stop", "machines", "stop ID | --all",
               "Stop a machine (billing ends), or every one launched here."),
    Subcommand("connect", "machines", "connect ID | URL",
               "Run `%%runcomfy prompt` on this machine (id) or any ComfyUI server (URL)."),
    Subcommand("model", "models", "model MODEL_ID key=value ... [--out NAME] [--timeout S] [--no-wait]",
               "Run a Model API (Playground) model with these inputs; show progress and outputs."),
    Subcommand("models", "models", "models [SEARCH] [--category C] [--kind K] [--limit N] [--out NAME]",
               "List the Model API's catalog: model ids, categories and prices."),
    Subcommand("prompt", "prompt",
               "prompt [--machine ID | --url URL] [--workflow FILE] [--upload PATH] [--sweep KEY=VALUES] "
               "[--out NAME]", "Queue the cell (API or UI workflow, or override lines on --workflow) on "
               "ComfyUI, checked first; live nodes and previews; --sweep: a grid.", cell=True,
               unchanged="the --workflow FILE"),
    Subcommand("run", "run", "run DEPLOYMENT_ID [--sweep KEY=VALUES] [--out NAME] [--timeout S] [--no-wait]",
               "Submit the cell (JSON body or `Node.input = value` lines, by id or title), checked first, "
               "to a serverless deployment; show progress and outputs; --sweep: a grid.", cell=True,
               unchanged="the deployment's saved workflow"),
]}


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
