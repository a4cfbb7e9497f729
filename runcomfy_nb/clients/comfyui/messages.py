"""The text of ComfyUI's refusals and failures: a rejected prompt, a failed node, a lost socket."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ...errors import ValidationError
from .replies import as_mapping

SERVICE = "ComfyUI server"


class PromptRejected(ValidationError):
    """The server refused the prompt (`/prompt` answered 400); `.detail` is its error body."""

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.detail = detail


def short(text: Any, limit: int = 240) -> str:
    """`text` on one line, cut to `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def node_name(nodes: Mapping[str, Any], node_id: str, class_type: Any = None) -> str:
    """`node 3 "Title" (KSampler)`, or as much of it as is known."""
    node = as_mapping(nodes.get(node_id))
    cls = node.get("class_type") or class_type
    title = as_mapping(node.get("_meta")).get("title")
    if title and cls and title != cls:
        return f'node {node_id} "{title}" ({cls})'
    return f"node {node_id} ({cls})" if cls else f"node {node_id}"


def _input_errors(name: str, errors: Any) -> list[str]:
    """One line per error of one node's inputs."""
    lines = []
    for err in errors or [{}]:
        err = err if isinstance(err, Mapping) else {"message": str(err)}
        extra = as_mapping(err.get("extra_info"))
        where = f"{name}, input {extra['input_name']!r}" if extra.get("input_name") else name
        what = str(err.get("message") or err.get("type") or "invalid").strip().rstrip(".")
        details = err.get("details")
        text = f"{what}: {short(details)}" if details and str(details) not in what else what
        lines.append(f"  - {where}: {text}")
    return lines


def rejection_message(body: Mapping[str, Any], nodes: Mapping[str, Any], service: str = SERVICE) -> str:
    """One readable text for a `/prompt` 400: the error, then one line per bad node input."""
    error = as_mapping(body.get("error"))
    head = str(error.get("message") or body.get("error") or "the prompt is invalid").strip().rstrip(".")
    lines = []
    for node_id, info in as_mapping(body.get("node_errors")).items():
        info = as_mapping(info)
        lines += _input_errors(node_name(nodes, str(node_id), info.get("class_type")), info.get("errors"))
    if lines:
        return f"The {service} rejected the prompt ({head}):\n" + "\n".join(lines)
    details = error.get("details")
    more = f": {short(details)}" if details and str(details) not in head else ""
    return f"The {service} rejected the prompt ({head}{more})."


def execution_error_message(data: Mapping[str, Any], nodes: Mapping[str, Any], run: str = "ComfyUI") -> str:
    """Text for an `execution_error` (WebSocket or history): node, exception type and message."""
    node_id = data.get("node_id")
    where = node_name(nodes, str(node_id), data.get("node_type")) if node_id is not None else "a node"
    kind = data.get("exception_type") or "error"
    message = str(data.get("exception_message") or "no message").strip()
    return f"The {run} run failed at {where}: {kind}: {message}"


def socket_reason(exc: BaseException) -> str:
    """Why a WebSocket failed, in words that cannot carry the URL (websockets puts the URI into
    some messages)."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return type(exc).__name__
