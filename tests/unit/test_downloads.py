"""Downloads without a network (an `httpx.MockTransport`): retried on 429 and truncation, never with
our credentials, following redirects, and saved without overwriting a file."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from runcomfy_nb.errors import NotFound, RateLimited, TransportError
from runcomfy_nb.media import Media
from runcomfy_nb.storage import Storage

from ..helpers import Replies

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
URL = "https://storage.example/out/a.png"


async def read(replies: Replies, url: str = URL) -> bytes:
    storage = Storage(http_transport=httpx.MockTransport(replies))
    try:
        return await storage.read(Media.from_url(url))
    finally:
        await storage.aclose()


async def test_a_download_carries_no_credentials() -> None:
    replies = Replies((200, PNG, {}))
    assert await read(replies) == PNG
    assert "authorization" not in replies.requests[0].headers


async def test_a_download_answered_429_is_retried_after_retry_after() -> None:
    slow = (429, {"message": "slow down"}, {"Retry-After": "0"})
    replies = Replies(slow, slow, (200, PNG, {}))
    assert await read(replies) == PNG and replies.seen == ["GET"] * 3


async def test_a_download_told_to_wait_too_long_gives_up_at_once() -> None:
    replies = Replies((429, {"message": "slow down"}, {"Retry-After": "3600"}), (200, PNG, {}))
    with pytest.raises(RateLimited, match="3600 s"):
        await read(replies)
    assert replies.seen == ["GET"]


async def test_a_missing_file_is_not_retried() -> None:
    replies = Replies((404, {"message": "no such file"}, {}))
    with pytest.raises(NotFound, match=r"Download of a\.png: no such file"):
        await read(replies)
    assert replies.seen == ["GET"]


async def test_redirects_are_followed() -> None:
    replies = Replies((302, None, {"location": "https://cdn.example/a.png"}), (200, PNG, {}))
    assert await read(replies) == PNG
    assert [str(r.url) for r in replies.requests] == [URL, "https://cdn.example/a.png"]


def truncated(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=PNG[:10], headers={"content-length": str(len(PNG))})


async def test_a_truncated_download_is_retried() -> None:
    replies = Replies((200, PNG[:10], {"content-length": str(len(PNG))}), (200, PNG, {}))
    assert await read(replies) == PNG and replies.seen == ["GET"] * 2


async def test_a_download_truncated_every_time_keeps_nothing(tmp_path: Path) -> None:
    storage = Storage(http_transport=httpx.MockTransport(truncated))
    try:
        with pytest.raises(TransportError, match=r"truncated: 10 of 72 bytes\. Nothing was kept"):
            await storage.read(Media.from_url(URL))
        with pytest.raises(TransportError, match="Nothing was written"):
            await storage.save(Media.from_url(URL), tmp_path / "a.png")
    finally:
        await storage.aclose()
    assert list(tmp_path.iterdir()) == []


async def test_save_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"mine")
    storage = Storage(http_transport=httpx.MockTransport(Replies((200, PNG, {}))))
    try:
        path = await storage.save(Media.from_url(URL), tmp_path / "a.png")
    finally:
        await storage.aclose()
    assert path == tmp_path / "a (1).png" and path.read_bytes() == PNG
    assert (tmp_path / "a.png").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a (1).png", "a.png"]
