"""What a prompt's WebSocket frames say, as Job events: node started, progress, previews, outputs,
the end marker, and the failure or interruption that ends a run."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ...errors import JobCancelled, JobFailed
from ...events import NodeStarted, Output, Preview, Progress, Started
from ...jobs import Job
from ...media import Fetcher, Media
from ...status import Status
from .dialect import Dialect
from .replies import as_dict
from .sockets import preview_metadata

END = object()    # what a frame asks for: the prompt ended (the end-of-prompt marker)
CHECK = object()  # the queue changed: check where the prompt is
SOCKET_SAVERS = {"SaveImageWebsocket"}  # nodes whose images exist only as WebSocket frames
_PREVIEW_MIME = {1: "image/jpeg", 2: "image/png"}
_IMAGE_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/bmp": ".bmp"}


class Source(Protocol):
    """What reading frames needs from the client."""

    @property
    def dialect(self) -> Dialect: ...

    def outputs(self, outputs: Any) -> tuple[list[Media], list[str]]: ...

    def frame_fetcher(self, data: bytes) -> Fetcher: ...


class Frames:
    """Turns one prompt's frames into its Job's events and keeps what they delivered: outputs
    (`emitted`; `held`: those that exist only as frames), text, whether it `succeeded` and `ended`."""

    def __init__(self, source: Source, nodes: Mapping[str, Any]) -> None:
        self.source = source
        self.nodes = dict(nodes)
        self.prompt_id = ""
        self.job: Job | None = None
        self.current: str | None = None
        self.emitted: list[Media] = []
        self.held: list[Media] = []  # outputs that came as frames (SaveImageWebsocket)
        self.text: list[str] = []
        self.succeeded = self.ended = False
        self._done: set[str] = set()
        self._last_progress: tuple[Any, ...] | None = None
        self._handlers: dict[Any, Callable[[dict[str, Any]], object | None]] = {
            "status": self._status, "execution_start": self._execution_start,
            "execution_cached": lambda data: self.mark_done(*(str(n) for n in data.get("nodes") or [])),
            "executing": self._executing,
            "progress": lambda data: self._progress(data.get("node"), data.get("value"), data.get("max")),
            "progress_state": lambda data: self._progress_state(data.get("nodes")),
            "executed": lambda data: self._executed(str(data.get("display_node") or data.get("node")),
                                                    data.get("output")),
            "execution_success": self._execution_success, "execution_error": self._execution_error,
            "execution_interrupted": self._execution_interrupted,
        }

    def bind(self, job: Job, prompt_id: str) -> None:
        self.job, self.prompt_id = job, prompt_id
        self.count()

    def _job(self) -> Job:
        assert self.job is not None
        return self.job

    def take(self, item: Any) -> object | None:
        """Process one frame of the socket; what it asks for (END, CHECK) or None."""
        if isinstance(item, bytes):
            self._binary(item)
            return None
        try:
            message = item if isinstance(item, dict) else json.loads(item)
        except ValueError:
            return None
        return self._message(message) if isinstance(message, dict) else None

    def _message(self, message: dict[str, Any]) -> object | None:
        data = as_dict(message.get("data"))
        prompt_id = data.get("prompt_id")
        if prompt_id is not None and prompt_id != self.prompt_id:
            return None  # another prompt of a shared client id
        handler = self._handlers.get(message.get("type"))
        return handler(data) if handler is not None else None  # unknown and custom types are ignored

    # -- one handler per message type --
    def _status(self, data: dict[str, Any]) -> object | None:  # the queue changed: our position may have
        return CHECK if self._job().status is Status.QUEUED else None

    def _execution_start(self, data: dict[str, Any]) -> None:
        if self._job().status is Status.QUEUED:
            self._job().emit(Started())

    def _executing(self, data: dict[str, Any]) -> object | None:
        node = data.get("node")
        if node is not None:
            self._node_started(str(data.get("display_node") or node))
            return None
        if data.get("prompt_id") is None and self._job().status is not Status.RUNNING:
            return None
        self.ended = True
        return END  # the end-of-prompt marker

    def _execution_success(self, data: dict[str, Any]) -> None:
        self.succeeded = True  # the outputs come from /history after the end marker

    def _execution_error(self, data: dict[str, Any]) -> None:
        raise JobFailed(self.source.dialect.failure_text(data, self.nodes), job_id=self.prompt_id,
                        detail=data)

    def _execution_interrupted(self, data: dict[str, Any]) -> None:
        raise JobCancelled(f"Prompt {self.prompt_id} was interrupted on the {self.source.dialect.service}.",
                           job_id=self.prompt_id, detail=data)

    # -- what they say --
    def _progress_state(self, nodes: Any) -> None:
        for node_id, state in (nodes.items() if isinstance(nodes, dict) else ()):
            if not isinstance(state, dict):
                continue
            shown = str(state.get("display_node_id") or node_id)
            if state.get("state") == "finished":
                self.mark_done(shown)
            elif state.get("state") == "running" and (state.get("max") or 0) > 1:
                self._progress(shown, state.get("value"), state.get("max"))

    def _executed(self, node: str, output: Any) -> None:
        self.mark_done(node)
        media, text = self.source.outputs({node: output})
        self.text += text
        for item in media:
            self._output(item)

    def _output(self, media: Media) -> None:
        if media not in self.emitted:
            self.emitted.append(media)
            self._job().emit(Output(media))

    def _binary(self, frame: bytes) -> None:
        job = self.job
        if job is None or len(frame) < 8:
            return
        kind, word = struct.unpack(">II", frame[:8])
        if kind == 1:  # no prompt id: ours if we are running (the socket is this prompt's own,
            # or Comfy Cloud's router found ours the only job running)
            if job.status is Status.RUNNING:
                self._image(frame[8:], _PREVIEW_MIME.get(word, "image/jpeg"), self.current)
        elif kind == 4:
            meta = preview_metadata(frame)
            if meta is not None and meta.get("prompt_id") in (None, self.prompt_id):
                node = meta.get("display_node_id") or meta.get("node_id") or self.current
                self._image(frame[8 + word:], str(meta.get("image_type") or "image/jpeg"),
                            str(node) if node is not None else None)
        # 3 (text to a node) and unknown types: nothing to show

    def _image(self, data: bytes, mime: str, node: str | None) -> None:
        """A preview, or, from a node that saves to the socket, an output held in memory."""
        info = self.nodes.get(node) if node is not None else None
        if not (isinstance(info, dict) and info.get("class_type") in SOCKET_SAVERS):
            self._job().emit(Preview(data, mime, node))
            return
        n = sum(1 for m in self.held if m.node == node) + 1
        name = f"ws_{node}_{n}{_IMAGE_EXTENSIONS.get(mime, '.png')}"
        media = Media.from_url(f"websocket:{self.prompt_id}/{node}/{n}", filename=name, node=node,
                               fetcher=self.source.frame_fetcher(data))
        self.held.append(media)
        self._output(media)

    def _node_started(self, node: str) -> None:
        if node == self.current:
            return  # re-sent after a reconnect
        if self.current is not None:
            self.mark_done(self.current)
        self.current = node
        self.count()
        self._job().emit(NodeStarted(node, self._title(node), done=len(self._done), total=len(self.nodes)))

    def _progress(self, node: Any, value: Any, maximum: Any) -> None:
        if not isinstance(value, (int, float)) or not isinstance(maximum, (int, float)):
            return
        node = str(node) if node is not None else self.current
        if (node, value, maximum) == self._last_progress:
            return  # progress and progress_state report the same step
        self._last_progress = (node, value, maximum)
        self._job().emit(Progress(value, maximum, node))

    def _title(self, node: str) -> str:
        info = as_dict(self.nodes.get(node))
        return str(as_dict(info.get("_meta")).get("title") or info.get("class_type") or node)

    def mark_done(self, *nodes: str) -> None:
        self._done.update(n for n in nodes if n in self.nodes)
        self.count()

    def count(self) -> None:
        """Read by widgets as "nodes 3/7": cached and executed nodes count as done."""
        if self.job is not None:
            self.job.nodes_total = len(self.nodes)
            self.job.nodes_done = len(self._done)
