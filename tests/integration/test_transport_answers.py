"""The transport over a real socket: a retried call logs one warning line, and no log line of ours,
httpx's or httpcore's (which logs the host it connects to) holds the URL or the token.

The error mapping and the retry rule are unit tests (tests/unit/test_transport.py, test_downloads.py,
through an httpx.MockTransport); here the server is a small aiohttp double on 127.0.0.1."""

from __future__ import annotations

import logging

import pytest
import stamina
from aiohttp import web

from runcomfy_nb.config import Secret
from runcomfy_nb.transport import Transport

TOKEN = "rc_transport_SENTINEL_c3d4"


async def test_a_retried_get_logs_one_warning_line_and_no_url(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request.method)
        return web.json_response({"ok": True}) if len(seen) > 3 else web.json_response({}, status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    caplog.set_level(logging.DEBUG)
    http = Transport(url, service="Socket API", auth={"Authorization": Secret(TOKEN)}, auth_scheme="Bearer ")
    try:
        with stamina.set_testing(True, attempts=5):
            assert await http.request("GET", "/status") == {"ok": True}
    finally:
        await http.aclose()
        await runner.cleanup()
    assert seen == ["GET"] * 4
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    line = warnings[0].getMessage()
    assert "Socket API" in line and "retry" in line.lower()
    assert any(r.name.startswith("httpcore") for r in caplog.records)
    everything = " ".join(r.getMessage() + repr(r.__dict__) for r in caplog.records if r.name != "httpx")
    assert url.split("//")[1] not in everything and TOKEN not in everything
