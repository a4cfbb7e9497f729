"""RunComfy Server API: cloud-saved workflows and dedicated GPU machines (launch, watch, extend, stop).

Machines bill by the second from Ready until stopped. Every machine launched from this process is
remembered, so `stop_all()` can stop what is left running, and the exit guard (shutdown.py) stops
it when the process ends unless it was launched with `keep=True`. Ids and unique prefixes resolve
against the account's machine list, and a stop returns only once the server confirmed it.
"""

from __future__ import annotations

import asyncio
import builtins
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from .. import shutdown
from ..config import Secret
from ..errors import (
    APIError,
    JobTimeout,
    MachineFailed,
    NotFound,
    RunComfyError,
    UnexpectedReply,
    ValidationError,
    transient,
)
from ..http_errors import parse_body
from ..timefmt import parse_timestamp
from ..transport import Transport
from ..workflow import did_you_mean
from .comfyui import AsyncComfyUI

SERVICE = "RunComfy Server API"
SERVER_TYPES = ("medium", "large", "extra-large", "2x-large", "2xl-turbo")
# Estimates only: the API does not expose prices. Override with Machines(prices=...).
DEFAULT_PRICES_PER_HOUR = {"medium": 0.99, "large": 1.75, "extra-large": 2.50, "2x-large": 4.99,
                           "2xl-turbo": 6.99}
MIN_DURATION, MAX_DURATION = 60, 7 * 24 * 3600
GONE = "(gone)"  # the raw status of a machine the server answers 404 for
LAUNCH_GRACE = 120.0  # seconds a fresh machine's GET may answer 404 (api/server-api.md: "briefly")
_STATES = {"starting": "starting", "initializing": "starting", "ready": "ready",
           "deleting": "stopping", "stopping": "stopping", "error": "failed", "failed": "failed"}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ENDED = ("stopping", "stopped")
# Imports run on the main thread, launches maybe on the blocking facade's loop thread, and only the
# main thread may set the SIGTERM handler: set it now.
shutdown.GUARD.install()


def parse_duration(value: int | float | str) -> int:
    """Seconds from `3600`, `"3600"`, `"90m"`, `"2h"` or `"1h30m"`; checked against sane limits."""
    if isinstance(value, bool):
        raise ValidationError("A duration is a number of seconds or text like '90m' or '2h'.")
    if isinstance(value, (int, float)):
        seconds = int(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ValidationError(f"Cannot read the duration {value!r}: write e.g. 3600, '90m' or '2h'.")
        seconds = int(sum(float(n) * _UNITS[u or "s"] for n, u in parts))
    if not MIN_DURATION <= seconds <= MAX_DURATION:
        raise ValidationError(
            f"A machine duration must be between 1 minute and 7 days, not {seconds} s."
        )
    return seconds


def check_server_type(server_type: str) -> str:
    if server_type not in SERVER_TYPES:
        raise ValidationError(
            f"Unknown server_type {server_type!r}; choose one of {', '.join(SERVER_TYPES)}."
            + did_you_mean(server_type, SERVER_TYPES)
        )
    return server_type


@dataclass(frozen=True)
class WorkflowVersion:
    workflow_id: str
    name: str
    version_id: str
    updated_at: str = ""


@dataclass(frozen=True)
class MachineInfo:
    """One status reply. `state` is starting | ready | stopping | stopped | failed;
    `url` (the ComfyUI address) is a Secret: it grants access to the machine."""

    server_id: str
    state: str
    raw_status: str = ""
    server_type: str = ""
    estimated_duration: int | None = None
    url: Secret | None = field(default=None, repr=False)
    ready_at: float | None = None
    stopping_at: float | None = None
    workflow_version_id: str | None = None
    # the server's clock when it answered (its `Date` header), and this process's `time.time()`
    # then: uptime and time left are measured on the server's clock (the emulator's runs faster)
    server_now: float | None = field(default=None, compare=False)
    seen_at: float | None = field(default=None, compare=False)

    def updated_by(self, newer: MachineInfo) -> MachineInfo:
        """`newer`, with what it does not say kept from this reply: a gone machine answers 404
        with nothing but its id, yet it still had its type, times and workflow."""
        kept = {name: getattr(self, name) for name in
                ("server_type", "estimated_duration", "ready_at", "stopping_at", "workflow_version_id")
                if getattr(newer, name) in (None, "") and getattr(self, name) not in (None, "")}
        if newer.server_now is None and self.server_now is not None:
            kept.update(server_now=self.server_now, seen_at=self.seen_at)
        return replace(newer, **kept) if kept else newer

    @classmethod
    def from_reply(cls, reply: dict[str, Any], date: str | None = None) -> MachineInfo:
        """The machine of a status reply; `date`, the reply's `Date` header, gives the server's
        clock (`server_now`, with `seen_at` this process's clock at the same moment)."""
        raw = str(reply.get("current_status") or "")
        url = reply.get("main_service_url")
        server_now = _http_date(date)
        return cls(
            server_id=str(reply.get("server_id")), state=_STATES.get(raw.lower(), "starting"),
            raw_status=raw, server_type=str(reply.get("server_type") or ""),
            estimated_duration=reply.get("estimated_duration"),
            url=Secret(url) if isinstance(url, str) and url else None,
            ready_at=parse_timestamp(reply.get("service_ready_at")),
            stopping_at=parse_timestamp(reply.get("estimated_stopping_at")),
            workflow_version_id=reply.get("workflow_version_id"),
            server_now=server_now, seen_at=time.time() if server_now is not None else None,
        )


def _http_date(value: str | None) -> float | None:
    """An HTTP `Date` header as epoch seconds, or None."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


class Machines:
    """Workflows and machines of one account (needs RUNCOMFY_USER_ID besides the token)."""

    def __init__(self, transport: Transport, user_id: str, *,
                 prices: dict[str, float] | None = None,
                 notify: Callable[[str], None] = print) -> None:
        self._http = transport
        self._base = f"/prod/api/users/{quote(user_id, safe='')}"
        self.prices = {**DEFAULT_PRICES_PER_HOUR, **(prices or {})}
        self._notify = notify
        self.launched: dict[str, Machine] = {}

    def __repr__(self) -> str:
        return "<Machines>"

    async def workflows(self) -> builtins.list[WorkflowVersion]:
        reply = await self._http.request("GET", f"{self._base}/workflows")
        items = reply if isinstance(reply, list) else (reply or {}).get("workflows", [])
        return [WorkflowVersion(str(w.get("workflow_id", "")), str(w.get("workflow_name", "")),
                                str(w.get("version_id", "")), str(w.get("updated_at", "")))
                for w in items if isinstance(w, dict)]

    async def _get(self, path: str) -> tuple[Any, str | None]:
        """A GET's parsed body and its `Date` header (the server's clock, see MachineInfo)."""
        response = await self._http.send("GET", path, idempotent=True)
        return parse_body(response), response.headers.get("date")

    async def list(self) -> list[MachineInfo]:
        reply, date = await self._get(f"{self._base}/servers")
        items = reply if isinstance(reply, list) else (reply or {}).get("servers", [])
        return [MachineInfo.from_reply(m, date) for m in items if isinstance(m, dict)]

    async def status(self, server_id: str) -> MachineInfo:
        """The machine's state by full id; one that is gone (404) is `stopped`."""
        try:
            reply, date = await self._get(self._server(server_id))
        except NotFound:
            return MachineInfo(server_id=server_id, state="stopped", raw_status=GONE)
        if not isinstance(reply, dict) or not isinstance(reply.get("current_status"), str):
            # an odd answer that says nothing about the machine (errors.transient)
            raise UnexpectedReply(f"{SERVICE} sent a status reply without a machine status for "
                                  f"{server_id[:8]}", status=200, detail=reply)
        return MachineInfo.from_reply({**reply, "server_id": reply.get("server_id") or server_id}, date)

    def _server(self, server_id: str, action: str = "") -> str:
        path = f"{self._base}/servers/{quote(server_id, safe='')}"
        return f"{path}/{action}" if action else path

    async def launch(self, version_id: str, *, server_type: str = "large",
                     duration: int | float | str = "1h", keep: bool = False) -> Machine:
        """Launch a machine for a workflow version; it bills from Ready until stopped. It is stopped
        when this process exits, unless `keep` (also settable later: `machine.keep = True`)."""
        check_server_type(server_type)
        seconds = parse_duration(duration)
        known = {w.version_id for w in await self.workflows()}
        if version_id not in known:
            raise ValidationError(
                f"No workflow version {version_id!r} in this account (see `%runcomfy workflows`)."
                + did_you_mean(version_id, known)
            )
        reply = await self._http.request(
            "POST", f"{self._base}/servers", idempotent=False,
            json={"workflow_version_id": version_id, "server_type": server_type,
                  "estimated_duration": seconds},
        )
        machine = Machine(self, MachineInfo.from_reply(reply if isinstance(reply, dict) else {}))
        machine.keep = keep
        self.launched[machine.id] = machine
        # the DELETE the guard sends at exit, when this client may be closed; the headers never
        # leave the guard
        url = self._http.base_url + self._server(machine.id)
        shutdown.GUARD.watch(machine, url, self._http.auth_headers())
        price = self.prices.get(server_type)
        cost = f" (about ${price:.2f}/h)" if price else ""
        ending = ("It keeps running when this process exits" if keep
                  else "It is stopped when this process exits")
        self._notify(
            f"Machine {machine.id[:8]} ({server_type}) is starting. It bills from Ready until "
            f"stopped{cost} and stops itself {seconds / 3600:.2f} h after Ready. {ending}; stop it "
            f"sooner with `%runcomfy stop {machine.id[:8]}` or `machine.stop()`."
        )
        return machine

    async def extend(self, server_id: str, by: int | float | str) -> MachineInfo:
        """Add `by` to the running time (the API takes the new total); an id or a unique prefix."""
        server_id = await self.resolve(server_id)
        current = await self.status(server_id)
        if current.state not in ("starting", "ready"):
            raise ValidationError(f"Machine {server_id[:8]} is {current.state}; it cannot be extended.")
        total = (current.estimated_duration or 0) + parse_duration(by)
        if total > MAX_DURATION:
            raise ValidationError("That would run the machine longer than 7 days.")
        reply = await self._http.request(
            "POST", self._server(server_id, "update-estimated-duration"), idempotent=True,
            json={"update_estimated_duration": total})
        return MachineInfo.from_reply(reply)

    async def stop(self, server_id: str) -> MachineInfo:
        """Stop a machine by id or unique prefix. Returns once the server confirmed it is stopping
        (or no longer has it); raises otherwise, and for an id that matches no machine."""
        server_id = await self.resolve(server_id)
        try:
            reply = await self._http.request("DELETE", self._server(server_id))
        except NotFound:
            info = await self._gone(server_id)
        else:
            info = MachineInfo.from_reply({**(reply if isinstance(reply, dict) else {}),
                                           "server_id": server_id})
            if info.state not in _ENDED:
                info = await self._confirm(server_id, info)
        if server_id in self.launched:
            self.launched[server_id].info = info
            self.launched[server_id].settled = True
        return info

    async def _gone(self, server_id: str) -> MachineInfo:
        """A 404 to a DELETE: stopped only if the account's list agrees."""
        listed = {m.server_id: m for m in await self.list()}.get(server_id)
        if listed is None:
            return MachineInfo(server_id=server_id, state="stopped", raw_status=GONE)
        if listed.state in _ENDED:
            return listed
        raise APIError(f"{SERVICE} answered 404 to the stop of machine {server_id[:8]} yet lists it as "
                       f"{listed.raw_status}: it was NOT stopped. Try again, or stop it in the dashboard.",
                       status=404)

    async def _confirm(self, server_id: str, accepted: MachineInfo) -> MachineInfo:
        """A DELETE answered 200 without a stopping state: ask once more."""
        info = await self.status(server_id)
        if info.state in _ENDED:
            return info
        raise APIError(f"{SERVICE} took the stop of machine {server_id[:8]} but still reports it "
                       f"{info.raw_status or accepted.raw_status}: it is not confirmed stopped. Check "
                       "`%runcomfy machines`.", status=200)

    async def resolve(self, ref: str) -> str:
        """The full id of the account's machine `ref` names: its id or first characters. Raises
        NotFound (no such machine) or ValidationError (several match), listing the running ones."""
        ref = ref.strip()
        if not ref:
            raise ValidationError("Usage: give a machine's id or its first characters (see "
                                  "`%runcomfy machines`).")
        if ref in self.launched:
            return ref
        listed = await self.list()
        matches = sorted({m.server_id for m in listed} | set(self.launched))
        matches = [i for i in matches if i.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFound(f"No machine {ref!r} in this account. {_running(listed)}", status=404)
        shown = ", ".join(i[:8] for i in matches)
        raise ValidationError(f"{ref!r} matches {len(matches)} machines ({shown}); give more of the id. "
                              f"{_running(listed)}")

    async def stop_all(self, *, include_kept: bool = False) -> builtins.list[str]:
        """Stop every machine launched here that may still run; returns the ids the server
        confirmed. Tries each; then raises if any could not be stopped."""
        stopped, failed = [], []
        for machine in list(self.launched.values()):
            # a poll's 404 ("stopped") is no proof: only our confirmed stop or the server's "stopping" is
            if machine.settled or machine.info.state == "stopping" or (machine.keep and not include_kept):
                continue
            try:
                await machine.stop()
            except RunComfyError as exc:
                failed.append(f"{machine.id[:8]}: {exc}")
            else:
                stopped.append(machine.id)
        if failed:
            done = f"Stopped {len(stopped)} machine(s); " if stopped else ""
            raise APIError(f"{done}could not stop {len(failed)}: " + "; ".join(failed))
        return stopped


def _running(listed: list[MachineInfo]) -> str:
    running = [m for m in listed if m.state not in _ENDED]
    if not running:
        return "No machine is running in this account."
    return "Running: " + ", ".join(f"{m.server_id[:8]} ({m.server_type or '?'}, {m.state})"
                                   for m in running) + "."


class Machine:
    """A launched machine: `await machine.wait_ready()`, `machine.comfyui()`, `extend`, `stop`."""

    def __init__(self, api: Machines, info: MachineInfo) -> None:
        self._api = api
        self.id = info.server_id
        self.keep = False  # True: leave it running when the process exits
        self.settled = False  # True once the server confirmed a stop of ours
        self.ready_at: float | None = None
        self.ended_at: float | None = None  # when we first saw it stopping, stopped or failed
        self.made_at = time.time()
        self.watchers: list[Callable[[MachineInfo], None]] = []  # told of each new info (panels)
        self.info = info

    @property
    def info(self) -> MachineInfo:
        return self._info

    @info.setter
    def info(self, info: MachineInfo) -> None:
        # a gone machine answers with nothing but its id: keep what was known of its billing
        self.ready_at = info.ready_at or self.ready_at
        if info.state in ("stopping", "stopped", "failed") and self.ended_at is None:
            self.ended_at = min(time.time(), info.stopping_at or time.time())
        known: MachineInfo | None = getattr(self, "_info", None)
        self._info = known.updated_by(info) if known is not None else info
        for watcher in list(self.watchers):
            watcher(self._info)

    def __repr__(self) -> str:
        return f"<Machine {self.id[:8]} {self.info.server_type} {self.info.state}>"

    @property
    def billed_seconds(self) -> float:
        """Seconds billed so far: from Ready until now, or until it ended."""
        if self.ready_at is None:
            return 0.0
        end = self.ended_at or time.time()
        if self.info.stopping_at:
            end = min(end, self.info.stopping_at)
        return max(0.0, end - self.ready_at)

    @property
    def estimated_cost(self) -> float:
        """Billed seconds × the price table's hourly rate for this server type (an estimate)."""
        return self.billed_seconds / 3600 * self._api.prices.get(self.info.server_type, 0.0)

    async def refresh(self) -> MachineInfo:
        self.info = await self._api.status(self.id)
        return self.info

    async def wait_ready(self, timeout: float = 900.0, *, poll: float = 5.0,
                         on_status: Callable[[MachineInfo], None] | None = None) -> MachineInfo:
        """Wait until Ready (raises MachineFailed if it fails or stops, JobTimeout after `timeout`,
        when a machine not kept is stopped first: it never became Ready, so nothing was billed).
        A poll that meets a transient or malformed answer is tried again, within `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            problem = ""
            try:
                info = await self._api.status(self.id)
            except RunComfyError as exc:
                if not transient(exc):
                    raise
                problem = f"; the last status poll failed: {exc}"
            else:
                if self._not_listed_yet(info):
                    info, problem = self.info, "; the server does not know it yet"
                self.info = info
                if on_status is not None:
                    on_status(info)
                if info.state == "ready" and info.url is not None:
                    return info
                if info.state in ("failed", "stopped", "stopping"):
                    raise MachineFailed(f"Machine {self.id[:8]} is {info.state} ({info.raw_status}); "
                                        "it will not become ready.")
            if loop.time() > deadline:
                raise JobTimeout(f"Machine {self.id[:8]} was not ready after {timeout:g} s{problem}; "
                                 f"{await self._given_up()}")
            await asyncio.sleep(min(poll, max(0.0, deadline - loop.time())))

    async def _given_up(self) -> str:
        """Stop a machine whose wait timed out (unless kept), before it becomes Ready and bills;
        what happened, for the timeout's message."""
        status = self.info.raw_status
        if self.keep:
            return f"it is still {status}, kept (not billed until Ready): stop it when you are done."
        try:
            await self.stop()
        except RunComfyError as exc:
            return (f"it is still {status}, and stopping it failed ({exc}): stop it with "
                    f"`%runcomfy stop {self.id[:8]}` before it becomes Ready and bills.")
        return f"it was stopped while still {status}, so nothing was billed."

    def _not_listed_yet(self, info: MachineInfo) -> bool:
        """A 404 for a machine just launched and never seen past Starting: not yet visible, not gone."""
        return (info.raw_status == GONE and self.info.state == "starting"
                and time.time() - self.made_at < LAUNCH_GRACE)

    def comfyui(self) -> AsyncComfyUI:
        """A ComfyUI client on this machine's `main_service_url`."""
        if self.info.url is None:
            raise ValidationError(f"Machine {self.id[:8]} is not ready yet: await machine.wait_ready().")
        return AsyncComfyUI(self.info.url, machine=self.id)

    async def extend(self, by: int | float | str) -> MachineInfo:
        self.info = await self._api.extend(self.id, by)
        return self.info

    async def stop(self) -> MachineInfo:
        self.info = await self._api.stop(self.id)
        return self.info
