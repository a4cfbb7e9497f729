"""Tutorial 05 in a real JupyterLab and Notebook 7, in Debian's chromium, as a reader runs it: Run ▸
Run All Cells submits a ~25 s job on a kept emulator and reaches the cell that restarts the kernel;
the page says the kernel "appears to have died" and drops the cells queued behind it. Once the new kernel is
there, the reader selects the first cell after the restart and runs Run ▸ Run Selected Cell and All
Below. The DOM then shows: `%runcomfy jobs` lists the job, the re-attached job's widget renders and
reaches "succeeded", its images decode, the console stays clean; the kept emulator is stopped by the
last cell (and by the finalizer if the run broke off). Then save, shut down, reopen: the static views.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Error as PlaywrightError

from runcomfy_nb.emulator import process

from ..helpers import wait_for
from ..integration.test_notebooks import EMU_TOKEN, REAL_TOKEN
from .jupyter import BUILD, ROOT, Notebook, Server, browser, lab, notebook7, stop_kept_emulator
from .test_jupyter_tutorials import LIVE_JS, decode_images

__all__ = ["browser", "lab", "notebook7"]  # the fixtures, used by name
pytestmark = pytest.mark.timeout(300)  # the first test of an app also starts it and runs the tutorial

NAME = "05_jobs_that_outlive_the_kernel.ipynb"
PID = re.compile(r"EMULATOR ON \(kept\).*?\(pid (\d+)\)", re.DOTALL)
JOB = re.compile(r"dep-flux-kontext · ([0-9a-f]{8})")


def code_cells(path: Path) -> list[dict[str, Any]]:
    return [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]


def index_of(cells: list[dict[str, Any]], found: str) -> int:
    """The index (among code cells) of the first cell whose source holds `found`."""
    return next(i for i, c in enumerate(cells) if found in "".join(c["source"]))


CELLS = code_cells(ROOT / "notebooks" / NAME)
RESTART = next(i for i, c in enumerate(CELLS) if "restart-kernel" in c["metadata"].get("tags", []))
SUBMIT = index_of(CELLS, "--no-wait --out storm")
JOBS = index_of(CELLS, "%runcomfy jobs")
ATTACH = index_of(CELLS, "%runcomfy attach {job.id[:8]} --out storm")
AGAIN = index_of(CELLS, "--out again")
# the attached job's images (its gallery, twice): the old kernel's widget keeps a hidden preview
IMAGES = ", ".join(f":nth-match(.jp-CodeCell, {i + 1}) .jp-OutputArea-output img:not([hidden])"
                   for i in (ATTACH, AGAIN))


@dataclass
class Run:
    """What the run showed, live and after the reopen."""

    seconds: float = 0.0
    job: str = ""  # the first 8 characters of the job's id, as its widget's title shows
    emulator_pid: int = 0
    restarted: str = ""  # the dialog JupyterLab showed
    prompts: list[str] = field(default_factory=list)  # right after the restart
    prompts_below: list[str] = field(default_factory=list)  # after Run Selected Cell and All Below
    live: dict[str, Any] = field(default_factory=dict)
    attached: list[str] = field(default_factory=list)  # statuses the job's live widgets showed
    images: list[str] = field(default_factory=list)
    images_total: int = 0
    errors: list[str] = field(default_factory=list)
    emulator_after: tuple[bool, bool] = (True, True)  # (state file left, process alive)
    saved: str = ""
    reopened: dict[str, Any] = field(default_factory=dict)
    reopened_images: list[str] = field(default_factory=list)
    reopened_images_total: int = 0
    reopened_errors: list[str] = field(default_factory=list)


PROMPTS_JS = ("() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
              ".map(p => p.textContent.trim())")


def through_the_restart(notebook: Notebook, run: Run) -> None:
    """Run All, until the kernel has restarted: JupyterLab's "Kernel Restarting" dialog (dismissed),
    the restart cell has run, nothing is queued any more (the dying kernel may still run a cell or
    two: the tutorial's `assert "storm" not in globals()` then fails, and Run All stops there), the
    kernel is idle again."""
    page = notebook.page
    notebook.wait_kernel_idle()
    notebook.menu("Run", "Run All Cells")
    dialog = page.locator(".jp-Dialog", has_text="Kernel Restarting")
    dialog.wait_for(state="visible", timeout=120_000)
    run.restarted = dialog.inner_text()
    dialog.get_by_role("button", name="Ok").click()
    page.wait_for_function(
        f"""(i) => {{
          const p = ({PROMPTS_JS})();
          return /^\\[\\d+\\]:$/.test(p[i]) && !p.includes('[*]:');
        }}""", arg=RESTART, timeout=60_000, polling=250)
    run.prompts = page.evaluate(PROMPTS_JS)
    if notebook.server.app == "lab":  # its status bar knows the new kernel too
        page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').wait_for(timeout=60_000)
    notebook.wait_kernel_idle()


def run_below(notebook: Notebook, run: Run) -> None:
    """Select the first cell after the restart cell; Run ▸ Run Selected Cell and All Below."""
    page = notebook.page
    before = page.evaluate(PROMPTS_JS)[RESTART + 1]  # the dying kernel may have run it
    notebook.code_cell(RESTART + 1).locator(".jp-InputArea-editor").click()
    notebook.menu("Run", "Run Selected Cell and All Below")
    # until it was queued, then until nothing is queued or running (all ran, or one failed and
    # JupyterLab dropped the rest: the tests then say which)
    page.wait_for_function(f"(i) => ({PROMPTS_JS})()[i] !== {json.dumps(before)}", arg=RESTART + 1,
                           timeout=60_000, polling=100)
    page.wait_for_function(f"(i) => !({PROMPTS_JS})().slice(i).includes('[*]:')", arg=RESTART + 1,
                           timeout=180_000, polling=250)
    notebook.wait_kernel_idle()


def check_live(notebook: Notebook, run: Run) -> None:
    page = notebook.page
    text = notebook.cell_text(0)
    if found := PID.search(text):
        run.emulator_pid = int(found.group(1))
    # the attached job's live widget is replaced by its static view once final: until that shows,
    # or an error does (60 s at most; the tests then say what the cell showed)
    shown = notebook.code_cell(ATTACH).locator(
        ".runcomfy-progress, [data-mime-type='application/vnd.jupyter.stderr']")
    with contextlib.suppress(PlaywrightError):
        shown.first.wait_for(timeout=60_000)
    run.live = page.evaluate(LIVE_JS)
    run.images_total, run.images = decode_images(notebook, IMAGES)
    run.errors = list(notebook.errors)


def run_tutorial(browser: Any, server: Server) -> Run:
    run = Run()
    notebook = Notebook.open(browser, server, NAME)
    state = server.root / "emulator.json"
    try:
        started = time.monotonic()
        through_the_restart(notebook, run)
        run_below(notebook, run)
        run.prompts_below = notebook.page.evaluate(PROMPTS_JS)
        run.seconds = time.monotonic() - started
        check_live(notebook, run)
        if titles := JOB.findall(" ".join(p["title"] for p in run.live["progress"])):
            run.job = titles[0]
        # what the live widgets of the job showed (the old kernel's, then the attached one's)
        run.attached = notebook.seen().get(f"dep-flux-kontext · {run.job}", {}).get("statuses", [])
        notebook.screenshot("05-full", full=True)
        # the last cell stopped the emulator: until its process has ended (or 30 s, then the test says)
        if run.emulator_pid:
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not process.process_alive(run.emulator_pid), 30, "the kept emulator")
        run.emulator_after = (state.exists() and process.read_state(state) is not None,
                              bool(run.emulator_pid) and process.process_alive(run.emulator_pid))
        run.saved = notebook.reopen()
        run.reopened = notebook.page.evaluate(LIVE_JS)
        run.reopened_images_total, run.reopened_images = decode_images(notebook, IMAGES)
        notebook.screenshot("05-reopened", full=True)
        run.reopened_errors = list(notebook.errors)
    finally:
        notebook.discard()
        stop_kept_emulator(server.env)  # the run broke off before the last cell: no emulator left
    record = {k: v for k, v in vars(run).items() if k != "saved"}
    (BUILD / f"{server.app}-05.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    print(f"{server.app} {NAME}: Run All, restart, Run Selected Cell and All Below took {run.seconds:.1f} s")
    return run


_RUNS: dict[str, Run | BaseException] = {}  # one run per app for all the tests, a failed one too


@pytest.fixture(params=["lab", "notebook7"])
def run(request: pytest.FixtureRequest, browser: Any) -> Run:
    if request.param not in _RUNS:
        try:
            _RUNS[request.param] = run_tutorial(browser, request.getfixturevalue(request.param))
        except Exception as error:
            _RUNS[request.param] = error
    found = _RUNS[request.param]
    if isinstance(found, BaseException):
        raise found
    return found


def test_run_all_stops_at_the_restart_and_the_kernel_comes_back(run: Run) -> None:
    assert "appears to have died" in run.restarted, run.restarted
    assert run.prompts[JOBS:] == ["[ ]:"] * len(run.prompts[JOBS:]), run.prompts  # dropped


def test_every_cell_below_the_restart_ran(run: Run) -> None:
    below = run.prompts_below[RESTART + 1:]
    assert below and all(re.fullmatch(r"\[\d+\]:", p) for p in below), run.prompts_below


def test_the_jobs_table_lists_the_job(run: Run) -> None:
    assert run.job, f"no job id in the widgets' titles: {run.live['progress']}"
    jobs = run.live["outputs"][JOBS]
    assert run.job in jobs and "dep-flux-kontext" in jobs, jobs


def test_the_attached_job_renders_and_succeeds(run: Run) -> None:
    # (one title for both widgets: the old kernel's, stuck where it was, and the attached one's)
    assert "succeeded" in run.attached, f"the live widgets showed {run.attached}"
    for index in (ATTACH, AGAIN):  # then the static view of the final state, in both attach cells
        shown = run.live["outputs"][index]
        assert run.job in shown and "succeeded" in shown, shown


def test_its_images_decode(run: Run) -> None:
    assert run.images_total >= 2 and not run.images, f"{run.images_total} images; not decoded: {run.images}"


def test_no_console_errors(run: Run) -> None:
    assert not run.errors, "\n".join(run.errors[:10])


def test_no_secret_in_the_saved_notebook(run: Run) -> None:
    assert run.saved and EMU_TOKEN not in run.saved and REAL_TOKEN not in run.saved


def test_the_kept_emulator_is_stopped(run: Run) -> None:
    assert run.emulator_pid, "the first cell did not say it kept an emulator (pid)"
    assert run.emulator_after == (False, False), "state file left / process alive"


def test_reopened_notebook_shows_the_static_views(run: Run) -> None:
    """Every output reads as it ended, the submit cell's too: the old kernel kept its job's view
    as left behind when it ended; the images decode; no widget is lost."""
    outputs = run.reopened["outputs"]
    broken = [i for i, text in enumerate(outputs) if "model not found" in text]
    assert not broken, f"code cells {broken} show 'Error displaying widget: model not found'"
    assert "succeeded" in outputs[ATTACH] and run.job in outputs[ATTACH], outputs[ATTACH]
    assert "The kernel ended while this job was" in outputs[SUBMIT], outputs[SUBMIT]
    assert f"%runcomfy attach {run.job}" in outputs[SUBMIT], outputs[SUBMIT]
    assert run.reopened_images_total >= run.images_total, "fewer images after the reopen than live"
    assert not run.reopened_images, f"images that did not decode after the reopen: {run.reopened_images}"
    assert not run.reopened_errors, "\n".join(run.reopened_errors[:10])


def test_the_run_fits_the_suite_budget(run: Run) -> None:
    assert run.seconds < 90, f"the run took {run.seconds:.0f} s"
