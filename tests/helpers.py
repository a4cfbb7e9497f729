"""What the tests share besides fixtures: the emulator's token, waiting for a condition (`wait_for`
in blocking code, `until` in async code), counting submits, an IPython shell with the extension
loaded, workflows that several test files queue, and a script of HTTP replies for an
`httpx.MockTransport`."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from IPython.core.interactiveshell import InteractiveShell

if TYPE_CHECKING:
    from pathlib import Path

    from runcomfy_nb.emulator import Emulator

TOKEN = "rc_test_token_SENTINEL_5f2b9c0e7a"
POLL = 0.02  # seconds between two looks at a condition


def _timed_out(timeout: float, what: str, check: Callable[..., Any]) -> AssertionError:
    return AssertionError(f"timed out after {timeout:g} s waiting for {what or check}")


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Blocking: poll `check` until it returns something true, and return that; AssertionError
    (naming `what`) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what, check)
        time.sleep(POLL)
    return value


async def until(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Async: poll `check` (a function, or a coroutine function) until it returns something true,
    and return that; AssertionError (naming `what`) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what, check)
        await asyncio.sleep(POLL)


def image_workflow(*, steps: int = 3, prefix: str | None = None) -> dict[str, Any]:
    """The packaged image preset (sampler "31", SaveImage "9" with 2 images) with a fresh seed (so
    the sampler runs) and its own file prefix."""
    from runcomfy_nb.emulator.app import load_config

    wf: dict[str, Any] = copy.deepcopy(load_config(None)["presets"]["image"])
    wf["31"]["inputs"].update(steps=steps, seed=uuid.uuid4().int % 10**12)
    wf["9"]["inputs"]["filename_prefix"] = prefix or f"t{uuid.uuid4().hex[:8]}"
    return wf


def partner_workflow() -> dict[str, Any]:
    """A Partner (API) node with a fresh seed, saved by SaveImage "2"."""
    from runcomfy_nb.emulator.cloud import PARTNER_NODE

    return {"1": {"class_type": PARTNER_NODE,
                  "inputs": {"prompt": "a red fox in snow", "prompt_upsampling": False,
                             "seed": uuid.uuid4().int % 10**9, "aspect_ratio": "1:1", "raw": False}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "partner"}}}


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


def downloaded(path: Path) -> bytes:
    """A saved output's bytes as they were downloaded: the provenance embedded on save taken out."""
    from runcomfy_nb.provenance import without_provenance

    return without_provenance(path.read_bytes())
