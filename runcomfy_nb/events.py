"""What a job emits and what it ends with: the events (`Queued`, `Started`, `NodeStarted`,
`Progress`, `Preview`, `Output`, then `Finished` or `Failed`) and the `JobResult`.

A JobResult shows as a `Gallery` in IPython through a formatter the display layer registers
(`runcomfy_nb.register_display`); this module imports no display code."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .media import Media


@dataclass(frozen=True)
class Event:
    """Base of all job events; `at` is the wall-clock time it was emitted."""

    at: float = field(default_factory=time.time, kw_only=True)


@dataclass(frozen=True)
class Queued(Event):
    position: int | None = None


@dataclass(frozen=True)
class Started(Event):
    """The job left the queue; `phase` names a first phase the backend can tell (e.g. "cold start")."""

    phase: str = ""


@dataclass(frozen=True)
class NodeStarted(Event):
    """A node began; `done` and `total` count the graph's nodes finished so far (executed or
    cached) and in all, where the backend knows them (ComfyUI)."""

    node: str
    title: str = ""
    done: int | None = None
    total: int | None = None


@dataclass(frozen=True)
class Progress(Event):
    value: float
    max: float
    node: str | None = None


@dataclass(frozen=True)
class Preview(Event):
    data: bytes = field(repr=False)
    mime: str = "image/jpeg"
    node: str | None = None


@dataclass(frozen=True)
class Output(Event):
    media: Media


@dataclass(frozen=True)
class Finished(Event):
    result: JobResult


@dataclass(frozen=True)
class Failed(Event):
    """The job ended without a result: `error` is a JobFailed, JobCancelled or other error."""

    error: Exception


@dataclass
class JobResult:
    """What a finished job produced: media items, any text outputs, and the raw reply."""

    job_id: str
    media: list[Media] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    provenance: dict[str, Any] = field(default_factory=dict, repr=False)  # the job's (`Job.provenance`)

    def with_provenance(self, provenance: dict[str, Any]) -> JobResult:
        """This result with the job's provenance, on itself and on each media item (so a save embeds it)."""
        if provenance:
            self.provenance = provenance
            for media in self.media:  # the same objects the job's Output events carried
                media.provenance.update(provenance)
        return self

    @property
    def images(self) -> list[Media]:
        return [m for m in self.media if m.kind == "image"]

    @property
    def videos(self) -> list[Media]:
        return [m for m in self.media if m.kind == "video"]

    async def save(self, directory: str | Path | None = None) -> list[Path]:
        """Download every media item into `directory` (default: the `output_dir` setting); returns
        the paths written, each carrying the job's provenance. No file is overwritten: a taken name
        gets a ` (1)` suffix (see `Media.save`)."""
        return [await m.save(directory) for m in self.media]

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for m in self.media:
            kinds[m.kind] = kinds.get(m.kind, 0) + 1
        parts = [f"{n} {k}{'s' if n > 1 else ''}" for k, n in kinds.items()]
        parts += [f"{len(self.text)} text"] if self.text else []
        return f"<JobResult {self.job_id}: {', '.join(parts) or 'no outputs'}>"
