"""What serverless deployments and Model API models share: a pool of instances with a first-come line,
one queued request's life on it, the submit that takes a request, and what status and result replies
may leave out."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import faults as faults_
from . import synth
from .envelope import error
from .routing import Refused
from .validation import Invalid

# What a status / result reply may leave out: the `nulls` fault sends each as null instead.
STATUS_OPTIONAL = ("queue_position", "instance_id")
RESULT_OPTIONAL = ("outputs", "output", "error", "finished_at", "instance_id")
DEFAULT_FAILURE = "CUDA out of memory. Tried to allocate 2.00 GiB"


@dataclass
class Pool:
    """A deployment's instances: idle ones, and the requests waiting for one, first come first served.
    An instance is up while it runs a request and for `keep_warm` virtual seconds after; a request
    that finds its instance scaled down starts a new one (with a new id)."""

    free: list[str]
    new_id: Callable[[], str] = field(default=lambda: f"i-{uuid.uuid4().hex[:6]}")
    keep_warm: float = math.inf  # virtual seconds; inf: never scales down (the Model API's workers)
    speed: float = 1.0  # virtual seconds per real second
    line: list[Any] = field(default_factory=list)  # the queued requests (.turn: their instance)
    busy: set[str] = field(default_factory=set)
    idle_since: dict[str, float] = field(default_factory=dict)  # monotonic real time

    def alive(self, instance: str) -> bool:
        """Whether the instance is up: running a request, or idle within its keep-warm period."""
        if instance in self.busy:
            return True
        since = self.idle_since.get(instance)
        return since is not None and (time.monotonic() - since) * self.speed < self.keep_warm

    def dispatch(self) -> None:
        while self.free and self.line:
            request = self.line.pop(0)
            if request.turn is not None and not request.turn.done():
                instance = self.free.pop(0)
                if instance in self.idle_since and not self.alive(instance):  # scaled down
                    del self.idle_since[instance]
                    instance = self.new_id()
                self.busy.add(instance)
                request.turn.set_result(instance)

    def release(self, instance: str) -> None:
        self.busy.discard(instance)
        self.idle_since[instance] = time.monotonic()
        self.free.append(instance)
        self.dispatch()


def queue_position(pool: Pool, request: Any, waiting: list[Any]) -> int:
    """A queued request's place: 0 = next to start; those still in their extra pre-queue wait
    (`waiting`, oldest first) come after the line."""
    if request.turn is not None and request.turn.done():
        return 0  # an instance is assigned; it starts on the loop's next turn
    if request in pool.line:
        return pool.line.index(request)
    return len(pool.line) + (waiting.index(request) if request in waiting else 0)


async def run_in_pool(
    pool: Pool, clock: Any, request: Any, files: dict[tuple[str, str], bytes], *, seconds: float,
    jitter: float, make: Callable[[], tuple[Any, dict[tuple[str, str], bytes]]],
    keep: Callable[[Any], None], error_type: str,
) -> None:
    """One queued request's life (a serverless request, a Model API request): its extra pre-queue
    wait, a turn in `pool`'s line, then `seconds` ± `jitter` of virtual run time on an instance,
    after which `make()` (off the loop) gives its outputs (handed to `keep`) and files, or its
    `fails_with` becomes an `error_type` error. A cancel while it waits leaves the line cleanly."""
    if request.extra_queue:
        await clock.sleep(request.extra_queue)
    request.turn = asyncio.get_running_loop().create_future()
    pool.line.append(request)
    pool.dispatch()
    try:
        instance = await request.turn
    except asyncio.CancelledError:
        if request in pool.line:
            pool.line.remove(request)
        if request.turn.done() and not request.turn.cancelled():
            pool.release(request.turn.result())
        raise
    try:
        request.status, request.instance_id = "in_progress", instance
        request.started_wall = time.time()
        await clock.sleep(seconds * synth._rng(request.id).uniform(1 - jitter, 1 + jitter))
        if request.fails_with is None:
            try:  # Pillow off the loop: other requests are answered meanwhile
                outputs, made = await asyncio.to_thread(make)
            except Exception as exc:
                request.fails_with = f"{type(exc).__name__}: {exc}"
            else:
                files.update(made)
                keep(outputs)
                request.status = "succeeded"
        if request.fails_with is not None:
            request.error = {"type": error_type, "message": request.fails_with}
            request.status = "failed"
        request.finished_wall = time.time()  # the real moment the result became available
    finally:
        pool.release(instance)


async def taken(request: web.Request, create: Callable[[Any], Any]) -> Any:
    """A submit's job made by `create(body)`; Refused (422 422001 with a `detail` list) for a body that
    is not JSON or that `create` finds Invalid."""
    try:
        body = await request.json()
    except ValueError:
        detail = [{"loc": ["body"], "msg": "invalid JSON", "type": "value_error.jsondecode"}]
        raise Refused(error(422, 422001, "Request body is not valid JSON", detail)) from None
    try:
        return create(body)
    except Invalid as exc:
        raise Refused(error(422, 422001, str(exc), exc.detail())) from None


class QueueAPI:
    """What the serverless and Model API handlers share: the request faults, in the error envelope."""

    fault_names = faults_.REQUEST_FAULTS

    def __init__(self, state: Any) -> None:
        self.state = state

    @property
    def faults(self) -> faults_.Faults:
        return self.state.faults

    async def fault_reply(self, request: web.Request, fault: faults_.Fault) -> web.StreamResponse | None:
        return await faults_.reply(request, fault)
