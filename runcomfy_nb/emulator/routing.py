"""Route tables: each emulated API lists its routes as `Route(method, path, handler, on=...)` rows and
`mount` registers them, applying the request faults (faults.py) the one way every route shares.

A row's `enter(request)` resolves what the handler works on and the fault target, in that order of
checks the real service makes before it looks at faults (an unknown deployment, a wrong key, ...):
it returns `(context, target)` or raises `Refused(response)`. Then, for a row with an operation
`on`, the first request fault armed for `(target, on)` answers instead of the handler — except, on a
row with `after_taken`, a `drop` or `delay`, which act only after the handler answered 200 (the job
was taken and the reply is lost or late; a `before: true` param makes them act first).
Handlers get `(request, context)`, may raise `Refused` too,
and return the answer: a response, or a JSON body, where a `nulls` fault armed for `(target, on)` sends
the row's `optional` fields that the body leaves out as null (envelope.with_nulls).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from .envelope import with_nulls
from .faults import Fault, Faults

# A handler's answer: a response, or a JSON body (200) that a row's `optional` fields apply to
Answer = web.StreamResponse | dict[str, Any]
Handler = Callable[[web.Request, Any], Awaitable[Answer]]
Enter = Callable[[web.Request], Awaitable[tuple[Any, str]]]
LATE_FAULTS = ("drop", "delay")
NULLS = frozenset({"nulls"})


class Refused(Exception):
    """Raised by a route's lookups: answer `response` instead of going on."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


async def no_context(request: web.Request) -> tuple[None, str]:
    """The default `enter`: nothing to resolve, faults armed for any target ("*") apply."""
    return None, "*"


@dataclass(frozen=True)
class Route:
    """One row of a route table."""

    method: str
    path: str
    handler: Handler
    on: str | None = None  # the fault operation its request faults are armed on (None: none apply)
    enter: Enter = no_context
    after_taken: bool = False  # drop / delay act after a 200 answer (a submit whose reply is lost)
    names: Collection[str] | None = None  # the faults it answers (None: the service's fault_names)
    optional: tuple[str, ...] = ()  # body fields it may leave out: the `nulls` fault sends them as null


class Service(Protocol):
    """What `mount` needs of an emulated API: its faults, which of them it answers, and how."""

    @property
    def faults(self) -> Faults: ...

    @property
    def fault_names(self) -> Collection[str]: ...

    async def fault_reply(self, request: web.Request, fault: Fault) -> web.StreamResponse | None:
        """The answer a request fault sends instead (None: go on, e.g. a `delay` waited out)."""
        ...

    def routes(self) -> list[Route]:
        """Its route table."""
        ...


def mount(app: web.Application, service: Service) -> None:
    """Register each row of the service's table on `app`: its requests go through `serve`."""
    for route in service.routes():  # as aiohttp's route tables do: `add_get` answers HEAD too
        add = getattr(app.router, f"add_{route.method.lower()}")
        add(route.path, _serving(service, route))


def _serving(service: Service, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await serve(service, route, request)

    handle.__name__ = getattr(route.handler, "__name__", "handle")
    return handle


async def serve(service: Service, route: Route, request: web.Request) -> web.StreamResponse:
    """One request along its row: enter, the fault switch, the handler (and a late fault)."""
    try:
        context, target = await route.enter(request)
        late = None
        if route.on is not None:
            fault = service.faults.take(target, route.on, route.names or service.fault_names)
            if (fault is not None and route.after_taken and fault.name in LATE_FAULTS
                    and not fault.params.get("before")):
                late = fault
            elif fault is not None and (instead := await service.fault_reply(request, fault)):
                return instead
        answer = await route.handler(request, context)
        response = answer if isinstance(answer, web.StreamResponse) else with_nulls(
            answer, route.optional, bool(route.optional and route.on
                                         and service.faults.take(target, route.on, NULLS)))
    except Refused as refused:
        return refused.response
    if late is not None and response.status == 200:
        await service.fault_reply(request, late)
    return response
