"""The transport's bound on calls in flight and its 429 hold, without a network (`httpx.MockTransport`)."""

from __future__ import annotations

import asyncio

import httpx

from runcomfy_nb.transport import Transport

from ..helpers import until


async def test_at_most_max_in_flight_calls_are_on_the_wire_and_none_fails_for_waiting() -> None:
    inside = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        for _ in range(5):  # let every other call that could get in do so
            await asyncio.sleep(0)
        inside -= 1
        return httpx.Response(200, json={"ok": True})

    http = Transport("https://api.example", service="Test API", max_in_flight=3,
                     http_transport=httpx.MockTransport(handler))
    try:
        replies = await asyncio.gather(*(http.request("GET", "/v1/thing") for _ in range(40)))
    finally:
        await http.aclose()
    assert replies == [{"ok": True}] * 40 and peak == 3


async def test_a_429_with_retry_after_holds_every_call() -> None:
    loop = asyncio.get_running_loop()
    sent: list[tuple[str, float]] = []
    refused = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, loop.time()))
        if request.url.path == "/first" and not refused.is_set():
            refused.set()
            return httpx.Response(429, json={"message": "slow down"}, headers={"Retry-After": "1"})
        return httpx.Response(200, json={"ok": True})

    http = Transport("https://api.example", service="Test API", http_transport=httpx.MockTransport(handler))
    try:
        first = asyncio.create_task(http.request("GET", "/first"))
        await refused.wait()
        assert await http.request("GET", "/other") == {"ok": True}
        assert await first == {"ok": True}
    finally:
        await http.aclose()
    refused_at = sent[0][1]
    assert [path for path, _ in sent] in (["/first", "/other", "/first"], ["/first", "/first", "/other"])
    assert all(at - refused_at >= 0.95 for _, at in sent[1:])  # neither was sent before the Retry-After


async def test_submits_leave_slots_for_status_calls() -> None:
    inside = {"POST": 0, "GET": 0}
    peak = {"POST": 0, "GET": 0}
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        inside[request.method] += 1
        peak[request.method] = max(peak[request.method], inside[request.method])
        if request.method == "POST":
            await release.wait()
        inside[request.method] -= 1
        return httpx.Response(200, json={"ok": True})

    http = Transport("https://api.example", service="Test API", max_in_flight=8,
                     http_transport=httpx.MockTransport(handler))
    try:
        submits = [asyncio.create_task(http.request("POST", "/v1/x", json={}, idempotent=False))
                   for _ in range(30)]
        await until(lambda: inside["POST"] == 6, what="six submits on the wire")
        assert await http.request("GET", "/v1/status") == {"ok": True}  # not stuck behind 30 submits
        release.set()
        await asyncio.gather(*submits)
    finally:
        await http.aclose()
    assert peak["POST"] == 6
