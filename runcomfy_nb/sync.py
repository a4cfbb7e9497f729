"""The blocking facade: the same async objects, run on one background event-loop thread.

Why a thread and not nest-asyncio: the kernel's own loop stays free, so widgets keep updating
while a cell blocks, jobs keep progressing while the kernel is idle, and Ctrl-C in a blocking
cell reaches us as a KeyboardInterrupt that cancels the waiting (and, for `job.result()`, the
remote job: the wait goes on until that cancel is done, see `run`). While a call blocks a
kernel's main thread, the widgets' messages are handled (`uievents`), so their buttons work.
`Blocking(obj)` wraps any object of ours: coroutine methods become blocking calls, async
iterators plain iterators, and results that are themselves async objects are wrapped too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from .loops import Remote, background, behind, block, call, on_loop_thread

T = TypeVar("T")
CANCEL_GRACE = 15.0  # seconds an interrupted call gives its cancelled task to finish (a remote cancel)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the background loop and wait. Ctrl-C cancels its task and waits (up to
    `CANCEL_GRACE` s; a second Ctrl-C stops waiting) until the task has finished — e.g. until
    `Job.result` has cancelled the remote job — then re-raises."""
    target = background()
    if on_loop_thread(target):
        coro.close()
        raise RuntimeError("a blocking runcomfy_nb call was made from inside its own event loop")
    running = _Running(coro, target)
    try:
        block(running.ended)
    except KeyboardInterrupt:
        running.cancel()
        with contextlib.suppress(KeyboardInterrupt):
            block(running.ended, CANCEL_GRACE)
        raise
    # not future.result(timeout=...): our JobTimeout is a TimeoutError too
    return running.future.result()


class _Running:
    """A coroutine run as a task on `target`, watched from another thread. `ended` is set once the
    task has really finished; `run_coroutine_threadsafe`'s future would be marked cancelled at once,
    before the task's own cancel handling has run."""

    def __init__(self, coro: Coroutine[Any, Any, T], target: asyncio.AbstractEventLoop) -> None:
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.ended = threading.Event()
        self._loop = target
        self._task: asyncio.Task[Any] | None = None
        try:
            target.call_soon_threadsafe(self._start, coro)
        except RuntimeError:  # the loop closed meanwhile
            coro.close()
            raise

    def _start(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._task = self._loop.create_task(coro)
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self.future.cancel()
        elif task.exception() is not None:
            self.future.set_exception(task.exception())
        else:
            self.future.set_result(task.result())
        self.ended.set()

    def cancel(self) -> None:
        # after `_start` (callbacks run in order), so the task exists by then
        self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        # one turn later: a task not yet started would get the cancel before its first line, so
        # `Job.result` would never reach the handler that cancels the remote job
        if self._task is not None:
            self._loop.call_soon(self._task.cancel)


WaitView = Callable[[Any], contextlib.AbstractContextManager[Any]]
_wait_views: list[WaitView] = []


def register_wait_view(view: WaitView) -> None:
    """Register `view(job)`, a context manager around each blocking `job.result()` (the text
    progress view, `console.wait_view`): how the core shows progress without display code."""
    if view not in _wait_views:
        _wait_views.append(view)


def _waiting(target: Any, name: str) -> contextlib.AbstractContextManager[Any]:
    if name != "result":
        return contextlib.nullcontext()
    from .jobs import Job

    if not isinstance(target, Job):
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for view in _wait_views:
        stack.enter_context(view(target))
    return stack


def _is_async_object(value: Any) -> bool:
    if value is None or isinstance(value, (str, bytes, int, float, bool, dict, type)):
        return False
    return is_async_class(type(value))


def is_async_class(cls: type) -> bool:
    """True when instances of `cls` have coroutine or async-generator methods: `wrap` shows them
    as `Blocking` views (and the stub generator, scripts/make_stubs.py, types them so)."""
    return _has_async_methods(cls)


@functools.cache
def _has_async_methods(cls: Any) -> bool:  # Any: a class is hashable, mypy's `type` is not
    return any(
        inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)
        for _, member in inspect.getmembers(cls, inspect.isfunction)
    )


def wrap(value: Any) -> Any:
    """`value` as the blocking facade returns it: async objects (also inside lists and tuples)
    become `Blocking` views; anything else is returned as it is."""
    if isinstance(value, list):
        return [wrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(wrap(v) for v in value)
    return Blocking(value) if _is_async_object(value) else value


def _iterate(agen: Any) -> Iterator[Any]:
    while True:
        try:
            yield wrap(run(agen.__anext__()))
        except StopAsyncIteration:
            return


class Blocking(Remote):
    """A blocking view of one async object; `unwrap(x)` gives the object back."""

    __slots__ = ()

    def __init__(self, target: Any) -> None:
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name: str) -> Any:
        value = call(lambda: getattr(self._target, name))
        if inspect.iscoroutinefunction(value):
            @functools.wraps(value)
            def blocking(*args: Any, **kwargs: Any) -> Any:
                with _waiting(self._target, name):
                    return wrap(run(value(*args, **kwargs)))
            return blocking
        if inspect.isasyncgenfunction(value):
            @functools.wraps(value)
            def iterate(*args: Any, **kwargs: Any) -> Iterator[Any]:
                return _iterate(call(lambda: value(*args, **kwargs)))
            return iterate
        if inspect.ismethod(value):  # a plain method may return an async object too
            @functools.wraps(value)
            def plain(*args: Any, **kwargs: Any) -> Any:
                return wrap(call(lambda: value(*args, **kwargs)))
            return plain
        return wrap(value)

    def __setattr__(self, name: str, value: Any) -> None:
        call(lambda: setattr(self._target, name, value))

    def __dir__(self) -> list[str]:
        return dir(self._target)

    def __repr__(self) -> str:
        return repr(self._target)

    def __eq__(self, other: object) -> bool:
        return unwrap(other) == self._target

    def __hash__(self) -> int:
        return hash(self._target)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        """The object as the running IPython shows it (with the formatters registered there, e.g. a
        JobResult as a Gallery); its repr where no IPython runs."""
        running = sys.modules.get("IPython")
        formatter = getattr(running.get_ipython() if running else None, "display_formatter", None)
        if formatter is not None:
            data, meta = formatter.format(self._target, include=include, exclude=exclude)
            if data:
                return data, meta
        return {"text/plain": repr(self._target)}

    def __enter__(self) -> Blocking:
        return self

    def __exit__(self, *exc: object) -> None:
        close = getattr(self._target, "aclose", None)
        if close is not None:
            run(close())


def unwrap(value: Any) -> Any:
    """The async object a blocking view shows (`loops.behind`); any other value as it is."""
    return behind(value)


def on_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` called on the facade's loop thread, each blocking view among the
    arguments handed over as the async object it shows: how async-side code that must run there
    (a widget following a job, a client's delayed close) is given the facade's objects."""
    return call(lambda: fn(*map(behind, args), **{k: behind(v) for k, v in kwargs.items()}))


def blocking_class(async_cls: type, doc: str) -> type:
    """A class whose instances are `Blocking` views of `async_cls(...)` made on the loop; its
    signature is `async_cls`'s (its types are in the generated stub, facade.pyi)."""

    def __init__(self: Blocking, *args: Any, **kwargs: Any) -> None:
        Blocking.__init__(self, call(lambda: async_cls(*args, **kwargs)))

    return type(async_cls.__name__.removeprefix("Async"), (Blocking,),
                {"__init__": __init__, "__doc__": doc, "__slots__": (),
                 "__signature__": inspect.signature(async_cls)})
