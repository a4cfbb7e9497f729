"""Sweeps: many jobs from one call, the combinations of a few inputs' values.

`Sweep` runs `submit(overrides) -> Job` once per combination of its axes (the cartesian product,
or a zip) with at most `concurrency` jobs in flight, and keeps one `Cell` per combination: its
parameters, its job, its outcome. It knows nothing of display: a view subscribes to its changes.
`start_sweep` builds one from axes keyed `NODE.input` or a bare input name; `workflow_sweep` is the
sweep of a client with `queue(workflow)` (ComfyUI, Comfy Cloud); the default concurrency of each
target is `deployment_concurrency`, `COMFYUI_CONCURRENCY` and `cloud_concurrency`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import JobCancelled, ValidationError
from .events import JobResult
from .jobs import CANCEL_WAIT, Job
from .media import output_dir
from .status import Status
from .workflow import Workflow, normalize_overrides

log = logging.getLogger("runcomfy_nb")

Submit = Callable[[dict[str, dict[str, Any]]], Awaitable[Job]]
SweepListener = Callable[["Sweep", "Cell"], None]

COMFYUI_CONCURRENCY = 2  # one machine's single queue: one running and one waiting, so the GPU never idles
CLOUD_TIERS = {"standard": 1, "creator": 3, "pro": 5}  # Comfy Cloud's running jobs per tier (api docs)
STATES = ("pending", "submitting", "queued", "running", "succeeded", "failed", "cancelled")


def deployment_concurrency(max_instances: int | None, queue_size: int | None) -> int:
    """A deployment's jobs in flight: one per instance, and one more waiting per instance when the
    deployment queues (`queue_size` > 0), so a finished instance starts the next job at once."""
    instances = max(1, max_instances or 1)
    return instances * (2 if queue_size else 1)


def cloud_concurrency(tier: str | None = None) -> int:
    """A Comfy Cloud tier's running jobs plus one waiting; the Standard tier's when unknown."""
    return CLOUD_TIERS.get((tier or "standard").lower(), 1) + 1


# --- axes -----------------------------------------------------------------------------------


def resolve_axis(key: str, workflow: Workflow | None) -> tuple[str, str]:
    """`NODE.input` (node id, title or unique class) or a bare input name exactly one node of
    `workflow` has, as (node, input); the node is an id when the workflow is known."""
    node, dot, name = str(key).rpartition(".")
    if dot:
        if not node or not name:
            raise ValidationError(f"Sweep axis {key!r}: write NODE.input, e.g. 'KSampler.seed'.")
        return (workflow.find(node) if workflow is not None else node), name
    if workflow is None:
        raise ValidationError(f"Sweep axis {key!r} names no node, and the workflow is not known here: "
                              f"write NODE.input (e.g. 'KSampler.{key}').")
    having = [i for i, n in workflow.data.items() if key in (n.get("inputs") or {})]
    if len(having) == 1:
        return having[0], key
    if not having:
        raise ValidationError(f"Sweep axis {key!r}: no node of the workflow has an input {key!r}.")
    listed = ", ".join(f"'{workflow.title(i)}.{key}' (node {i})" for i in having)
    raise ValidationError(f"Sweep axis {key!r}: {len(having)} nodes have it; name one: {listed}.")


def combinations(axes: Mapping[str, Sequence[Any]], *, zip: bool = False) -> list[dict[str, Any]]:
    """Every combination of the axes' values (the cartesian product, the first axis slowest),
    or with `zip` the n-th values together (the axes must be equally long)."""
    if not axes:
        raise ValidationError("A sweep needs at least one axis, e.g. {'seed': [1, 2, 3]}.")
    values: list[list[Any]] = []
    for key, given in axes.items():
        if isinstance(given, (str, bytes)) or not isinstance(given, Sequence) or not given:
            raise ValidationError(f"Sweep axis {key!r} needs a non-empty list of values, not {given!r}.")
        values.append(list(given))
    keys = list(axes)
    if zip:
        lengths = {k: len(v) for k, v in axes.items()}
        if len(set(lengths.values())) > 1:
            raise ValidationError(f"A zipped sweep needs axes of one length; got {lengths}.")
        rows: Any = builtins.zip(*values, strict=True)
    else:
        rows = itertools.product(*values)
    return [dict(builtins.zip(keys, row, strict=True)) for row in rows]


def shown_value(value: Any) -> str:
    """A parameter's value as a label shows it: a string as it is, else its repr; at most 40
    characters."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def short_label(params: Mapping[str, Any]) -> str:
    """`seed=1 text=a`: each parameter by its input name (its whole key when two share one)."""
    names = [k.rpartition(".")[2] for k in params]
    return " ".join(f"{name if names.count(name) == 1 else key}={shown_value(value)}"
                    for (key, value), name in builtins.zip(params.items(), names, strict=True))


def merged_overrides(base: Mapping[Any, Any] | None, params: Mapping[str, Any],
                     targets: Mapping[str, tuple[str, str]], workflow: Workflow | None) -> dict[str, Any]:
    """`base` with each parameter's value set on its (node, input); node refs of `base` become ids
    when the workflow is known, so a title and an id of one node merge."""
    merged: dict[str, dict[str, Any]] = {}
    for ref, patch in normalize_overrides(base or {}).items():
        node = workflow.find(ref) if workflow is not None else ref
        merged.setdefault(node, {"inputs": {}})["inputs"].update(patch["inputs"])
    for key, value in params.items():
        node, name = targets[key]
        merged.setdefault(node, {"inputs": {}})["inputs"][name] = value
    return merged


async def check_values(check: Callable[[dict[str, Any]], Awaitable[Any]], axes: Mapping[str, Sequence[Any]],
                       *, base: Mapping[Any, Any] | None = None, workflow: Workflow | None = None,
                       zip: bool = False) -> None:
    """Check a few combinations that hold every value of every axis (`check(overrides)`, a
    client's own check), so a bad key or value stops the sweep before anything is sent."""
    rows = combinations(axes, zip=zip)
    if not zip:
        first = rows[0]
        rows = [first, *({**first, key: value} for key, values in axes.items() for value in list(values)[1:])]
    targets = {key: resolve_axis(key, workflow) for key in axes}
    for params in rows:
        try:
            await check(merged_overrides(base, params, targets, workflow))
        except ValidationError as exc:
            raise ValidationError(f"The sweep's {short_label(params)}: {exc}") from None


# --- one sweep ------------------------------------------------------------------------------


@dataclass(eq=False)
class Cell:
    """One combination: `params` ({axis: value}), `coords` (the index of each value on its axis),
    `state` (one of STATES), its `job` once submitted, its `result` or `error` message."""

    index: int
    params: dict[str, Any]
    coords: tuple[int, ...]
    overrides: dict[str, Any] = field(repr=False)
    state: str = "pending"
    job: Job | None = field(default=None, repr=False)
    result: JobResult | None = field(default=None, repr=False)
    error: str = ""

    @property
    def label(self) -> str:
        return short_label(self.params)

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")


class Sweep:
    """Jobs of every combination, at most `concurrency` in flight (submitted and not ended).

    A combination is submitted once a slot is free, and never twice: a submit that fails (also one
    whose reply was lost) makes a failed cell with the message. A failed job fails its cell only.
    `cancel()` stops every pending combination and cancels every running job, waiting for the
    servers' confirmation. `await sweep.wait()` / `result()`; `subscribe(callback)` for changes;
    `counts`, `eta`; `save(directory)` writes every output, named by its parameters.
    """

    def __init__(self, submit: Submit, cells: list[Cell], *, concurrency: int,
                 axes: Mapping[str, Sequence[Any]], zipped: bool = False) -> None:
        if concurrency < 1:
            raise ValidationError(f"A sweep's concurrency must be at least 1, not {concurrency}.")
        self.cells = cells
        self.axes = {k: list(v) for k, v in axes.items()}
        self.zipped = zipped
        self.concurrency = concurrency
        self.started_at = time.time()
        self._submit = submit
        self._slots = asyncio.Semaphore(concurrency)
        self._listeners: list[SweepListener] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancelling = False
        self._fed = False  # every combination has been submitted (or the sweep was cancelled)
        self._stopping: asyncio.Task[dict[str, int]] | None = None  # the cancel an interruption started
        self._durations: list[float] = []
        self.loop = asyncio.get_running_loop()
        self._feeder = self.loop.create_task(self._feed(), name="runcomfy-sweep")

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.counts.items() if n)
        return f"<Sweep {len(self.cells)} jobs: {counts}>"

    # -- state --
    @property
    def counts(self) -> dict[str, int]:
        """How many cells are in each state (pending, submitting, queued, running, succeeded,
        failed, cancelled)."""
        counts = dict.fromkeys(STATES, 0)
        for cell in self.cells:
            counts[cell.state] += 1
        return counts

    @property
    def done(self) -> bool:
        return self._feeder.done() and not self._tasks

    @property
    def eta(self) -> float | None:
        """Seconds left, from the finished jobs' mean duration and the concurrency; None until one
        finished, 0 once all ended."""
        left = sum(not c.done for c in self.cells)
        if not left:
            return 0.0
        if not self._durations or self._cancelling:
            return None
        mean = sum(self._durations[-200:]) / len(self._durations[-200:])
        return mean * left / min(self.concurrency, left)

    def subscribe(self, callback: SweepListener) -> Callable[[], None]:
        """Call `callback(sweep, cell)` on each change of a cell (in the sweep's loop); returns
        unsubscribe."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _set(self, cell: Cell, state: str, **values: Any) -> None:
        if cell.done:
            return
        cell.state = state
        for name, value in values.items():
            setattr(cell, name, value)
        if cell.done and state != "cancelled" and cell.job is not None and cell.job.finished_at:
            self._durations.append(cell.job.finished_at - cell.job.submitted_at)
        for callback in list(self._listeners):
            try:
                callback(self, cell)
            except Exception:  # a broken view must not break the sweep
                log.exception("sweep subscriber failed")

    # -- running --
    async def _feed(self) -> None:
        for cell in self.cells:
            await self._slots.acquire()
            if self._cancelling:
                self._slots.release()
                break
            self._set(cell, "submitting")
            task = self.loop.create_task(self._one(cell), name=f"runcomfy-sweep-{cell.index}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._fed = True  # nothing is left to submit: the jobs in flight end the sweep, so follow
        for cell in self.cells:  # them closely
            if cell.job is not None:
                cell.job.expedite()

    async def _one(self, cell: Cell) -> None:
        try:
            try:
                job = await self._submit(cell.overrides)
            except ValidationError as exc:  # refused by the checks: nothing was sent
                self._set(cell, "failed", error=f"not sent: {_message(exc)}")
                return
            except Exception as exc:
                self._set(cell, "failed", error=f"submit failed, not retried (it may have reached the "
                                                 f"server): {_message(exc)}")
                return
            cell.job = job
            if self._fed:
                job.expedite()
            unsubscribe = job.subscribe(lambda j, _e: self._follow(cell, j))
            try:
                if self._cancelling:
                    await _cancel(job)
                await job.wait()
            finally:
                unsubscribe()
            await self._finish(cell, job)
        finally:
            self._slots.release()

    def _follow(self, cell: Cell, job: Job) -> None:
        state = {Status.QUEUED: "queued", Status.RUNNING: "running"}.get(job.status)
        if state is not None and state != cell.state:
            self._set(cell, state)

    async def _finish(self, cell: Cell, job: Job) -> None:
        if job.status is Status.SUCCEEDED:
            self._set(cell, "succeeded", result=await job.result())
        elif job.status is Status.CANCELLED or isinstance(job.error, JobCancelled):
            self._set(cell, "cancelled")
        elif job.error is not None:
            self._set(cell, "failed", error=_message(job.error))
        else:
            self._set(cell, "failed", error=f"job {job.id} was detached before it ended")

    async def wait(self, timeout: float | None = None) -> dict[str, int]:
        """Wait until every cell ended (or `timeout` passes); returns the counts."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._all(), timeout)
        return self.counts

    async def _all(self) -> None:
        await asyncio.shield(self._feeder)
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def result(self, *, cancel_on_interrupt: bool = True) -> list[Cell]:
        """Every cell once all ended; a failed cell carries its message, it raises nothing. If the
        waiting is interrupted (Ctrl-C, a cancelled task), the whole sweep is cancelled first (see
        `cancel`) unless `cancel_on_interrupt=False`; then the interruption goes on."""
        try:
            await self._all()
        except (asyncio.CancelledError, KeyboardInterrupt):
            if cancel_on_interrupt and not self.done:
                stopping = self._stopping = self._stopping or self.loop.create_task(self.cancel())
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.shield(stopping)  # a second interruption stops the waiting, not the cancel
            raise
        return self.cells

    async def cancel(self) -> dict[str, int]:
        """Stop the sweep: pending combinations are never submitted; running jobs are cancelled and
        their cancel confirmed (Job.cancel). Returns the counts once every cell ended."""
        self._cancelling = True
        for cell in self.cells:
            if cell.state == "pending":
                self._set(cell, "cancelled")
        running = [c.job for c in self.cells if c.job is not None and not c.job.done]
        await asyncio.gather(*(_cancel(job) for job in running))
        await self._all()
        return self.counts

    # -- outputs --
    async def save(self, directory: str | Path | None = None) -> list[Path]:
        """Write every output of the succeeded cells into `directory` (default: `output_dir`),
        each named by its parameters (`seed_1 text_a_ComfyUI_00001_.png`, file-system safe); a
        taken name gets a ` (1)` suffix, so nothing is overwritten."""
        folder = output_dir() if directory is None else Path(directory)
        paths = []
        for cell in self.cells:
            for media in cell.result.media if cell.result is not None else ():
                label = cell.label.replace("/", "_").replace("\\", "_")  # a value is no path
                paths.append(await media.save(folder, f"{label}_{media.filename}"))
        return paths


async def _cancel(job: Job) -> None:
    """Cancel one job of a sweep; a failed cancel is logged (the cell shows how the job ended)."""
    try:
        await job.cancel(wait=CANCEL_WAIT)
    except Exception as exc:
        log.warning("cancel of sweep job %s failed: %s", job.id, exc)


def _message(error: BaseException) -> str:
    text = str(error).strip()
    return text or type(error).__name__


def start_sweep(submit: Submit, axes: Mapping[str, Sequence[Any]], *,
                base: Mapping[Any, Any] | None = None, workflow: Workflow | None = None,
                zip: bool = False, concurrency: int) -> Sweep:
    """A running Sweep of `submit(overrides)` over the combinations of `axes` merged over `base`
    (call inside the event loop). Axis keys are resolved against `workflow` when it is known."""
    targets = {key: resolve_axis(key, workflow) for key in axes}
    rows = combinations(axes, zip=zip)
    grid = ([(n,) for n in range(len(rows))] if zip
            else itertools.product(*(range(len(values)) for values in axes.values())))
    cells = [Cell(n, params, coords, merged_overrides(base, params, targets, workflow))
             for n, (params, coords) in enumerate(builtins.zip(rows, grid, strict=True))]
    return Sweep(submit, cells, concurrency=concurrency, axes=axes, zipped=zip)


def workflow_sweep(queue: Callable[..., Awaitable[Job]], workflow: Workflow | Mapping[str, Any],
                   axes: Mapping[str, Sequence[Any]],
                   *, base: Mapping[Any, Any] | None = None, zip: bool = False,
                   concurrency: int = COMFYUI_CONCURRENCY, validate: bool = True,
                   options: Mapping[str, Any] | None = None) -> Sweep:
    """The sweep of a client that queues workflows (AsyncComfyUI, AsyncComfyCloud): each combination
    is `workflow` with the overrides applied (checked before anything is sent), queued with
    `queue(workflow, validate=validate, **options)`, the client's `queue` (call inside the event
    loop)."""
    wf = workflow if isinstance(workflow, Workflow) else Workflow(workflow)

    def submit(overrides: dict[str, dict[str, Any]]) -> Awaitable[Job]:
        return queue(wf.override(overrides), validate=validate, **(options or {}))

    for params in combinations(axes, zip=zip)[:1]:  # a bad key or value fails here, before any submit
        wf.override(merged_overrides(base, params, {k: resolve_axis(k, wf) for k in axes}, wf))
    return start_sweep(submit, axes, base=base, workflow=wf, zip=zip, concurrency=concurrency)


__all__ = ["COMFYUI_CONCURRENCY", "Cell", "Sweep", "check_values", "cloud_concurrency", "combinations",
           "deployment_concurrency", "resolve_axis", "start_sweep", "workflow_sweep"]
