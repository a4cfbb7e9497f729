"""The widgets' buttons in a real JupyterLab: the progress widget's Cancel, clicked while its cell
blocks, cancels the job (the emulator in the kernel confirms: its request is "cancelled"); the
MachinePanel's Stop (and its confirmation) stops the machine (the emulator's record says so).
Driven on tests/browser/notebooks/buttons.ipynb: Run All stops at the cancelled cell (an error, as
Jupyter does), then the rest run one by one."""

from __future__ import annotations

from typing import Any

from .jupyter import Notebook, Server, browser, lab

__all__ = ["browser", "lab"]  # the fixtures, used by name

NAME = "buttons.ipynb"
HELD, CONFIRM_CANCEL, VERSION, LAUNCH, PANEL, CONFIRM_STOP = 2, 3, 4, 5, 6, 7  # code cell indexes


def test_cancel_while_the_cell_blocks_and_stop_from_the_panel(browser: Any, lab: Server) -> None:
    notebook = Notebook.open(browser, lab, NAME)
    try:
        # the job is held in the queue; the cell blocks
        notebook.run_all_held(HELD, '.rcnb-progress[data-status="queued"] .rcnb-cancel').click()
        notebook.wait_cells_done(60, upto=HELD + 1)  # the blocking cell ended (Run All stops there)
        assert "cancelled" in notebook.cell_text(HELD)

        notebook.run_cell(CONFIRM_CANCEL)
        said = notebook.cell_text(CONFIRM_CANCEL)
        assert "REMOTE JOB cancelled" in said and "Error" not in said, said

        for index in (VERSION, LAUNCH, PANEL):
            notebook.run_cell(index, timeout=120)
        panel = notebook.code_cell(PANEL)
        stop = panel.locator('.rcnb-machines tr.rcnb-row[data-state="ready"] .rcnb-stop')
        stop.wait_for(state="visible", timeout=30_000)
        stop.click()
        confirm = panel.locator(".rcnb-stop.rcnb-confirm")
        confirm.wait_for(state="visible", timeout=5_000)  # a Stop asks once more
        confirm.click()
        # the row says stopped, or the panel, all its machines stopped, turned into its static view
        notebook.page.wait_for_function(
            """(i) => {
              const cell = document.querySelectorAll('.jp-CodeCell')[i];
              const row = cell.querySelector('.rcnb-machines tr.rcnb-row');
              return row ? row.dataset.state === 'stopped' : !cell.querySelector('.rcnb-machines');
            }""", arg=PANEL, timeout=60_000, polling=100)
        notebook.run_cell(CONFIRM_STOP)
        said = notebook.cell_text(CONFIRM_STOP)
        assert "REMOTE MACHINE Delet" in said and "Error" not in said, said
        notebook.screenshot("buttons", full=True)
        assert not notebook.errors, "\n".join(notebook.errors[:10])
    finally:
        notebook.discard()
