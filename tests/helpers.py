"""What the tests share besides fixtures: the emulator's token, waiting for a condition, counting
submits, and an IPython shell with the extension loaded."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from IPython.core.interactiveshell import InteractiveShell

from runcomfy_nb.emulator import Emulator

TOKEN = "rc_test_token_SENTINEL_5f2b9c0e7a"


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll `check` until it returns something true (returned), failing after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check}")
        time.sleep(0.05)
    return value


def posts(emulator: Emulator, deployment: str) -> int:
    return sum(1 for r in emulator.log
               if r.method == "POST" and r.path.endswith(f"/deployments/{deployment}/inference"))


@contextlib.contextmanager
def emulating_shell(speed: float, **env: str) -> Iterator[InteractiveShell]:
    """An IPython shell with the extension loaded and `%runcomfy emulate --speed SPEED` on, with
    these environment variables set meanwhile (e.g. sentinel tokens)."""
    mp = pytest.MonkeyPatch()
    for name, value in env.items():
        mp.setenv(name, value)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "runcomfy_nb")
    shell.run_line_magic("runcomfy", f"emulate --speed {speed:g}")
    try:
        yield shell
    finally:
        shell.run_line_magic("runcomfy", "emulate --stop")
        mp.undo()


def run_cell(ip: InteractiveShell, cell: str, capsys: pytest.CaptureFixture[str],
             *secrets: str) -> tuple[Any, str]:
    """Run a cell; its result and everything it printed, which must hold none of `secrets`."""
    result = ip.run_cell(cell)
    out = capsys.readouterr()
    text = out.out + out.err
    for secret in secrets:
        assert secret not in text
    return result, text


class Replies:
    """An `httpx.MockTransport` handler playing a script: replies `(status, body, headers)` in order
    (the last one repeats; a bytes body is sent as a PNG), an exception raised as that attempt's
    network failure. `seen` lists the methods of the requests, `requests` the requests."""

    def __init__(self, *replies: tuple[int, Any, dict[str, str]] | Exception) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    @property
    def seen(self) -> list[str]:
        return [request.method for request in self.requests]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        status, body, headers = reply
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers={"content-type": "image/png", **headers})
        if isinstance(body, str) and "content-type" in headers:
            return httpx.Response(status, text=body, headers=headers)
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body, headers=headers) if body is not None else (
            httpx.Response(status, headers=headers))
