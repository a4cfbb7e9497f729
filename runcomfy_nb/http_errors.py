"""Error replies to the error tree: the APIError for an HTTP error status or an error body (also in
a 2xx), with the server's message and details of any shape in one bounded line."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx

from .errors import (
    APIError,
    AuthError,
    BadRequest,
    NotFound,
    PaymentRequired,
    RateLimited,
    ServerError,
)


def _message(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("error_message", "message", "error", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return value["message"]
    if isinstance(body, str) and body.strip() and len(body) < 300 and "<" not in body:
        return body.strip()
    return ""


MAX_DETAIL = 600  # characters of error details in a message


def _texts(value: Any, depth: int = 0) -> list[str]:
    """The messages in error details of any shape the APIs use: text, a list of texts, FastAPI's
    `{loc, msg}` items, `{message, details}` objects, or a dict of errors per node or per field."""
    if value is None or value == "" or depth > 6:
        return []
    if isinstance(value, list):
        return [text for item in value for text in _texts(item, depth + 1)]
    if not isinstance(value, dict):
        return [" ".join(str(value).split())]
    if "msg" in value or "loc" in value:
        loc = ".".join(str(x) for x in value.get("loc") or [] if x != "body")
        msg = " ".join(str(value.get("msg") or "").split())
        return [f"{loc}: {msg}" if loc and msg else loc or msg]
    if {"message", "error_message", "details", "errors"} & value.keys():
        head = " ".join(str(value.get("message") or value.get("error_message") or "").split())
        inner = _texts(value.get("details"), depth + 1) + _texts(value.get("errors"), depth + 1)
        return [f"{head}: {text}" if head else text for text in inner] or ([head] if head else [])
    texts = []
    for key, item in value.items():
        name = f"{key} ({item['class_type']})" if isinstance(item, dict) and item.get("class_type") else key
        texts += [f"{name}: {text}" for text in _texts(item, depth + 1)]
    return texts


def _detail(body: Any) -> str:
    """The error details of a body, one line, at most MAX_DETAIL characters."""
    if not isinstance(body, dict):
        return ""
    sources = [body.get("details"), body.get("detail"), body.get("node_errors")]
    if isinstance(body.get("error"), dict):
        sources += [body["error"].get("details"), body["error"].get("errors")]
    parts: list[str] = []
    for text in (t for source in sources for t in _texts(source)):
        if text and text not in parts:
            parts.append(text)
    joined = "; ".join(parts)
    return joined if len(joined) <= MAX_DETAIL else joined[: MAX_DETAIL - 1].rstrip() + "…"


# Codes whose meaning the HTTP status may not carry (a 2xx body-level error, or a plain 400):
# serverless InsufficientFunds, DisabledDeployment (a refusal: 409) and DeletedDeployment (404),
# Model API InsufficientResources and UserAccountError.
_CODE_KIND = {10001: 402, 10002: 409, 10003: 404, 400002: 402, 400004: 401}


# String codes of a server failure (some replies carry them in a 2xx body): a ServerError, which
# idempotent calls retry; a paid POST is never sent again for it.
_SERVER_CODES = {"internal_error": 500, "internal_server_error": 500, "server_error": 500,
                 "bad_gateway": 502, "service_unavailable": 503, "gateway_timeout": 504}


def _error_code(body: Any) -> int | str | None:
    code = body.get("error_code") if isinstance(body, dict) else None
    if isinstance(code, str) and code.strip().isdigit():
        return int(code)  # codes come as strings as well as integers
    return code if isinstance(code, (int, str)) and not isinstance(code, bool) else None


def api_error(status: int, body: Any, headers: Mapping[str, str], service: str) -> APIError:
    """The exception for an HTTP error status or a body-level `error_code`."""
    code = _error_code(body)
    kind = status
    if isinstance(code, int) and code in _CODE_KIND and status <= 400:
        kind = _CODE_KIND[code]
    elif isinstance(code, int) and status < 400:  # body-level error in a 2xx reply
        kind = code // 1000 if code >= 100000 else 400
    elif isinstance(code, str) and status < 400:
        kind = _SERVER_CODES.get(code.strip().lower(), status)
    text = _message(body)
    detail = _detail(body)
    reason = (f"{text} ({detail})" if detail not in text else text) if text and detail else text or detail
    kw: dict[str, Any] = {"status": status, "code": code, "detail": body}
    if kind in (401, 403):
        what = "rejected the credentials" if kind == 401 else "refused access"
        hint = (" Check RUNCOMFY_TOKEN (Token1 or Token2 from your RunComfy profile) and that the "
                "resource is yours." if service.startswith("RunComfy") else "")
        return AuthError(f"{service} {what} ({kind}{'' if not reason else ': ' + reason}).{hint}", **kw)
    if kind == 402:
        return PaymentRequired(
            f"{service}: insufficient balance ({reason or 'payment required'}). "
            "Top up your RunComfy balance, then submit again.", **kw)
    if kind == 429:
        retry_after = _retry_after(headers)
        wait = f" (the server asked to wait {retry_after:g} s)" if retry_after else ""
        return RateLimited(
            f"{service} is rate limiting these calls{wait}; retries ran out. Wait a little and "
            "try again, or make fewer calls at once.", retry_after=retry_after, **kw)
    if kind == 404:
        return NotFound(f"{service}: {reason or 'not found'}. Check the id.", **kw)
    if 400 <= kind < 500:
        return BadRequest(f"{service} rejected the request: {reason or f'HTTP {kind}'}", **kw)
    if kind >= 500 and status < 400:
        return ServerError(
            f"{service} answered HTTP {status} with an error ({code}{'' if not reason else ': ' + reason}); "
            "calls safe to repeat were retried, a submit was not sent again: check your recent jobs "
            "before submitting again.", **kw)
    if kind >= 500:
        return ServerError(
            f"{service} failed ({kind}{'' if not reason else ': ' + reason}); it was retried "
            "where that was safe. Try again in a minute.", **kw)
    return APIError(f"{service} answered with an error: {reason or code}", **kw)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def parse_body(response: httpx.Response) -> Any:
    """The body of a reply: JSON, else text, None when empty."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


# What a Transport is given to turn an error reply (status, body, headers, service) into the exception.
ErrorMapper = Callable[[int, Any, Mapping[str, str], str], APIError]
