"""Downloads that survive the network, on real sockets: the emulator's storage and ComfyUI /view cut
an answer short (`truncate`), and the download resumes with `Range` (or restarts under `no_range`),
the bytes identical, nothing partial left; the same against the independent ComfyUI double."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import runcomfy_nb as rc
from runcomfy_nb.clients.comfyui import AsyncComfyUI
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.app import load_config
from runcomfy_nb.media import Media
from runcomfy_nb.storage import Storage

from ..doubles.comfyui_double import ComfyDouble
from ..helpers import TOKEN
from .test_comfyui_client import workflow

FLUX = "dep-flux-kontext"


class _Counted(httpx.AsyncByteStream):
    def __init__(self, inner: Any, wire: Wire) -> None:
        self._inner, self._wire = inner, wire

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._wire.received += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class Wire(httpx.AsyncBaseTransport):
    """The real network transport, counting the body bytes that arrived and the Range asked."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.received = 0
        self.ranges: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.ranges.append(request.headers.get("range"))
        response = await self._inner.handle_async_request(request)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_Counted(response.stream, self), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    config = load_config(None)
    config["machines"].update(rate_per_second=0, ready_seconds=1, deleting_seconds=1)
    with Emulator(speed=50.0, token=TOKEN, config=config) as emulator:
        yield emulator


@pytest.fixture
async def output(emu: Emulator) -> tuple[str, bytes]:
    """A serverless output's URL and its bytes."""
    emu.clear_faults()
    async with rc.AsyncRunComfy(token=TOKEN, base_url=emu.url) as client:
        result = await (await client.deployments.submit(FLUX, {})).result(30)
    url = result.media[0].url
    return url, httpx.get(url).content


def resumed_at(header: str | None, size: int) -> bool:
    """A Range continuing a cut answer: from what arrived (at most the half the fault sent; a
    connection's abort may drop what was still buffered) to the end."""
    start = (header or "").removeprefix("bytes=").removesuffix("-")
    return header == f"bytes={start}-" and start.isdigit() and 0 < int(start) <= size // 2


def served(emu: Emulator, url: str) -> list[int]:
    """The statuses the emulator answered the file's requests with (0: cut off)."""
    path = httpx.URL(url).path
    return [r.status for r in emu.log if r.path == path][1:]  # after the fixture's own GET


async def save(url: str, tmp_path: Path, wire: Wire) -> Path:
    storage = Storage(http_transport=wire)
    try:
        return await storage.save(Media.from_url(url), tmp_path / "out.png")
    finally:
        await storage.aclose()


async def test_a_cut_download_resumes_with_range(emu: Emulator, output: tuple[str, bytes],
                                                 tmp_path: Path) -> None:
    url, whole = output
    emu.set_fault("*", "truncate", count=1)
    wire = Wire()
    path = await save(url, tmp_path, wire)
    assert path.read_bytes() == whole and [p.name for p in tmp_path.iterdir()] == ["out.png"]
    assert len(wire.ranges) == 2 and wire.ranges[0] is None and resumed_at(wire.ranges[1], len(whole))
    assert served(emu, url) == [0, 206]
    assert wire.received < 2 * len(whole)


async def test_a_download_cut_twice_resumes_twice(emu: Emulator, output: tuple[str, bytes],
                                                  tmp_path: Path) -> None:
    url, whole = output
    emu.set_fault("*", "truncate", count=2)  # the second cut is of the ranged answer
    wire = Wire()
    assert (await save(url, tmp_path, wire)).read_bytes() == whole
    assert served(emu, url) == [0, 0, 206] and len(wire.ranges) == 3 and None not in wire.ranges[1:]


async def test_without_range_support_a_cut_download_restarts(emu: Emulator, output: tuple[str, bytes],
                                                             tmp_path: Path) -> None:
    url, whole = output
    emu.set_fault("*", "no_range", count=-1)
    emu.set_fault("*", "truncate", count=1)
    wire = Wire()
    assert (await save(url, tmp_path, wire)).read_bytes() == whole
    assert wire.ranges[1] is not None and served(emu, url) == [0, 200]
    emu.clear_faults()


async def test_cut_more_often_than_the_retries_allow_leaves_nothing(emu: Emulator, output: tuple[str, bytes],
                                                                    tmp_path: Path) -> None:
    url, _ = output
    emu.set_fault("*", "truncate", count=-1)
    with pytest.raises(rc.TransportError, match=r"truncated.*Nothing was written"):
        await save(url, tmp_path, Wire())
    emu.clear_faults()
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a .part
    assert served(emu, url) == [0, 0, 0]  # the test retry budget, every retry ranged


def test_the_emulators_storage_serves_byte_ranges(emu: Emulator, output: tuple[str, bytes]) -> None:
    url, whole = output
    plain = httpx.get(url)
    etag = plain.headers["etag"]
    assert plain.headers["accept-ranges"] == "bytes" and etag.startswith('"')
    part = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == whole[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(whole)}"
    assert httpx.get(url, headers={"Range": "bytes=-5"}).content == whole[-5:]
    assert httpx.get(url, headers={"Range": "bytes=100-", "If-Range": etag}).content == whole[100:]
    changed = httpx.get(url, headers={"Range": "bytes=100-", "If-Range": '"other"'})
    assert changed.status_code == 200 and changed.content == whole
    assert httpx.get(url, headers={"Range": "bytes=0-1,5-6"}).status_code == 200  # one range only
    past = httpx.get(url, headers={"Range": f"bytes={len(whole)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(whole)}"


async def test_comfyui_view_resumes(emu: Emulator, tmp_path: Path) -> None:
    emu.clear_faults()
    version = next(w["version_id"] for w in load_config(None)["workflows"] if w["preset"] == "image")
    async with rc.AsyncRunComfy(token=TOKEN, base_url=emu.url, user_id=emu.user_id) as client:
        machine = await client.machines.launch(version, server_type="large", duration="1h")
        try:
            await machine.wait_ready(timeout=15, poll=0.05)
            comfy = machine.comfyui()
            assert isinstance(comfy, AsyncComfyUI)
            async with comfy:
                result = await (await comfy.queue(emu.machine_workflow(version))).result(timeout=30)
                whole = await result.media[0].read()
                emu.set_fault(machine.id, "truncate", count=1)
                path = await result.media[0].save(tmp_path)
                assert [p.name for p in tmp_path.iterdir()] == [path.name]
                assert await result.media[0].read() == whole
                views = [r.status for r in emu.log if r.path.endswith(f"/machines/{machine.id}/view")]
                assert views[-3:] == [0, 206, 200]  # cut, resumed, then read whole
        finally:
            await machine.stop()


async def test_the_comfyui_double_view_resumes_with_aiohttps_ranges(tmp_path: Path) -> None:
    async with ComfyDouble() as double, AsyncComfyUI(double.url) as comfy:
        result = await (await comfy.queue(workflow())).result(timeout=10)
        stored = double.files[("output", "", "nb_00001_.png")]
        double.view_truncate = 1
        assert await result.media[0].read() == stored
        assert len(double.view_ranges) == 2 and resumed_at(double.view_ranges[1], len(stored))
        double.view_truncate = 1
        wire = Wire()  # the same on a counted wire: aiohttp answered the Range with the rest only
        path = await save(result.media[0].url, tmp_path, wire)
        assert path.read_bytes() == stored and wire.received < 2 * len(stored)
        assert len(wire.ranges) == 2 and resumed_at(wire.ranges[1], len(stored))
