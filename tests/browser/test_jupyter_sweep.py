"""A sweep's live view in a real JupyterLab (tests/browser/notebooks/sweep_live.ipynb): its jobs are
held in the emulator's queue, so the `SweepView` widget renders and stays live while its cell
blocks. Making that view must log no console error (issue 16: a synced trait named `layout`
shadowed DOMWidget's Layout model, and ipywidgets' `setLayout` failed on the string, "Cannot read
properties of undefined (reading 'then')" in create_child_view, whenever tutorial 04's sweep
rendered live); its Cancel sweep button cancels every job, and the view turns static."""

from __future__ import annotations

from typing import Any

from .jupyter import Notebook, Server, browser, lab

__all__ = ["browser", "lab"]  # the fixtures, used by name

NAME = "sweep_live.ipynb"
SWEEP, CONFIRM = 2, 3  # code cell indexes


def test_a_live_sweep_view_renders_without_errors_and_its_cancel_ends_it(browser: Any, lab: Server) -> None:
    notebook = Notebook.open(browser, lab, NAME)
    try:
        # live, its four jobs queued; the cell blocks
        cancel = notebook.run_all_held(SWEEP, ".rcnb-sweep .rcnb-cancel:not([disabled])")
        cell = notebook.code_cell(SWEEP)
        assert cell.locator(".rcnb-sweep .rcnb-cell").count() == 4
        cancel.click()
        notebook.wait_cells_done(60)  # the sweep ended: the blocking cell, then the check, ran
        said = notebook.cell_text(CONFIRM)
        assert "SWEEP" in said and "Error" not in said, said
        # once final, the output is the static view alone (fallback.Snapshots), every cell cancelled
        cell.locator(".runcomfy-sweep").wait_for(state="visible", timeout=10_000)
        assert not cell.locator(".rcnb-sweep").count()
        assert "4/4 done, 4 cancelled" in notebook.cell_text(SWEEP)
        assert not notebook.errors, "\n".join(notebook.errors[:10])
    finally:
        notebook.discard()
