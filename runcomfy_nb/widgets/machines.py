"""`MachinePanel`: the dedicated machines launched from this kernel — state, uptime, estimated
cost, time left — with Stop and "Extend +30 min" buttons that act on the real machines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import weakref
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import anywidget
import traitlets as t

from ..loops import behind, call, home, soon
from ..timefmt import format_duration
from .assets import css, esm
from .fallback import FONT, Snapshots, error_text, esc
from .throttle import Throttle

log = logging.getLogger("runcomfy_nb")

_COLORS = {"starting": "#d97706", "ready": "#16a34a", "stopping": "#6b7280", "stopped": "#9ca3af",
           "failed": "#dc2626"}
_ENDED = ("stopping", "stopped", "failed")
# which state each button may act on: a failed machine may still exist (and bill), so it can be stopped
_ALLOWED = {"stop": ("starting", "ready", "failed"), "extend": ("starting", "ready")}
_PENDING = {"stop": "stopping", "extend": "extending"}
# When any panel last asked the server about a machine: two panels on the same machines share it.
_LAST_REFRESH: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()



def _money(value: float) -> str:
    return f"${value:,.2f}"


class ServerClock:
    """The server's clock as its replies show it (`MachineInfo.server_now`, from the `Date`
    header, against `seen_at`, ours then): its offset from ours and its rate, which differs from 1
    under the emulator's faster virtual clock. Until a reply carries a date, it is our own clock."""

    MIN_SPAN = 2.0  # our seconds between two dates before a rate is measured (dates are whole seconds)

    def __init__(self) -> None:
        self.first: tuple[float, float] | None = None  # (ours, theirs)
        self.last: tuple[float, float] | None = None
        self.rate = 1.0

    def observe(self, info: Any) -> None:
        ours, theirs = getattr(info, "seen_at", None), getattr(info, "server_now", None)
        if not isinstance(ours, (int, float)) or not isinstance(theirs, (int, float)):
            return
        if self.last is not None and ours <= self.last[0]:
            return  # an older reply (kept fields): nothing new about the clock
        self.first = self.first or (ours, theirs)
        self.last = (ours, theirs)
        span = ours - self.first[0]
        if span >= self.MIN_SPAN:
            rate = (theirs - self.first[1]) / span
            # a date has 1 s resolution: a rate within that of 1 is our own clock's
            self.rate = 1.0 if abs(rate - 1.0) <= 1.5 / span else max(rate, 0.0)

    def now(self, ours: float | None = None) -> float:
        """The server's time at our `ours` (default: now)."""
        ours = time.time() if ours is None else ours
        if self.last is None:
            return ours
        # a Date header is truncated to the second: the server's now is on average half a second on
        return self.last[1] + 0.5 * min(self.rate, 1.0) + (ours - self.last[0]) * self.rate


class MachinePanel(Snapshots, anywidget.AnyWidget):
    """The machines launched from this kernel (`machines.launched`, also those launched after the
    panel was made) and any in `include` (`Machine`s, or `MachineInfo`s from `machines.list()`):
    id, server type, state, uptime since Ready, estimated cost so far, time left, and per-row Stop
    and "Extend +30 min" buttons.

    Everything runs on `loop`, the loop the machines' HTTP client lives on (see `loops.home`).
    States are refreshed in the background every `refresh_every` seconds (at least `MIN_REFRESH`,
    as the Server API allows 1 request/s), until the panel is closed; a Stop or Extend already
    sent finishes even then. Costs are estimates: uptime × the `machines.prices` hourly rate.
    """

    _esm = esm("machines.js")
    _css = css("machines.css")

    MIN_REFRESH = 1.0
    EXTEND_BY = "30m"

    rows = t.List(t.Dict()).tag(sync=True)
    refresh_every = t.Float(10.0).tag(sync=True)
    refreshed_at = t.Float(None, allow_none=True).tag(sync=True)

    def __init__(self, machines: Any, *, include: Iterable[Any] = (), refresh_every: float = 10.0,
                 loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        self.loop = home(machines, loop)
        self.machines = behind(machines)
        super().__init__(refresh_every=refresh_every, **kwargs)
        self._include = list(include)
        self._objects: dict[str, Any] = {}  # id → Machine, in display order
        self._rows: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._actions: set[asyncio.Task[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.clock = ServerClock()
        self._throttle = Throttle(self._apply, self.loop)
        self.on_msg(self._on_msg)
        call(self._start, self.loop)

    @t.validate("refresh_every")
    def _check_refresh_every(self, proposal: Any) -> float:
        from ..errors import ValidationError

        value = float(proposal["value"])
        if not value >= self.MIN_REFRESH:  # also NaN
            raise ValidationError(f"refresh_every must be at least {self.MIN_REFRESH:g} s: the Server API "
                               "allows 1 request per second.")
        return value

    @property
    def flushes(self) -> int:
        """How many batched syncs were sent."""
        return self._throttle.flushes

    # -- on the loop --
    def _start(self) -> None:
        self._collect()
        self._throttle.flush()
        if self.loop.is_closed():
            return
        self._task = self.loop.create_task(self._refresh_forever(), name="runcomfy-machine-panel")

    def _collect(self) -> list[Any]:
        """The machines to show: launched here (picked up as they come), then `include`."""
        from ..clients.machines import Machine, MachineInfo

        found: dict[str, Any] = dict(getattr(self.machines, "launched", None) or {})
        for index, item in enumerate(self._include):
            item = behind(item)
            if isinstance(item, MachineInfo):
                item = self._include[index] = Machine(self.machines, item)
            found.setdefault(item.id, item)
        added = False
        for server_id, machine in found.items():
            if self._objects.get(server_id) is not machine:
                added = True
                self._objects[server_id] = machine
                if hasattr(machine, "watchers"):  # a stop or extend from a cell shows at once
                    machine.watchers.append(lambda info, sid=server_id: self._seen(sid, info))
                self.clock.observe(machine.info)
                row = self._merge(self._rows.get(server_id), machine.info)
                # what the Machine kept past its last reply (a 404 after a stop says only the id)
                for name in ("ready_at", "ended_at"):
                    kept = getattr(machine, name, None)
                    if row[name] is None and isinstance(kept, (int, float)):
                        row[name] = kept
                self._rows[server_id] = row
        if added:
            self._rows = {i: self._rows[i] for i in self._objects}
            self._publish(now=True, settled=True)
        return list(self._objects.values())

    def _merge(self, row: dict[str, Any] | None, info: Any, *,
               ended_at: float | None = None) -> dict[str, Any]:
        """A row from a status reply. A machine that is gone answers 404 with nothing but its id,
        so what was known before (type, times) is kept; uptime ends when we first see it end."""
        row = dict(row) if row is not None else {
            "id": info.server_id, "short": info.server_id[:8], "server_type": "", "state": "",
            "raw_status": "", "estimated_duration": None, "ready_at": None, "stopping_at": None,
            "ended_at": None, "price": None, "keep": False, "pending": "", "handled": 0, "error": "",
            "warning": "",
        }
        row.update(state=info.state, raw_status=info.raw_status or row["raw_status"])
        for name in ("server_type", "estimated_duration", "ready_at", "stopping_at"):
            value = getattr(info, name, None)
            if value not in (None, ""):
                row[name] = value
        price = (getattr(self.machines, "prices", None) or {}).get(row["server_type"])
        row["price"] = float(price) if isinstance(price, (int, float)) else None
        machine = self._objects.get(row["id"])
        row["keep"] = bool(getattr(machine, "keep", False))
        if info.state not in _ENDED:
            row["ended_at"] = None
        elif row["ended_at"] is None and row["ready_at"] is not None:
            end = ended_at if ended_at is not None else self.clock.now()
            if row["stopping_at"] is not None and info.state != "stopping":  # it may have stopped itself
                end = min(end, row["stopping_at"])
            row["ended_at"] = max(end, row["ready_at"])
        return row

    async def _refresh_forever(self) -> None:
        while not self._closed:
            try:
                await self._refresh_round()
            except Exception:  # one bad round must not end the panel's refreshing
                log.debug("machine panel refresh failed", exc_info=True)
            await asyncio.sleep(self.refresh_every)

    async def _refresh_round(self) -> None:
        for machine in self._collect():
            if self._closed:
                return
            row = self._rows.get(machine.id)
            if row is None:
                continue
            if row["pending"] or row["state"] == "stopped" or not self._due(machine):
                merged = self._merge(row, machine.info)  # it may have changed elsewhere
                if merged != row:
                    self._update_row(machine.id, merged)
                continue
            warning = ""
            async with self._lock(machine.id):
                _LAST_REFRESH[machine] = time.monotonic()
                try:
                    info = await machine.refresh()
                    self.clock.observe(info)
                except Exception as exc:
                    info = machine.info
                    warning = f"could not refresh: {self._scrub(error_text(exc))}"
            if machine.id in self._rows:
                merged = self._merge(self._rows[machine.id], info)
                self._update_row(machine.id, {**merged, "warning": warning})
        self._throttle.update({"refreshed_at": time.time()})

    def _due(self, machine: Any) -> bool:
        last = _LAST_REFRESH.get(machine, -math.inf)
        return time.monotonic() - last >= max(self.MIN_REFRESH, 0.9 * self.refresh_every)

    def _lock(self, server_id: str) -> asyncio.Lock:
        # one request per machine at a time: a refresh that was sent before a Stop must not
        # land after it and show the machine as ready again
        if server_id not in self._locks:
            self._locks[server_id] = asyncio.Lock()
        return self._locks[server_id]

    def _seen(self, server_id: str, info: Any) -> None:
        """A machine's info changed (on the loop: a stop, an extend, a refresh elsewhere)."""
        row = self._rows.get(server_id)
        if row is not None and not self._closed:
            self.clock.observe(info)
            self._update_row(server_id, self._merge(row, info))

    def _update_row(self, server_id: str, row: dict[str, Any], *, now: bool = False) -> None:
        old = self._rows.get(server_id)
        self._rows[server_id] = row
        lifecycle = old is None or old["state"] != row["state"] or old["pending"] != row["pending"]
        self._publish(now=now or lifecycle, settled=old is None or old["state"] != row["state"])

    def _publish(self, *, now: bool = False, settled: bool = False) -> None:
        # each row carries the server's clock at this moment and its rate, so the browser ticks
        # uptime and time left on the server's clock, not its own
        clock = {"clock_now": self.clock.now(), "clock_rate": self.clock.rate}
        changes: dict[str, Any] = {"rows": [{**r, **clock} for r in self._rows.values()]}
        if settled:
            changes["_settled"] = True
        self._throttle.update(changes, now=now)

    def _apply(self, changes: dict[str, Any]) -> None:
        settled = changes.pop("_settled", False)
        self._apply_changes(changes, settled=settled)

    # -- buttons --
    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or content.get("type") not in _ALLOWED:
            return
        kind, server_id = content["type"], str(content.get("id", ""))
        if self.loop.is_closed() or not self.loop.is_running():
            self._refuse(server_id, f"cannot {kind}: the machines' event loop has stopped")
            return
        soon(self.loop, lambda: self._request(kind, server_id))

    def _refuse(self, server_id: str, reason: str) -> None:
        row = self._rows.get(server_id)
        if row is not None:
            self._update_row(server_id, {**row, "error": reason, "handled": row["handled"] + 1}, now=True)

    def _request(self, kind: str, server_id: str) -> None:
        row, machine = self._rows.get(server_id), self._objects.get(server_id)
        if row is None or machine is None or row["pending"]:
            return  # unknown, or a second click while the first is under way
        if row["state"] not in _ALLOWED[kind]:
            self._refuse(server_id, f"cannot {kind}: the machine is {row['state']}")
            return
        self._update_row(server_id, {**row, "pending": kind, "error": ""}, now=True)
        task = self.loop.create_task(self._act(kind, machine))
        self._actions.add(task)  # kept until done, even after close: a Stop must finish
        task.add_done_callback(self._actions.discard)

    async def _act(self, kind: str, machine: Any) -> None:
        error, info, ended_at = "", None, None
        try:
            async with self._lock(machine.id):
                if kind == "stop":
                    info = await machine.stop()
                    self.clock.observe(info)
                    ended_at = self.clock.now()  # billing ends when the DELETE returns
                else:
                    info = await machine.extend(self.EXTEND_BY)
                    self.clock.observe(info)
        except asyncio.CancelledError:
            error = f"{kind} was interrupted; refresh to see the machine's state"
            raise
        except Exception as exc:
            error = f"{kind} failed: {self._scrub(error_text(exc))}"
        finally:
            row = self._rows[machine.id]
            if info is not None:
                row = self._merge(row, info, ended_at=ended_at)
                _LAST_REFRESH[machine] = time.monotonic()
            self._update_row(machine.id, {**row, "pending": "", "handled": row["handled"] + 1,
                                          "error": error, "warning": ""}, now=True)

    def _scrub(self, text: str) -> str:
        """Our errors promise no secrets; a machine's own URL is cut out of any text all the same."""
        for machine in self._objects.values():
            url = getattr(machine.info, "url", None)  # a Secret, or None before it is ready
            value = url.get() if url is not None and hasattr(url, "get") else None
            if value:
                text = text.replace(value, "<machine url>")
        return text

    def close(self) -> None:
        """Stop refreshing (a Stop or Extend already sent still finishes)."""
        if getattr(self, "_throttle", None) is not None and not self._closed:
            self._closed = True
            soon(self.loop, self._stop_refreshing)
            self._throttle.close()
        super().close()

    def _stop_refreshing(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: it runs no more anyway
                task.cancel()

    @property
    def refreshing(self) -> bool:
        """Whether the background refresh is running (False from `close()` on)."""
        return not self._closed and self._task is not None and not self._task.done()

    # -- fallbacks --
    @staticmethod
    def _figures(row: dict[str, Any], now: float) -> tuple[str, str, str]:
        """(uptime, estimated cost, time left) as text, at `now` on the server's clock."""
        ready, ended, stopping = row.get("ready_at"), row.get("ended_at"), row.get("stopping_at")
        state = row.get("state")
        if ready is None:
            uptime = "not ready (not billed)" if state == "starting" else "—"
            cost = _money(0) if state == "starting" and row.get("price") is not None else "—"
        else:
            end = ended if ended is not None else min(now, stopping) if stopping is not None else now
            seconds = max(0.0, end - ready)
            uptime = format_duration(seconds, whole=True)
            cost = f"≈{_money(seconds / 3600 * row['price'])}" if row.get("price") is not None else "—"
        if state == "ready" and stopping is not None:
            left = format_duration(stopping - now, whole=True) if stopping > now else "due now"
        elif state == "starting" and row.get("estimated_duration"):
            left = f"{format_duration(row['estimated_duration'], whole=True)} once ready"
        else:
            left = "—"
        return uptime, cost, left

    def _counts(self) -> str:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        return ", ".join(f"{n} {state}" for state, n in counts.items())

    def __repr__(self) -> str:
        n = len(self.rows)
        counts = self._counts()
        return f"<MachinePanel {n} machine{'s' if n != 1 else ''}{': ' + counts if counts else ''}>"

    def _text(self) -> str:
        if not self.rows:
            return "MachinePanel: no machines launched from this kernel yet."
        now = self.clock.now()
        lines = [f"MachinePanel: {len(self.rows)} machine{'s' if len(self.rows) != 1 else ''} "
                 "(cost is an estimate from a price table)"]
        for row in self.rows:
            uptime, cost, left = self._figures(row, now)
            line = (f"  {row['short']:<10} {row['server_type'] or '?':<12} {row['state']:<9} "
                    f"up {uptime:<22} {cost:<9} left {left}")
            if row.get("error"):
                line += f"  ! {row['error']}"
            lines.append(line.rstrip())
        return "\n".join(lines)

    def _html(self) -> str:
        now = self.clock.now()
        cell = "padding:3px 10px 3px 0;text-align:left;vertical-align:top"
        head = "".join(f'<th style="{cell};color:#6b7280;font-weight:600">{h}</th>' for h in
                       ("Machine", "Type", "Status", "Uptime", "Est. cost", "Time left"))
        body = []
        for row in self.rows:
            uptime, cost, left = self._figures(row, now)
            color = _COLORS.get(row["state"], "#6b7280")
            badge = (f'<span title="{esc(row["raw_status"])}" style="background:{color};color:#fff;'
                     f'border-radius:9px;padding:0 8px;font-size:12px">{esc(row["state"])}</span>')
            kept = ' <span style="color:#6b7280">(kept)</span>' if row.get("keep") else ""
            body.append(
                f'<tr><td style="{cell};font-family:monospace" title="{esc(row["id"])}">'
                f'{esc(row["short"])}{kept}</td>'
                f'<td style="{cell}">{esc(row["server_type"] or "?")}</td><td style="{cell}">{badge}</td>'
                f'<td style="{cell}">{esc(uptime)}</td><td style="{cell}">{esc(cost)}</td>'
                f'<td style="{cell}">{esc(left)}</td></tr>')
            for key, note_color in (("error", "#dc2626"), ("warning", "#6b7280")):
                if row.get(key):
                    body.append(f'<tr><td colspan="6" style="{cell};color:{note_color};white-space:pre-wrap">'
                                f'{esc(row[key])}</td></tr>')
        if not body:
            body.append(f'<tr><td colspan="6" style="{cell};color:#6b7280">'
                        "No machines launched from this kernel yet.</td></tr>")
        stamp = datetime.fromtimestamp(time.time(), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (f'<div class="runcomfy-machines" style="{FONT};padding:6px 0">'
                f'<table style="border-collapse:collapse"><thead><tr>{head}</tr></thead>'
                f'<tbody>{"".join(body)}</tbody></table>'
                f'<div style="color:#6b7280;font-size:12px;margin-top:4px">As of {stamp}. Costs are '
                "estimates: uptime since Ready × an hourly price table (the API reports no prices)."
                "</div></div>")
