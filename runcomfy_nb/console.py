"""`TextProgress`: a job's progress as text, for terminals, scripts, logs and front ends that
cannot show widgets (issue 16, point 4). No widget code: it reads `ProgressState`.

- On a TTY: one live line, rewritten with `\\r` at most 10 times a second (status, queue
  position, node, step x/y, nodes, rate, ETA, elapsed), its clock ticking between events.
- Not a TTY (logs, CI): one line per state change (status, queue position, phase, node).
- Then one final line: the outcome, the error (the one place it is told), where the files went.

Where it is used (`wants_text_view`, `register`): the magics show it instead of the widget when
no widget front end is there; the blocking facade's `job.result()` shows it on stderr from a
plain script when `RUNCOMFY_PROGRESS` is `on`, or unset/`auto` and stderr is a TTY
(`off` never). The blocking facade registers `wait_view` (`sync.register_wait_view`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from .events import Event, Finished
from .loops import behind, call, soon
from .progress_state import ProgressState

INTERVAL = 0.1  # live-line rewrites at most 10 per second
TICK = 0.5  # the live line's clock ticks this often without events
_CLEAR = "\r\x1b[K"


def _error_text(error: BaseException) -> str:
    from .widgets.fallback import error_text  # plain text, no widget: URLs masked as the widget does

    return error_text(error)


class TextProgress:
    """Follows one job, writing its progress to `stream` (default stderr); `live` (default: the
    stream is a TTY) chooses the rewritten line over one line per state change."""

    def __init__(self, job: Any, stream: TextIO | None = None, *, live: bool | None = None,
                 clock: Any = time.time) -> None:
        self.job = behind(job)
        self.stream = stream if stream is not None else sys.stderr
        self.live = _isatty(self.stream) if live is None else live
        self._clock = clock
        self.state = ProgressState(kind=self.job.kind, submitted_at=self.job.submitted_at)
        self._said = ""  # the last state-change line (not live), or the live line shown
        self._written_at = 0.0
        self._pending = False
        self.ended = False
        self._unsubscribe: Any = None  # set on the job's loop, where the events arrive
        call(self._attach, self.job.loop)

    def _attach(self) -> None:
        unsubscribe = self.job.subscribe(self._on_event, replay=True)
        if self.ended:  # the replay held the end: nothing more to follow
            unsubscribe()
            return
        self._unsubscribe = unsubscribe
        if self.live:
            self.job.loop.call_later(TICK, self._tick)

    def close(self) -> None:
        """Stop following (the final line, if not written yet, is not)."""
        self.ended = True
        soon(self.job.loop, self._stop)

    def _stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # -- events --
    def _on_event(self, job: Any, event: Event) -> None:
        if self.ended:
            return
        lifecycle = self.state.feed(event, job)
        if self.state.terminal:
            self._final(event)
        elif self.live:
            self._live(force=lifecycle)
        else:
            self._change()

    def _tick(self) -> None:
        if not self.ended:
            self._live(force=False)
            self.job.loop.call_later(TICK, self._tick)

    def _live(self, *, force: bool) -> None:
        now = self._clock()
        if not force and now - self._written_at < INTERVAL:
            if not self._pending:  # a later rewrite shows what this one skipped
                self._pending = True
                self.job.loop.call_later(INTERVAL, self._flush)
            return
        self._written_at = now
        self._write(f"{_CLEAR}{self.line(now)}")

    def _flush(self) -> None:
        self._pending = False
        if not self.ended:
            self._live(force=True)

    def _change(self) -> None:
        state = self.state
        key = "|".join([state.status, str(state.position), state.phase, state.node])
        if key != self._said:
            self._said = key
            self._write(self.line(self._clock()) + "\n")

    def _final(self, event: Event) -> None:
        self.ended = True
        prefix = _CLEAR if self.live else ""
        self._write(f"{prefix}{self.final_line(event)}\n")
        self._stop()

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed stream must not break the job
            self.stream.write(text)
            self.stream.flush()

    # -- text --
    def _name(self) -> str:
        job = self.job
        short = job.id[:8]
        if job.label and job.label != job.id and short in job.label:  # "dep-flux-kontext · 5fdf9782"
            return str(job.label)
        name = job.label if job.label and job.label != job.id else job.kind
        return f"{name}/{short}"

    def line(self, now: float) -> str:
        """`name: running 42% for 3.1 s · KSampler · step 5/20 · nodes 3/7 · 2.00 it/s · ETA 9.0 s`"""
        state = self.state
        parts = [state.summary(now)]
        parts += [p for p in state.details() if not p.endswith("in queue")]  # the summary says it
        return f"{self._name()}: {' · '.join(parts)}"

    def final_line(self, event: Event) -> str:
        """The outcome, with the error or the outputs and where they went."""
        state = self.state
        text = f"{self._name()}: {state.summary(self._clock())}"
        if state.error is not None:
            return f"{text}: {_error_text(state.error)}"
        if isinstance(event, Finished):
            n = max(state.outputs, len(event.result.media))
            text += f" · {n} output{'s' if n != 1 else ''}"
            if n:
                text += f" · {_where(state)}"
        return text


def _where(state: ProgressState) -> str:
    from .config import Config
    from .media import output_dir

    if Config.from_env().auto_save:
        return f"saved in {output_dir().resolve()}"
    return "not saved (auto_save is off: result.save() writes them)"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


# -- where it is used --
def script_wants_progress(stream: TextIO | None = None) -> bool:
    """The blocking facade's rule: `RUNCOMFY_PROGRESS=off` never, `on` always, else (unset,
    `auto`) when stderr is a TTY."""
    setting = os.environ.get("RUNCOMFY_PROGRESS", "auto").strip().lower()
    if setting in ("off", "0", "false", "no"):
        return False
    if setting in ("on", "1", "true", "yes"):
        return True
    return _isatty(stream if stream is not None else sys.stderr)


@contextlib.contextmanager
def wait_view(job: Any) -> Iterator[None]:
    """While a script blocks in `job.result()`: the text view on stderr, if the rule says so and
    no IPython front end shows the job (the magics show theirs)."""
    if _in_ipython() or not script_wants_progress() or behind(job).done:
        yield
        return
    view = TextProgress(job)
    try:
        yield
    finally:
        if not view.ended:
            view.close()
            if view.live:
                view._write("\n")  # leave the live line as it was, the prompt on its own line


def _in_ipython() -> bool:
    ipython = sys.modules.get("IPython")
    return bool(ipython and ipython.get_ipython() is not None)


def wants_text_view(shell: Any) -> bool:
    """Whether `shell` (an IPython shell) cannot show widgets, so the text view is used: a
    terminal IPython (no kernel), Colab without a custom widget manager, and front ends that tell
    us (`RUNCOMFY_PROGRESS=text`; an older VS Code cannot be detected: set it there).
    `RUNCOMFY_PROGRESS=widget` forces the widget. A kernel is assumed to have a widget front end
    otherwise (JupyterLab, Notebook 7, VS Code's current Jupyter extension)."""
    setting = os.environ.get("RUNCOMFY_PROGRESS", "").strip().lower()
    if setting in ("text", "widget"):
        return setting == "text"
    if shell is None or getattr(shell, "kernel", None) is None:
        return True
    # Colab shows anywidgets only after `output.enable_custom_widget_manager()`, which we cannot see
    return "google.colab" in sys.modules
