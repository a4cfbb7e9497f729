"""The pure pieces of the ComfyUI package and Comfy Cloud's dialect: message text, reply parsing,
handshake retries, frame metadata, the shared socket's routing, and a SocketRun followed through
its narrow Server interface alone (no sockets)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from runcomfy_nb.clients.cloud_dialect import CloudDialect, cloud_error, cloud_failure_message
from runcomfy_nb.clients.comfyui import (
    Dialect,
    HistoryEntry,
    QueueStatus,
    SocketRun,
    execution_error_message,
    preview_metadata,
    rejection_message,
)
from runcomfy_nb.clients.comfyui.downloads import HeldBytes
from runcomfy_nb.clients.comfyui.replies import client_id_of, entry_status
from runcomfy_nb.clients.comfyui.sockets import Dropped, SharedSocket, retry_handshake
from runcomfy_nb.config import Secret
from runcomfy_nb.errors import RateLimited, SubscriptionInactive
from runcomfy_nb.events import NodeStarted, Progress, Started
from runcomfy_nb.jobs import Job
from runcomfy_nb.media import Fetcher, Media
from runcomfy_nb.status import Status
from runcomfy_nb.storage import Storage

from ..helpers import until

NODES = {"3": {"class_type": "KSampler", "_meta": {"title": "Sampler"}, "inputs": {}},
         "9": {"class_type": "SaveImage", "inputs": {}}}


# --- text ----------------------------------------------------------------------------------------


def test_a_rejection_names_each_bad_input() -> None:
    body = {"error": {"message": "Prompt outputs failed validation."},
            "node_errors": {"3": {"class_type": "KSampler", "errors": [
                {"message": "Value not in list", "details": "sampler_name: 'eulr' not in [...]",
                 "extra_info": {"input_name": "sampler_name"}}]}}}
    assert rejection_message(body, NODES) == (
        "The ComfyUI server rejected the prompt (Prompt outputs failed validation):\n"
        "  - node 3 \"Sampler\" (KSampler), input 'sampler_name': Value not in list: "
        "sampler_name: 'eulr' not in [...]")
    assert rejection_message({"error": {"message": "Prompt has no outputs", "details": ""}}, {},
                             "Comfy Cloud service") == (
        "The Comfy Cloud service rejected the prompt (Prompt has no outputs).")


def test_an_execution_error_names_node_type_and_message() -> None:
    data = {"node_id": "3", "exception_type": "RuntimeError", "exception_message": " CUDA out of memory "}
    assert execution_error_message(data, NODES) == (
        'The ComfyUI run failed at node 3 "Sampler" (KSampler): RuntimeError: CUDA out of memory')
    assert execution_error_message({}, {}).startswith("The ComfyUI run failed at a node: error")


def test_cloud_failures_say_what_to_do() -> None:
    oom = cloud_failure_message({"node_id": "3", "exception_type": "OOMError", "exception_message": "x"},
                                NODES)
    assert oom.startswith("The Comfy Cloud run failed at node 3") and "What to do: the GPU ran out" in oom
    login = cloud_failure_message({"exception_type": "Exception", "exception_message": "Please login"}, {})
    assert "Likely cause: this Partner Node needs your Comfy API key" in login
    assert cloud_failure_message({"exception_type": "Unheard"}, {}).endswith("Unheard: no message.")


def test_cloud_429_is_an_inactive_subscription_unless_it_asks_to_wait() -> None:
    assert isinstance(cloud_error(429, {"message": "no"}, {}, "Comfy Cloud"), SubscriptionInactive)
    assert isinstance(cloud_error(429, {"message": "slow down"}, {"retry-after": "2"}, "Comfy Cloud"),
                      RateLimited)


# --- replies -------------------------------------------------------------------------------------


def test_queue_status_orders_by_number_and_keeps_rows() -> None:
    status = QueueStatus.from_reply({"queue_running": [[5, "r", {}, {"client_id": "rcnb-1"}]],
                                     "queue_pending": [[9, "b"], [7, "a"], ["bad"]]})
    assert (status.running, status.pending) == (("r",), ("a", "b"))
    assert [status.position(p) for p in ("r", "a", "b", "zz")] == [0, 1, 2, None]
    assert "a" in status and client_id_of(status.items["r"]) == "rcnb-1" and client_id_of(["x"]) is None
    assert QueueStatus.from_reply("not json") == QueueStatus()


def test_a_history_entry_says_how_the_prompt_ended() -> None:
    error = {"exception_type": "E"}
    assert entry_status({"status": {"messages": [["execution_interrupted", {}]]}}) == (Status.CANCELLED, None)
    assert entry_status({"status": {"messages": [["execution_error", error]]}}) == (Status.FAILED, error)
    assert entry_status({"status": {"status_str": "error"}}) == (Status.FAILED, None)
    assert entry_status({}) == (Status.SUCCEEDED, None)


# --- the socket ----------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, status: int, headers: Mapping[str, str] | None = None) -> None:
        self.response = type("R", (), {"status_code": status, "headers": dict(headers or {})})()


def test_a_handshake_is_retried_after_connection_errors_5xx_and_429_only() -> None:
    assert retry_handshake(OSError()) is True and retry_handshake(ValueError()) is False
    assert retry_handshake(_Refused(404)) is False and retry_handshake(_Refused(503)) is True
    assert retry_handshake(_Refused(429, {"Retry-After": "3"})) == 3.0
    assert retry_handshake(_Refused(429, {"Retry-After": "600"})) == 10.0  # capped


def _preview(meta: dict[str, Any], image: bytes = b"jpeg") -> bytes:
    text = json.dumps(meta).encode()
    return struct.pack(">II", 4, len(text)) + text + image


def test_preview_metadata_reads_type_4_frames_only() -> None:
    meta = {"prompt_id": "p", "node_id": "3"}
    assert preview_metadata(_preview(meta)) == meta
    assert preview_metadata(struct.pack(">II", 1, 2) + b"jpeg") is None
    assert preview_metadata(struct.pack(">II", 4, 3) + b"{x}") is None and preview_metadata(b"") is None


def test_dialects_build_the_socket_url_and_keep_secrets_out_of_the_repr() -> None:
    assert Dialect().ws_url("https://m.example/abc", "rcnb-1") == "wss://m.example/abc/ws?clientId=rcnb-1"
    cloud = CloudDialect(Secret("k&y"))
    assert cloud.ws_url("http://h:1", "c") == "ws://h:1/ws?clientId=c&token=k%26y"
    assert Dialect().shown_as("https://secret.example") == "ComfyUI server"
    assert cloud.shown_as("https://cloud.comfy.org/") == "cloud.comfy.org/"


class _Listener:
    def __init__(self, prompt_id: str) -> None:
        self.prompt_id = prompt_id
        self.job: Job | None = None
        self.generation = 0
        self.got: list[Any] = []

    def deliver(self, item: Any) -> None:
        self.got.append(item)

    def adopt(self, ws: Any, generation: int) -> None:
        self.generation = generation

    def poke(self) -> None:
        pass


class _Opener:
    service = "Comfy Cloud service"
    running: tuple[str, ...] = ()

    async def open_socket(self, client_id: str) -> Any:
        raise OSError("no sockets in unit tests")

    def last_running(self) -> tuple[str, ...]:
        return self.running


def test_the_shared_socket_routes_by_prompt_id() -> None:
    opener = _Opener()
    shared = SharedSocket(opener)
    a, b, pending = _Listener("a"), _Listener("b"), _Listener("")
    shared.runs.update((a, b, pending))
    shared._route(json.dumps({"type": "executing", "data": {"prompt_id": "a", "node": "3"}}))
    shared._route(json.dumps({"type": "status", "data": {"status": {}}}))
    shared._route(_preview({"prompt_id": "b"}))
    assert [len(r.got) for r in (a, b, pending)] == [2, 2, 3]  # a submit on its way filters itself
    type1 = struct.pack(">II", 1, 1) + b"jpeg"
    shared._route(type1)  # nobody known to run: nobody gets it
    assert [len(r.got) for r in (a, b)] == [2, 2]
    opener.running = ("b",)
    shared._route(type1)
    assert b.got[-1] == type1 and len(a.got) == 2
    shared._route(json.dumps({"type": "execution_start", "data": {"prompt_id": "a"}}))
    shared._route(type1)  # two run now
    assert b.got.count(type1) == 1


# --- a run, through the Server interface alone ---------------------------------------------------


class _Server:
    """A stock server whose prompt "p" runs, then is in the history."""

    def __init__(self) -> None:
        self.dialect = Dialect()
        self.ended = False
        self.released: list[SocketRun] = []

    async def answering(self, timeout: float = 10.0) -> None:
        pass

    async def answers(self, timeout: float) -> bool:
        return True

    async def queue_status(self) -> QueueStatus:
        return QueueStatus() if self.ended else QueueStatus(running=("p",))

    async def queue_snapshot(self, max_age: float) -> QueueStatus:
        return await self.queue_status()

    async def delete_pending(self, prompt_ids: str | Iterable[str]) -> None:
        pass

    async def stop_running(self, prompt_id: str, status: QueueStatus) -> bool:
        return True

    def was_deleted(self, prompt_id: str) -> bool:
        return False

    async def outcome(self, prompt_id: str, nodes: Mapping[str, Any]) -> HistoryEntry | None:
        return HistoryEntry(prompt_id, Status.SUCCEEDED, text=["done"]) if self.ended else None

    async def locate(self, prompt_id: str, nodes: Mapping[str, Any]) -> HistoryEntry | Status | None:
        return await self.outcome(prompt_id, nodes)

    def outputs(self, outputs: Any) -> tuple[list[Media], list[str]]:
        return [], []

    def frame_fetcher(self, data: bytes) -> Fetcher:
        return HeldBytes(data, Storage())

    def release(self, run: SocketRun) -> None:
        self.released.append(run)


class _Feed:
    client_id = "rcnb-unit"
    reconnect_when_silent = True

    async def join(self, run: Any) -> None:
        run.adopt(object(), 1)

    async def rejoin(self, run: Any, retry: bool) -> None:
        await self.join(run)

    async def leave(self, run: Any) -> None:
        run.adopt(None, 2)


@pytest.mark.parametrize("frames", [True, False])
async def test_a_socket_run_follows_a_prompt_through_its_server_interface(frames: bool) -> None:
    server = _Server()
    run = SocketRun(server, _Feed(), NODES)
    run.prompt_id = "p"
    await run.connect()
    job = Job(run, kind="comfyui", id="p", label="unit")
    run.bind(job)
    if frames:
        for message in ({"type": "execution_start", "data": {"prompt_id": "p"}},
                        {"type": "executing", "data": {"prompt_id": "p", "node": "3"}},
                        {"type": "progress", "data": {"prompt_id": "p", "node": "3", "value": 1, "max": 2}},
                        {"type": "executing", "data": {"prompt_id": "other", "node": "9"}}):
            run.deliver(json.dumps(message))
        await until(lambda: any(isinstance(e, Progress) for e in job.history), what="the progress")
    else:
        await until(lambda: job.status is Status.RUNNING, what="the run seen in /queue")
    server.ended = True
    run.deliver(json.dumps({"type": "executing", "data": {"prompt_id": "p", "node": None}}))
    if not frames:
        run.deliver(Dropped(1))
    result = await job.result(timeout=10)
    assert result.text == ["done"] and set(server.released) == {run}
    kinds = [type(e) for e in job.history]
    assert Started in kinds
    if frames:
        assert [(e.node, e.title) for e in job.history if isinstance(e, NodeStarted)] == [("3", "Sampler")]
        assert [(e.value, e.max, e.node) for e in job.history if isinstance(e, Progress)] == [(1, 2, "3")]
    assert (job.nodes_done, job.nodes_total) == (2, 2)
