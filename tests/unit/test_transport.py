"""The transport without a network (an `httpx.MockTransport`): every error reply maps to its class of
the error tree, and the retry rule holds: a GET is retried on 5xx, 429 (after its Retry-After) and
network failures; a paid POST is sent again only when the server provably never had it."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
import stamina

from runcomfy_nb.config import Secret
from runcomfy_nb.errors import (
    APIError,
    AuthError,
    BadRequest,
    NotFound,
    PaymentRequired,
    RateLimited,
    ServerError,
    SubmitUncertain,
    TransportError,
)
from runcomfy_nb.http_errors import api_error
from runcomfy_nb.http_policy import USER_AGENT
from runcomfy_nb.transport import Transport

from ..helpers import Replies

TOKEN = "rc_unit_transport_SENTINEL_7a1e"
BOOM = (500, {"message": "boom"}, {})
OK = (200, {"ok": True}, {})


def transport(replies: Replies, service: str = "Test API") -> Transport:
    return Transport("https://api.example", service=service, auth={"Authorization": Secret(TOKEN)},
                     auth_scheme="Bearer ", http_transport=httpx.MockTransport(replies))


async def call(replies: Replies, method: str = "GET", service: str = "Test API") -> Any:
    http = transport(replies, service)
    try:
        return await http.request(method, "/v1/thing", json={} if method == "POST" else None)
    finally:
        await http.aclose()


# --- error mapping: every status ---------------------------------------------------------------


@pytest.mark.parametrize(("status", "body", "cls", "words"), [
    (400, {"error_code": 400001, "error_message": "Invalid"}, BadRequest, "rejected the request: Invalid"),
    (400, "plain words", BadRequest, "plain words"),
    (401, {"error_code": 401001, "error_message": "Unauthorized"}, AuthError, "RUNCOMFY_TOKEN"),
    (403, {"message": "not yours"}, AuthError, "refused access (403: not yours)"),
    (402, {"error_code": 402001, "error_message": "Insufficient"}, PaymentRequired, "Top up"),
    (404, {"detail": "no such deployment"}, NotFound, "no such deployment"),
    (404, None, NotFound, "not found. Check the id"),
    (409, {"message": "busy"}, BadRequest, "busy"),
    (422, {"error_code": 422001, "error_message": "Invalid body",
           "detail": [{"loc": ["body", "overrides", "31"], "msg": "unknown node"}]},
     BadRequest, "overrides.31: unknown node"),
    (429, {"error_code": 429001}, RateLimited, "the server asked to wait 2 s"),
    (500, {"message": "boom"}, ServerError, "failed (500: boom)"),
    (502, "<html>bad gateway</html>", ServerError, "failed (502)"),
    (503, None, ServerError, "Try again in a minute"),
    (200, {"error_code": 10001, "error_message": "InsufficientFunds"}, PaymentRequired, "Top up"),
    (200, {"error_code": 10002, "error_message": "DisabledDeployment"}, BadRequest, "DisabledDeployment"),
    (200, {"error_code": 10003, "error_message": "DeletedDeployment"}, NotFound, "DeletedDeployment"),
    (400, {"error_code": 400004, "error_message": "UserAccountError"}, AuthError, "UserAccountError"),
    (200, {"error_code": 401001, "error_message": "bad token"}, AuthError, "bad token"),
    (200, {"error_code": "404001", "error_message": "gone"}, NotFound, "gone"),
    (200, {"error_code": 7, "error_message": "odd"}, BadRequest, "odd"),
    (200, {"error_code": "mystery", "error_message": "odd"}, APIError, "answered with an error: odd"),
])
def test_error_mapping(status: int, body: Any, cls: type, words: str) -> None:
    error = api_error(status, body, {"retry-after": "2"}, "RunComfy")
    assert type(error) is cls
    assert words in str(error) and "\n" not in str(error)
    assert error.status == status and error.detail == body


@pytest.mark.parametrize("code", ["internal_error", "server_error", "service_unavailable", "500001",
                                  " Bad_Gateway ", 500001])
def test_string_server_codes_in_a_200_are_server_errors(code: str | int) -> None:
    error = api_error(200, {"error_code": code, "error_message": "oops"}, {}, "RunComfy")
    assert isinstance(error, ServerError) and "oops" in str(error) and "not sent again" in str(error)


def test_auth_hint_only_for_runcomfy() -> None:
    assert "RUNCOMFY_TOKEN" not in str(api_error(401, {}, {}, "Comfy Cloud"))


@pytest.mark.parametrize(("headers", "after"), [
    ({"retry-after": "2.5"}, 2.5), ({}, None), ({"retry-after": "soon"}, None), ({"retry-after": "-3"}, 0.0)])
def test_rate_limited_keeps_retry_after(headers: dict[str, str], after: float | None) -> None:
    error = api_error(429, None, headers, "RunComfy")
    assert isinstance(error, RateLimited) and error.retry_after == after


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


# --- the transport: replies, auth and the retry rule -------------------------------------------


async def test_a_call_carries_auth_and_user_agent_and_returns_the_body() -> None:
    replies = Replies(OK)
    assert await call(replies) == {"ok": True}
    request = replies.requests[0]
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["User-Agent"] == USER_AGENT
    assert str(request.url) == "https://api.example/v1/thing"


async def test_text_and_empty_bodies() -> None:
    assert await call(Replies((200, "plain", {}))) == "plain"
    assert await call(Replies((204, None, {}))) is None


async def test_an_error_code_in_a_reply_not_sent_as_json_is_not_an_error() -> None:
    reply = (200, '{"error_code": 500}', {"content-type": "text/plain"})
    assert await call(Replies(reply)) == {"error_code": 500}


@pytest.mark.parametrize(("status", "cls"), [(400, BadRequest), (401, AuthError), (402, PaymentRequired),
                                             (404, NotFound), (422, BadRequest)])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_refusals_are_never_retried(status: int, cls: type, method: str) -> None:
    replies = Replies((status, {"message": "no"}, {}), OK)
    with pytest.raises(cls):
        await call(replies, method)
    assert replies.seen == [method]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_get_is_retried_on_5xx(status: int) -> None:
    replies = Replies((status, {"message": "boom"}, {}), (status, None, {}), OK)
    assert await call(replies) == {"ok": True}
    assert replies.seen == ["GET"] * 3


async def test_a_get_gives_up_after_its_attempts() -> None:
    replies = Replies(BOOM)
    with pytest.raises(ServerError, match="retried where that was safe"):
        await call(replies)
    assert replies.seen == ["GET"] * 3  # tests/conftest.py: 3 attempts


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "HEAD"])
async def test_idempotent_methods_are_retried(method: str) -> None:
    replies = Replies(BOOM, OK)
    await call(replies, method)
    assert replies.seen == [method] * 2


async def test_a_post_answered_5xx_is_never_resent() -> None:
    replies = Replies(BOOM, OK)
    with pytest.raises(ServerError):
        await call(replies, "POST")
    assert replies.seen == ["POST"]


async def test_a_200_error_body_is_retried_on_get_but_a_post_is_not_resent() -> None:
    odd = (200, {"error_code": "internal_error", "error_message": "Internal error"}, {})
    replies = Replies(odd, (200, {"status": "in_queue"}, {}))
    assert await call(replies) == {"status": "in_queue"}
    assert replies.seen == ["GET", "GET"]
    replies = Replies(odd, (200, {"request_id": "r1"}, {}))
    with pytest.raises(ServerError, match="not sent again"):
        await call(replies, "POST")
    assert replies.seen == ["POST"]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_429_is_retried_after_retry_after_even_for_a_post(method: str) -> None:
    replies = Replies((429, {"message": "slow down"}, {"Retry-After": "0"}), OK)
    assert await call(replies, method) == {"ok": True}
    assert replies.seen == [method] * 2


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_429_told_to_wait_too_long_gives_up_at_once(method: str) -> None:
    replies = Replies((429, {"message": "slow down"}, {"Retry-After": "3600"}), OK)
    with pytest.raises(RateLimited, match="3600 s") as raised:
        await call(replies, method)
    assert raised.value.retry_after == 3600 and replies.seen == [method]


async def test_429_retries_run_out() -> None:
    replies = Replies((429, None, {"Retry-After": "1"}))
    with pytest.raises(RateLimited, match="retries ran out"):
        await call(replies, "POST")
    assert replies.seen == ["POST"] * 3


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_connection_never_made_is_retried_even_for_a_post(method: str) -> None:
    replies = Replies(httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), OK)
    assert await call(replies, method) == {"ok": True}
    assert replies.seen == [method] * 3


async def test_connection_refused_is_clear() -> None:
    with pytest.raises(TransportError, match="Could not connect to Test API: connection refused"):
        await call(Replies(httpx.ConnectError("refused")), "POST")


async def test_a_get_without_an_answer_is_retried_then_gives_up() -> None:
    replies = Replies(httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("dropped"),
                      httpx.ReadError("reset"))
    with pytest.raises(TransportError, match="did not answer") as raised:
        await call(replies)
    assert not isinstance(raised.value, SubmitUncertain) and replies.seen == ["GET"] * 3


@pytest.mark.parametrize("failure", [httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("dropped")])
async def test_a_post_without_an_answer_is_never_resent(failure: Exception) -> None:
    replies = Replies(failure, OK)
    with pytest.raises(SubmitUncertain, match="NOT sent again"):
        await call(replies, "POST")
    assert replies.seen == ["POST"]


async def test_idempotent_can_be_said_per_call() -> None:
    replies = Replies(BOOM, OK)
    http = transport(replies)
    try:
        assert await http.request("POST", "/v1/status", json={}, idempotent=True) == {"ok": True}
    finally:
        await http.aclose()
    assert replies.seen == ["POST", "POST"]


async def test_an_api_brings_its_own_error_mapping() -> None:
    def errors(status: int, body: Any, headers: Any, service: str) -> APIError:
        return PaymentRequired(f"{service}: subscription inactive", status=status, detail=body)

    http = Transport("https://api.example", service="Cloud", errors=errors,
                     http_transport=httpx.MockTransport(Replies((429, {}, {}))))
    try:
        with pytest.raises(PaymentRequired, match="subscription inactive"):
            await http.request("GET", "/x")
    finally:
        await http.aclose()


# --- one warning line per outage ---------------------------------------------------------------


async def test_an_outage_logs_one_warning_line_across_calls(caplog: pytest.LogCaptureFixture) -> None:
    """Polls that each meet the same outage: one warning for the outage, not one per poll; once the
    server answers again (one INFO line), a new outage is worth a new line."""
    replies = Replies(*[BOOM] * 9, OK, BOOM, OK)
    caplog.set_level(logging.DEBUG)
    http = transport(replies, "Outage API")  # its own name: an outage lasts across tests too
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
    assert all("Outage API GET call failed (HTTP 500)" in w for w in warnings)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO
            and r.name == "runcomfy_nb"] == ["Outage API GET call answers again"] * 2
    everything = " ".join(r.getMessage() for r in caplog.records)
    assert "api.example" not in everything and TOKEN not in everything


async def test_a_retried_get_logs_one_warning_line(caplog: pytest.LogCaptureFixture) -> None:
    replies = Replies(*[BOOM] * 3, OK)
    caplog.set_level(logging.DEBUG)
    with stamina.set_testing(True, attempts=5):
        assert await call(replies, service="Retried API") == {"ok": True}
    assert replies.seen == ["GET"] * 4
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "retry" in warnings[0].getMessage().lower()
