"""`--sweep` in the run magics: `take_sweeps` takes the sweep options out of a magic's line, and
`run_sweep` starts the sweep, shows its view, waits (Ctrl-C cancels the whole sweep unless
auto_cancel is off) and stores it under `--out`.

`--sweep seed=1,2,3,4 --sweep "Positive Prompt.text"="a, b","c" --zip --concurrency 4`: a key is
NODE.input or an input name; values are separated by commas outside quotes and brackets; a quoted
value is a string (commas and all), `1..8` an inclusive range of integers, else an int, a float,
JSON (`true`, `null`, `[1, 2]`) or the text as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from IPython.core.magic_arguments import argument
from IPython.display import display

from .. import sync
from ..errors import ValidationError

_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")
_FLAG = re.compile(r"(?:^|\s)--(sweep|zip|concurrency)(?=\s|=|$)")
MAX_RANGE = 100_000


@dataclass
class SweepOptions:
    """What `--sweep`, `--zip` and `--concurrency` said."""

    axes: dict[str, list[Any]] = field(default_factory=dict)
    zip: bool = False
    concurrency: int | None = None


def _word(line: str, start: int) -> tuple[str, int]:
    """The word at `start` (quotes kept, whitespace inside quotes too) and where it ends."""
    i, quote = start, ""
    while i < len(line) and (quote or not line[i].isspace()):
        char = line[i]
        if quote and char == "\\" and i + 1 < len(line):
            i += 2
            continue
        if char in "\"'" and not quote:
            quote = char
        elif char == quote:
            quote = ""
        i += 1
    if quote:
        raise ValidationError(f"--sweep: a quote is not closed in {line[start:]!r}.")
    return line[start:i], i


def _split(text: str, separator: str, limit: int = -1) -> list[str]:
    """`text` split at `separator` outside quotes and brackets (at most `limit` splits)."""
    parts, depth, quote, begin, i = [], 0, "", 0, 0
    while i < len(text):
        char = text[i]
        if quote:
            i += 2 if char == "\\" else 1
            quote = "" if char == quote else quote
            continue
        if char in "\"'":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == separator and depth == 0 and limit != 0:
            parts.append(text[begin:i])
            begin, limit = i + 1, limit - 1
        i += 1
    return [*parts, text[begin:]]


def _unquote(text: str) -> str | None:
    """A quoted string's text (JSON escapes for double quotes), else None."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        inner = text[1:-1]
        if text[0] == '"':
            try:
                return str(json.loads(text))
            except ValueError:
                return inner
        return inner.replace("\\'", "'")
    return None


def parse_value(text: str) -> list[Any]:
    """One comma-separated item: a quoted string, a range `a..b` (several values), an int, a
    float, JSON, or the bare text."""
    text = text.strip()
    quoted = _unquote(text)
    if quoted is not None:
        return [quoted]
    span = _RANGE.fullmatch(text)
    if span:
        first, last = int(span[1]), int(span[2])
        step = 1 if last >= first else -1
        if abs(last - first) >= MAX_RANGE:
            raise ValidationError(f"--sweep: the range {text} has more than {MAX_RANGE:,} values.")
        return list(range(first, last + step, step))
    for read in (int, float, json.loads):
        try:
            return [read(text)]
        except ValueError:
            continue
    return [text]


def parse_sweep(spec: str) -> tuple[str, list[Any]]:
    """`KEY=v1,v2,...` as (key, values)."""
    pieces = _split(spec, "=", 1)
    if len(pieces) != 2 or not pieces[0].strip() or not pieces[1].strip():
        raise ValidationError(f"--sweep {spec!r}: write KEY=VALUE,VALUE,..., e.g. --sweep seed=1,2,3.")
    key = _unquote(pieces[0].strip())
    values = [v for item in _split(pieces[1], ",") if item.strip() for v in parse_value(item)]
    if not values:
        raise ValidationError(f"--sweep {spec!r} gives no values.")
    return key if key is not None else pieces[0].strip(), values


def _concurrency(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValidationError(f"--concurrency must be a whole number of jobs, at least 1, not {text!r}.")
    return int(text)


def take_sweeps(line: str) -> tuple[str, SweepOptions | None]:
    """The magic's line without its sweep options, and those options (None when it has no
    `--sweep`). `--zip` or `--concurrency` without a `--sweep` is an error."""
    options, kept, at = SweepOptions(), [], 0
    while (found := _FLAG.search(line, at)) is not None:
        kept.append(line[at:found.start(1) - 2])
        flag, at = found[1], found.end()
        if flag == "zip":
            options.zip = True
            continue
        at += 1 if line[at:at + 1] == "=" else 0
        while at < len(line) and line[at].isspace():
            at += 1
        word, at = _word(line, at)
        if not word:
            raise ValidationError(f"--{flag} needs a value.")
        if flag == "concurrency":
            options.concurrency = _concurrency(word)
        else:
            key, values = parse_sweep(word)
            if key in options.axes:
                raise ValidationError(f"--sweep {key} is given twice.")
            options.axes[key] = values
    kept.append(line[at:])
    rest = " ".join(part.strip() for part in kept if part.strip())
    if not options.axes:
        if options.zip or options.concurrency is not None:
            raise ValidationError("--zip and --concurrency go with --sweep KEY=VALUES.")
        return line, None
    return rest, options


Start = Callable[..., Any]  # (axes, zip=, concurrency=) -> the (blocking) Sweep


def sweep_arguments(func: Callable[..., Any]) -> Callable[..., Any]:
    """The sweep options, for a run magic's help (`take_sweeps` takes them out of the line first)."""
    for add in (argument("--concurrency", metavar="N", help="at most N jobs at once (default: what the "
                         "target runs: a deployment's instances, one machine's queue, Cloud's tier)"),
                argument("--zip", action="store_true", help="pair the sweeps' n-th values instead of "
                         "running every combination"),
                argument("--sweep", action="append", metavar="KEY=VALUES",
                         help='run once per value, e.g. --sweep seed=1,2,3 --sweep "Positive Prompt.text"='
                              '"a","b" (KEY: NODE.input, or an input one node has); one grid of results')):
        func = add(func)
    return func


def run_sweep(magics: Any, start: Start, options: SweepOptions, *, out: str | None = None) -> Any:
    """Start the sweep (`start(axes, zip=..., concurrency=...)`, a blocking client's `sweep`), show
    its view and wait for every job. Ctrl-C cancels the whole sweep (pending and running jobs)
    unless auto_cancel is off. The sweep is stored under `out`; returns None (the view shows it)."""
    from ..widgets import SweepView

    sweep = start(options.axes, zip=options.zip, concurrency=options.concurrency)
    if out:
        magics.shell.user_ns[out] = sweep
    try:
        display(sync.on_loop(SweepView, sweep))  # made on the sweep's loop, where its changes arrive
        sweep.result(cancel_on_interrupt=magics.auto_cancel)
    except KeyboardInterrupt:
        print(interrupted(magics, sweep))
    return None


def interrupted(magics: Any, sweep: Any) -> str:
    """What came of a Ctrl-C during a sweep (`Sweep.result` has cancelled it, unless auto_cancel
    is off), as the servers last told it."""
    if not magics.auto_cancel:
        return "Interrupted: the sweep runs on (auto_cancel is off); its view above keeps updating."
    counts = ", ".join(f"{n} {state}" for state, n in sweep.counts.items() if n)
    if sweep.done:
        return f"Interrupted: the sweep was cancelled ({counts})."
    return (f"Interrupted: the sweep is being cancelled ({counts}); jobs still shown running may "
            "still be running there (see `%runcomfy jobs`).")


__all__ = ["SweepOptions", "parse_sweep", "run_sweep", "take_sweeps"]
