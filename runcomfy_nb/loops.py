"""The one bridge between threads and event loops: the shared background loop of the blocking
facade, and handing a function or a coroutine to the loop an object lives on, from any thread.

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
