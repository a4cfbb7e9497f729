"""Odd answers the transport must take in its stride: a download answered 429, error details in any
shape, an error body with a string code in a 200, and retries that log one line, not one an attempt.

The server is a small aiohttp double on 127.0.0.1 whose routes answer from a script of replies."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import stamina
from aiohttp import web

from runcomfy_nb.config import Secret
from runcomfy_nb.errors import BadRequest, RateLimited, ServerError
from runcomfy_nb.media import Media
from runcomfy_nb.transport import Storage, Transport, api_error

TOKEN = "rc_transport_SENTINEL_c3d4"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


class Script:
    """Replies to give, in order (the last one repeats), and the requests seen."""

    def __init__(self, *replies: tuple[int, Any, dict[str, str]]) -> None:
        self.replies = list(replies)
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.method)
        status, body, headers = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(body, bytes):
            return web.Response(status=status, body=body, headers=headers, content_type="image/png")
        return web.json_response(body, status=status, headers=headers)


@contextlib.asynccontextmanager
async def serve(script: Script) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", script.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def transport(url: str) -> Transport:
    return Transport(url, service="Test API", auth={"Authorization": Secret(TOKEN)}, auth_scheme="Bearer ")


# --- downloads ---------------------------------------------------------------------------------


async def test_download_answered_429_is_retried_after_retry_after() -> None:
    script = Script((429, {"message": "slow down"}, {"Retry-After": "0"}),
                    (429, {"message": "slow down"}, {"Retry-After": "0"}), (200, PNG, {}))
    async with serve(script) as url:
        storage = Storage()
        try:
            data = await storage.read(Media.from_url(f"{url}/out/a.png"))
        finally:
            await storage.aclose()
    assert data == PNG and script.seen == ["GET"] * 3


async def test_download_told_to_wait_too_long_gives_up_at_once() -> None:
    script = Script((429, {"message": "slow down"}, {"Retry-After": "3600"}), (200, PNG, {}))
    async with serve(script) as url:
        storage = Storage()
        try:
            with pytest.raises(RateLimited, match="3600 s"):
                await storage.read(Media.from_url(f"{url}/out/a.png"))
        finally:
            await storage.aclose()
    assert script.seen == ["GET"]


# --- error details in any shape ----------------------------------------------------------------

NODE_ERRORS = {"3": {"class_type": "KSampler", "dependent_outputs": ["9"],
                     "errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                 "details": "sampler_name: 'eulr' not in ['euler']", "extra_info": {}}]}}


@pytest.mark.parametrize(("body", "words"), [
    ({"error_code": 400001, "error_message": "Prompt outputs failed validation",
      "details": ["KSampler 3: sampler_name 'eulr' not in list", "SaveImage 9: no images"]},
     ["sampler_name 'eulr' not in list", "SaveImage 9: no images"]),
    ({"error_code": 400001, "error_message": "Invalid", "detail": ["seed must be an integer"]},
     ["seed must be an integer"]),
    ({"error_code": 422001, "error_message": "Invalid body",
      "detail": [{"loc": ["body", "overrides", "31"], "msg": "unknown node"}]},
     ["overrides.31: unknown node"]),
    ({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                "details": ["node 3: sampler_name"]}},
     ["Prompt outputs failed validation", "node 3: sampler_name"]),
    ({"error": {"message": "Prompt outputs failed validation", "details": ""}, "node_errors": NODE_ERRORS},
     ["KSampler", "sampler_name: 'eulr' not in ['euler']"]),
    ({"message": "Bad input", "detail": {"seed": "must be an integer", "steps": ["too large"]}},
     ["seed: must be an integer", "steps: too large"]),
])
def test_error_details_in_every_shape_reach_the_message(body: dict[str, Any], words: list[str]) -> None:
    error = api_error(400, body, {}, "RunComfy")
    assert isinstance(error, BadRequest)
    text = str(error)
    assert all(w in text for w in words), text
    assert "\n" not in text


def test_error_details_are_bounded() -> None:
    body = {"error_code": 400001, "error_message": "Invalid",
            "details": [f"problem {n} " * 20 for n in range(500)]}
    text = str(api_error(400, body, {}, "RunComfy"))
    assert "problem 0" in text and len(text) < 1200


# --- error bodies in a 2xx reply ---------------------------------------------------------------


@pytest.mark.parametrize("code", ["internal_error", "server_error", "service_unavailable", "500001"])
def test_string_server_codes_in_a_200_are_server_errors(code: str) -> None:
    error = api_error(200, {"error_code": code, "error_message": "oops"}, {}, "RunComfy")
    assert isinstance(error, ServerError) and "oops" in str(error)


async def test_a_200_error_body_is_retried_on_get_but_a_post_is_not_resent() -> None:
    odd = (200, {"error_code": "internal_error", "error_message": "Internal error"}, {})
    script = Script(odd, (200, {"status": "in_queue"}, {}))
    async with serve(script) as url:
        http = transport(url)
        try:
            assert await http.request("GET", "/status") == {"status": "in_queue"}
            assert script.seen == ["GET", "GET"]
            script.replies = [odd, (200, {"request_id": "r1"}, {})]
            with pytest.raises(ServerError, match="not sent again"):
                await http.request("POST", "/inference", json={})
            assert script.seen == ["GET", "GET", "POST"]
        finally:
            await http.aclose()


# --- one warning line for a retried call -------------------------------------------------------


async def test_a_retried_get_logs_one_warning_line(caplog: pytest.LogCaptureFixture) -> None:
    script = Script(*[(500, {"message": "boom"}, {})] * 3, (200, {"ok": True}, {}))
    caplog.set_level(logging.DEBUG)
    async with serve(script) as url:
        http = transport(url)
        try:
            with stamina.set_testing(True, attempts=5):
                assert await http.request("GET", "/status") == {"ok": True}
        finally:
            await http.aclose()
    assert script.seen == ["GET"] * 4
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    line = warnings[0].getMessage()
    assert "Test API" in line and "retry" in line.lower()
    everything = " ".join(r.getMessage() + repr(r.__dict__) for r in caplog.records if r.name != "httpx")
    assert url.split("//")[1] not in everything and TOKEN not in everything


async def test_an_outage_logs_one_warning_line_across_calls(caplog: pytest.LogCaptureFixture) -> None:
    """Polls that each meet the same outage: one warning for the outage, not one per poll; once the
    server answers again, a new outage is worth a new line."""
    failing = [(500, {"message": "boom"}, {})] * 3  # each call: 3 attempts, all failing
    ok = (200, {"ok": True}, {})
    script = Script(*failing, *failing, *failing, ok, failing[0], ok)
    caplog.set_level(logging.DEBUG)
    async with serve(script) as url:
        http = transport(url)
        try:
            for _ in range(3):
                with pytest.raises(ServerError):
                    await http.request("GET", "/status")
            assert await http.request("GET", "/status") == {"ok": True}
            assert await http.request("GET", "/status") == {"ok": True}  # a retry, then an answer
        finally:
            await http.aclose()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
