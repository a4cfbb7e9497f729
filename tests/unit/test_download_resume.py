"""Resumed downloads without a network (an `httpx.MockTransport` playing a file server): a cut
answer is continued with `Range` + `If-Range`, and every answer that cannot continue it (200, 416,
a 206 of another range, length or version) restarts from byte 0. Nothing partial is kept."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from runcomfy_nb.errors import TransportError
from runcomfy_nb.media import Media
from runcomfy_nb.storage import Storage

DATA = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable
URL = "https://storage.example/out/a.png"
ETAG = '"v1"'


@dataclass
class FileServer:
    """Serves DATA. `cut`: how many answers send half their body (after announcing all of it);
    `ranges`: honour Range; `bad_range`: the Content-Range a 206 claims instead of the true one;
    `status_for_range`: answer a ranged request with this status instead."""

    cut: int = 0
    ranges: bool = True
    etag: str | None = ETAG
    last_modified: str | None = None
    bad_range: str | None = None
    status_for_range: int | None = None
    requests: list[httpx.Request] = field(default_factory=list)
    sent: int = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        headers = {"accept-ranges": "bytes"} if self.ranges else {}
        if self.etag:
            headers["etag"] = self.etag
        if self.last_modified:
            headers["last-modified"] = self.last_modified
        status, body = 200, DATA
        asked = re.fullmatch(r"bytes=(\d+)-", request.headers.get("range", ""))
        if asked and self.ranges:
            if self.status_for_range is not None:
                return httpx.Response(self.status_for_range,
                                      headers={"content-range": f"bytes */{len(DATA)}"})
            start = int(asked.group(1))
            status, body = 206, DATA[start:]
            headers["content-range"] = self.bad_range or f"bytes {start}-{len(DATA) - 1}/{len(DATA)}"
        headers["content-length"] = str(len(body))
        if self.cut:
            self.cut -= 1
            body = body[: len(body) // 2]
        self.sent += len(body)
        return httpx.Response(status, content=body, headers=headers)

    def ranges_asked(self) -> list[str | None]:
        return [r.headers.get("range") for r in self.requests]


async def fetch(server: FileServer, tmp_path: Path | None = None) -> bytes:
    storage = Storage(http_transport=httpx.MockTransport(server))
    try:
        if tmp_path is None:
            return await storage.read(Media.from_url(URL))
        path = await storage.save(Media.from_url(URL), tmp_path / "a.png")
        assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no .part left beside it
        return path.read_bytes()
    finally:
        await storage.aclose()


async def test_a_cut_download_resumes_from_where_it_stopped(tmp_path: Path) -> None:
    server = FileServer(cut=1)
    assert await fetch(server, tmp_path) == DATA
    assert server.ranges_asked() == [None, "bytes=512-"]
    assert server.requests[1].headers["if-range"] == ETAG
    assert server.sent < 2 * len(DATA)


async def test_a_download_cut_twice_resumes_twice() -> None:
    server = FileServer(cut=2)
    assert await fetch(server) == DATA
    assert server.ranges_asked() == [None, "bytes=512-", "bytes=768-"]
    assert server.sent == len(DATA)  # each byte was sent once


async def test_without_an_etag_if_range_is_the_last_modified_date() -> None:
    date = "Wed, 02 Dec 2026 10:00:00 GMT"
    server = FileServer(cut=1, etag='W/"weak"', last_modified=date)  # a weak ETag may not be used
    assert await fetch(server) == DATA
    assert server.requests[1].headers["if-range"] == date


async def test_a_server_ignoring_range_restarts_the_file(tmp_path: Path) -> None:
    server = FileServer(cut=1, ranges=False)
    assert await fetch(server, tmp_path) == DATA
    assert len(server.requests) == 2 and server.ranges_asked()[1] == "bytes=512-"


@pytest.mark.parametrize("claimed", ["bytes 0-1023/1024", "bytes 512-1023/2048", "bytes 512-2000/1024",
                                     "bytes */1024", "pages 512-1023/1024", "bytes 512-1023/*"])
async def test_a_206_that_does_not_continue_the_file_restarts_it(claimed: str, tmp_path: Path) -> None:
    server = FileServer(cut=1, bad_range=claimed)
    assert await fetch(server, tmp_path) == DATA
    assert server.ranges_asked() == [None, "bytes=512-", None]  # the restart is at once, no retry


async def test_a_206_of_another_version_restarts_it() -> None:
    class Changed(FileServer):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            if "range" in request.headers:
                self.etag = '"v2"'  # a server that ignores If-Range sends the new version's part
            return super().__call__(request)

    server = Changed(cut=1)
    assert await fetch(server) == DATA
    assert server.ranges_asked() == [None, "bytes=512-", None]


async def test_416_restarts_from_zero() -> None:
    server = FileServer(cut=1, status_for_range=416)
    assert await fetch(server) == DATA
    assert server.ranges_asked() == [None, "bytes=512-", None]


async def test_cut_more_often_than_the_retries_allow_keeps_nothing(tmp_path: Path) -> None:
    server = FileServer(cut=100)
    storage = Storage(http_transport=httpx.MockTransport(server))
    try:
        with pytest.raises(TransportError, match=r"truncated: \d+ of \d+ bytes\. Nothing was written"):
            await storage.save(Media.from_url(URL), tmp_path / "a.png")
    finally:
        await storage.aclose()
    assert list(tmp_path.iterdir()) == []
    assert len(server.requests) == 3  # the test budget (tests/conftest.py), each one resumed
    assert all(r is not None for r in server.ranges_asked()[1:])


async def test_a_206_to_a_whole_file_request_is_refused() -> None:
    def always_partial(request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, content=DATA[:10], headers={"content-range": "bytes 0-9/1024"})

    storage = Storage(http_transport=httpx.MockTransport(always_partial))
    try:
        with pytest.raises(TransportError, match="a part"):
            await storage.read(Media.from_url(URL))
    finally:
        await storage.aclose()
