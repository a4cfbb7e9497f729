"""The one bridge between threads and event loops: the shared background loop of the blocking
facade, which loop an object lives on (`home`, `behind` for the facade's views), and handing a
function or a coroutine to that loop, from any thread.

A blocking wait here (`call`, `block`) looks at Ctrl-C every `POLL` s and, on a kernel's main
thread, handles the widgets' messages that arrived meanwhile (`uievents`), so buttons work while a
cell blocks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from . import uievents

T = TypeVar("T")
POLL = 0.1  # seconds between looks at a blocking wait: Ctrl-C and widget clicks are handled this often
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def background() -> asyncio.AbstractEventLoop:
    """The shared background loop, started on first use (the blocking facade's objects live there)."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            new = asyncio.new_event_loop()
            threading.Thread(target=new.run_forever, name="runcomfy-loop", daemon=True).start()
            _loop = new
        return _loop


class Remote:
    """Base of the objects that stand for one living on the background loop (the blocking facade's
    views, `sync.Blocking`); `behind(view)` gives that object back."""

    __slots__ = ("_target",)
    _target: Any


def behind(value: Any) -> Any:
    """The object a `Remote` view stands for; any other value as it is."""
    return object.__getattribute__(value, "_target") if isinstance(value, Remote) else value


def home(value: Any, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.AbstractEventLoop:
    """The loop `value` lives on: `loop` when given; the background loop for a `Remote` view (the
    blocking facade's objects, e.g. `rc.RunComfy().machines`) or when no loop runs here; else the
    running loop (an async object used with top-level `await` in a notebook)."""
    if loop is not None:
        return loop
    if isinstance(value, Remote):
        return background()
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return background()


def on_loop_thread(target: asyncio.AbstractEventLoop) -> bool:
    """True when `target` is the loop running in this thread."""
    try:
        return asyncio.get_running_loop() is target
    except RuntimeError:
        return False


def running_elsewhere(target: asyncio.AbstractEventLoop) -> bool:
    """True when `target` runs, on another thread than this one."""
    return target.is_running() and not target.is_closed() and not on_loop_thread(target)


def soon(target: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """Run `fn` on `target`'s thread: now if we are on it (or it is not running), else soon."""
    if running_elsewhere(target):
        try:
            target.call_soon_threadsafe(fn)
            return
        except RuntimeError:  # closed in the meantime
            pass
    fn()


def call(fn: Callable[[], T], on: asyncio.AbstractEventLoop | None = None) -> T:
    """Run a plain function on the thread of loop `on` (default: the background loop) and return
    its result; directly when that is this thread or that loop is not running."""
    target = on or background()
    if not running_elsewhere(target):
        return fn()
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    ended = threading.Event()

    def job() -> None:
        try:
            if future.set_running_or_notify_cancel():
                future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)
        finally:
            ended.set()

    target.call_soon_threadsafe(job)
    try:
        block(ended)
    except KeyboardInterrupt:
        future.cancel()  # a plain function cannot be stopped once it runs; it is short
        raise
    return future.result()


def spawn(target: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T],
          ) -> asyncio.Task[T] | concurrent.futures.Future[T]:
    """Start `coro` on `target` without waiting: a task when we are on that loop, else a
    thread-safe future. Both take `add_done_callback` and `cancel`."""
    if on_loop_thread(target):
        return target.create_task(coro)
    return submit(target, coro)


def submit(target: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Start `coro` on `target`, a loop that runs on another thread; a thread-safe future of its
    outcome (wait for it with `future.result(timeout)`)."""
    return asyncio.run_coroutine_threadsafe(coro, target)


def block(ended: threading.Event, limit: float | None = None) -> None:
    """Wait for `ended` (at most `limit` s) in short steps, so Ctrl-C is handled at once; on a
    kernel's main thread the widgets' messages that arrived meanwhile are handled between steps."""
    deadline = None if limit is None else time.monotonic() + limit
    with uievents.pumping() as pump:
        while not ended.wait(POLL):
            if deadline is not None and time.monotonic() > deadline:
                return
            pump()
