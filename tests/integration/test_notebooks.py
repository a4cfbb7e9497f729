"""The tutorials, each executed once per run (here, not also by nbval), in a real kernel: their own
assertion cells hold (an error output fails, except in a cell tagged raises-exception, which must
show a one-line UsageError and no traceback), no secret reaches the saved notebook, and it embeds
thumbnails for the static fallbacks yet stays small."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient


def restarts_its_kernel(path: Path) -> bool:
    """Whether the tutorial restarts its own kernel (a code cell tagged `restart-kernel`): nbclient
    cannot follow that, so test_tutorial_restart.py runs those; every tutorial runs in one of the two."""
    return any("restart-kernel" in cell.metadata.get("tags", [])
               for cell in nbformat.read(path, as_version=4).cells)


NOTEBOOKS = [p for p in sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))
             if not restarts_its_kernel(p)]
EMU_TOKEN = "rc_nb_emulator_SENTINEL_1f3c"
REAL_TOKEN = "rc_nb_user_SENTINEL_9d2e"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_tutorial_runs_and_leaks_no_secret(path: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCOMFY_EMULATOR_TOKEN", EMU_TOKEN)
    monkeypatch.setenv("RUNCOMFY_TOKEN", REAL_TOKEN)
    monkeypatch.setenv("COMFY_CLOUD_API_KEY", REAL_TOKEN + "_cloud")
    work = tmp_path / path.name
    shutil.copy(path, work)
    shutil.copytree(path.parent / "workflows", tmp_path / "workflows")  # the workflow files shipped
    notebook = nbformat.read(work, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    saved = json.dumps(notebook)
    assert EMU_TOKEN not in saved and REAL_TOKEN not in saved
    for cell in (c for c in notebook.cells if c.cell_type == "code"):
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
        if "raises-exception" in cell.metadata.get("tags", []):
            text = "".join(o.get("text", "") for o in cell.outputs)
            said = [line for line in text.splitlines() if line.strip()]
            assert len(said) == 1 and said[0].startswith("UsageError: "), text
    images = saved.count("data:image/")
    assert images >= 3, "the static fallbacks should embed thumbnails"
    assert os.path.getsize(work) < 5_000_000
