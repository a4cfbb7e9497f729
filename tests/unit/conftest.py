"""Unit tests open no network socket: a connect or bind to an internet address fails the test."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    original = {"connect": socket.socket.connect, "connect_ex": socket.socket.connect_ex,
                "bind": socket.socket.bind}
    for name in original:
        monkeypatch.setattr(socket.socket, name,
                            lambda self, *a, _n=name: _guard(self, _n, original, *a))
    yield


def _guard(sock: socket.socket, name: str, original: dict[str, Any], *args: Any) -> Any:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        raise AssertionError("a unit test opened a network socket: it belongs in tests/integration")
    return original[name](sock, *args)
