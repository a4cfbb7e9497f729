"""Widget messages while a cell blocks: the Cancel, Stop and Extend buttons must work during
`%%runcomfy run`, whose cell blocks the kernel's main thread until the job ends.

While a blocking call (`sync._wait`) waits on the kernel's main thread, `pumping()` reads the
messages that the main shell's zmq stream would have dispatched: comm messages (widget clicks
and state changes) go to the kernel's comm handlers at once; every other message (the next cell
of Run All, a completion request) is kept and handed to the stream's own callback, in order,
when the wait ends, so the kernel dispatches it after the cell as usual. Outside an ipykernel,
off its main thread, or nested in a handler the pump dispatched, nothing is read.

Why not jupyter-ui-poll: it drives `kernel.do_one_iteration()`, which ipykernel 7.1 removed
(it swallows the AttributeError, so with ipykernel 7 a click is never handled), and it runs the
kernel's handlers on a thread of its own. The stream used here is the one ipykernel's own GUI
event loops watch: `kernel.shell_stream` in ipykernel 6, the shell channel thread's pair to the
main thread in ipykernel 7 (`ipykernel.eventloops.get_shell_stream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("runcomfy_nb")

COMM_TYPES = frozenset({"comm_open", "comm_msg", "comm_close"})
_pumping = False  # True while a pump runs (main thread only): a handler that blocks again does not pump
_tasks: set[asyncio.Future[Any]] = set()  # the replayed messages' dispatches, kept until done


class _Pump:
    """Reads the main shell stream of `kernel` from the main thread, which owns it."""

    def __init__(self, kernel: Any, stream: Any, loop: asyncio.AbstractEventLoop) -> None:
        import zmq

        self._kernel = kernel
        self._stream = stream
        self._loop = loop
        self._callback = stream._recv_callback  # pyzmq keeps it there; public on_recv only sets it
        self._copy = bool(getattr(stream, "_recv_copy", False))
        self._again = zmq.Again
        self._noblock = zmq.NOBLOCK
        self._held: list[Any] = []

    def __call__(self) -> None:
        """Dispatch the comm messages that arrived; keep the others for `release`."""
        while True:
            try:
                frames = self._stream.socket.recv_multipart(self._noblock, copy=self._copy)
            except self._again:
                return
            if self._msg_type(frames) in COMM_TYPES:
                self._dispatch(frames)
            else:
                self._held.append(frames)

    def _msg_type(self, frames: list[Any]) -> str:
        session = self._kernel.session
        try:
            _, rest = session.feed_identities(frames, copy=self._copy)
            # content=False only peeks: the signature is checked, not recorded, so the kernel
            # can still take the message later
            return str(session.deserialize(rest, content=False, copy=self._copy)["header"]["msg_type"])
        except Exception:  # not ours to judge: the kernel reports a bad message when it reads it
            return ""

    def _dispatch(self, frames: list[Any]) -> None:
        session = self._kernel.session
        try:
            idents, rest = session.feed_identities(frames, copy=self._copy)
            msg = session.deserialize(rest, content=True, copy=self._copy)
            handler = self._kernel.shell_handlers.get(msg["header"]["msg_type"])
            if handler is None:
                return
            result = handler(self._stream, idents, msg)
            if inspect.isawaitable(result):  # not so in ipykernel 6 and 7; it runs after the cell then
                self._keep(asyncio.ensure_future(result))
        except Exception:  # as the kernel does: a failing widget handler is logged, not raised
            log.exception("a widget message could not be handled while a cell was blocking")

    def release(self) -> None:
        """Hand the kept messages to the stream's callback, oldest first, before the stream reads
        anything newer; then let the stream look for messages that came meanwhile."""
        held, self._held = self._held, []
        for frames in held:
            try:
                result = self._callback(frames)
            except Exception:
                log.exception("a kept kernel message could not be dispatched")
                continue
            if inspect.isawaitable(result):
                self._keep(asyncio.ensure_future(result))
        self._loop.call_soon(self._wake)

    def _wake(self) -> None:
        import zmq

        if not self._stream.closed():
            self._stream.flush(zmq.POLLIN)

    @staticmethod
    def _keep(task: asyncio.Future[Any]) -> None:
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)


def _nothing() -> None:
    return None


def _kernel_pump() -> _Pump | None:
    """A pump for the running kernel, when this is its main thread; else None."""
    if "ipykernel" not in sys.modules or threading.current_thread() is not threading.main_thread():
        return None
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        loop = asyncio.get_running_loop()
    except (ImportError, RuntimeError):
        return None
    if kernel is None or getattr(kernel, "session", None) is None:
        return None
    stream = _main_shell_stream(kernel)
    if (stream is None or stream.closed() or getattr(stream, "_recv_callback", None) is None
            or getattr(getattr(stream, "io_loop", None), "asyncio_loop", None) is not loop):
        return None  # not the main shell's stream on this thread's loop: leave it alone
    return _Pump(kernel, stream, loop)


def _main_shell_stream(kernel: Any) -> Any:
    if getattr(kernel, "shell_channel_thread", None) is None:  # ipykernel 6: the main loop reads it
        return getattr(kernel, "shell_stream", None)
    try:
        from ipykernel.eventloops import get_shell_stream
    except ImportError:  # ipykernel 7.0: no way in that we can rely on
        return None
    return get_shell_stream(kernel)


@contextlib.contextmanager
def pumping() -> Iterator[Callable[[], None]]:
    """A function to call often during a blocking wait: in a kernel's main thread it handles the
    widget messages that arrived (elsewhere it does nothing); on leaving, kept messages go back."""
    global _pumping
    pump = None if _pumping else _kernel_pump()  # never re-entered from a handler it dispatched
    if pump is None:
        yield _nothing
        return
    _pumping = True
    try:
        yield pump
    finally:
        _pumping = False
        pump.release()
