"""The polled backend and the error tree without a server: scripted replies stand in for the
serverless / Model API endpoints and for the Server API's machine status."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import runcomfy_nb as rc
from runcomfy_nb.clients.machines import Machine, MachineInfo, Machines
from runcomfy_nb.clients.models import Models
from runcomfy_nb.errors import transient
from runcomfy_nb.polled import PolledRequests, Request, read_result, read_status
from runcomfy_nb.status import Status


class Scripted:
    """A transport whose `request` answers from a list per action (the last answer repeats)."""

    def __init__(self, **answers: list[Any]) -> None:
        self.answers = {action: iter_last(replies) for action, replies in answers.items()}
        self.calls: list[tuple[str, str]] = []
        self.base_url = "https://api.example.invalid"

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self.calls.append((method, path))
        action = path.rsplit("/", 1)[-1] if "/requests/" in path or "/inference" in path else path
        return next(self.answers.get(action) or self.answers["*"])

    async def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer as a response (what `Machines` reads a `Date` header from)."""
        return httpx.Response(200, json=await self.request(method, path, **kwargs))


def iter_last(replies: list[Any]) -> Iterator[Any]:
    yield from replies
    while True:
        yield replies[-1]


def test_an_unreadable_reply_is_an_unexpected_reply_and_transient() -> None:
    for odd in ({"request_id": "r"}, {"status": ""}, "<html>502</html>", None):
        with pytest.raises(rc.UnexpectedReply, match="unreadable") as caught:
            read_result("r", odd, None)
        assert caught.value.status == 200 and transient(caught.value)
    assert transient(rc.UnexpectedReply("no field"))
    assert not transient(rc.APIError("refused", status=409))
    assert read_status("r", {"status": "in_queue", "queue_position": 2}).queue_position == 2


async def test_a_polled_run_reads_past_an_unreadable_status() -> None:
    replies = Scripted(status=["<html>proxy</html>", {"status": "in_progress"}, {"status": "completed"}],
                       result=[{"status": "succeeded", "output": {"image": "https://x.org/a.png"}}])
    models = Models(replies, None)  # type: ignore[arg-type]
    job = models.attach("req-1", model_id="owner/model")
    result = await job.result(timeout=20)
    assert [m.url for m in result.media] == ["https://x.org/a.png"]
    assert job.status is Status.SUCCEEDED and job in models.followed
    assert [c for c in replies.calls if c[1].endswith("/result")] == [("GET", "/v1/requests/req-1/result")]


async def test_a_submit_reply_without_a_request_id_is_an_unexpected_reply() -> None:
    models = Models(Scripted(**{"*": [{"ok": True}]}), None)  # type: ignore[arg-type]
    with pytest.raises(rc.UnexpectedReply, match="returned no request_id"):
        await models.submit("owner/model", {"prompt": "a fox"})
    assert not models.followed


async def test_requests_send_their_action() -> None:
    sent: list[tuple[str, str, dict[str, Any]]] = []

    async def send(method: str, action: str, **kwargs: Any) -> Any:
        sent.append((method, action, kwargs))
        return {"outcome": "cancelled"} if action == "cancel" else {"status": "in_queue"}

    request = Request("r9", send, None)  # type: ignore[arg-type]
    assert (await request.status()).status is Status.QUEUED
    assert await request.cancel() is True
    assert sent == [("GET", "status", {}), ("POST", "cancel", {"idempotent": True})]
    assert PolledRequests().durations("a") is not PolledRequests().durations("a")


def machine(status: str | list[Any]) -> Machine:
    return Machine(machines(status), MachineInfo(server_id="m-123456789", state="starting",
                                                 raw_status="Starting"))


def machines(status: str | list[Any]) -> Machines:
    replies = Scripted(**{"*": status if isinstance(status, list) else [{"current_status": status}]})
    return Machines(replies, "user-1", notify=lambda _: None)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", ["Error", "Deleting"])
async def test_a_machine_that_fails_or_stops_raises_machine_failed(status: str) -> None:
    with pytest.raises(rc.MachineFailed, match="will not become ready"):
        await machine(status).wait_ready(timeout=5, poll=0.01)


async def test_a_machine_not_ready_in_time_raises_job_timeout() -> None:
    with pytest.raises(rc.JobTimeout, match="not ready after") as caught:
        await machine([{"current_status": "Starting"}]).wait_ready(timeout=0.05, poll=0.01)
    assert isinstance(caught.value, TimeoutError)


async def test_a_machine_status_without_a_status_is_an_unexpected_reply_polled_again() -> None:
    ready = {"current_status": "Ready", "main_service_url": "https://m.example.invalid"}
    with pytest.raises(rc.UnexpectedReply, match="without a machine status") as caught:
        await machines([{"server_id": "m-123456789"}]).status("m-123456789")
    assert transient(caught.value)
    waited = machine([{"server_id": "m-123456789"}, {"server_id": "m-123456789"}, ready])
    assert (await waited.wait_ready(timeout=5, poll=0.01)).state == "ready"
