"""Time as the APIs write it (ISO 8601 with or without offset, 0–6 fractional digits) and as we
show it (durations)."""

from __future__ import annotations

import re
from datetime import datetime

_ISO = re.compile(r"(?P<main>[\d-]+[T ][\d:]+)(?:\.(?P<frac>\d+))?(?P<tz>Z|[+-]\d\d:?\d\d)?$")


def parse_timestamp(text: object) -> float | None:
    """Epoch seconds, or None when absent or unreadable; no offset means UTC."""
    if not isinstance(text, str):
        return None
    match = _ISO.match(text.strip())
    if not match:
        return None
    frac = (match["frac"] or "0")[:6].ljust(6, "0")
    tz = match["tz"] or "+00:00"
    tz = "+00:00" if tz == "Z" else tz if ":" in tz else f"{tz[:3]}:{tz[3:]}"
    try:
        return datetime.fromisoformat(f"{match['main']}.{frac}{tz}").timestamp()
    except ValueError:
        return None


def format_duration(seconds: float, *, whole: bool = False) -> str:
    """4.2 s · 2 min 05 s · 1 h 02 min (`whole`: 4 s, for clocks that tick once a second)"""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)} s" if whole else f"{seconds:.1f} s"
    total = int(seconds)
    if total < 3600:
        return f"{total // 60} min {total % 60:02d} s"
    return f"{total // 3600} h {total % 3600 // 60:02d} min"
