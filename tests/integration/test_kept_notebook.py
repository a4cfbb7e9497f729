"""A kept notebook shows the outcome (issue 16, point 1): a notebook executed in a real kernel
against the emulator and saved holds, for each job that ended, its static view — no widget view
(which front ends prefer, and which reads "model not found" without the kernel), the final status
and the thumbnails, each ≤ 30 KB — and `jupyter nbconvert --execute --to html` (which stores the
widget state) shows those thumbnails offline."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
MAX_IMAGE = 30 * 1024
IMAGE = re.compile(r'<img\b[^>]*?\bsrc="data:image/[a-z0-9.+-]+;base64,([A-Za-z0-9+/=]+)"')

CELLS = {
    "setup": "%load_ext runcomfy_nb\n%runcomfy emulate",
    "run": "%%runcomfy run dep-flux-kontext --out city\n31.steps = 4",
    "gallery": "from runcomfy_nb.widgets import Gallery\ndisplay(Gallery(city.media))",
    "check": "assert len(city.images) == 2",
}


def notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS.values()]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def executed(tmp_path: Path) -> dict[str, list[Any]]:
    """The notebook run by nbclient and saved; each cell's outputs as read back from the file."""
    nb = notebook()
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    path = tmp_path / "kept.ipynb"
    nbformat.write(nb, path)
    saved = nbformat.read(path, as_version=4)
    return {name: cell.outputs for name, cell in zip(CELLS, saved.cells, strict=True)}


def rich(outputs: list[Any]) -> list[dict[str, Any]]:
    return [o["data"] for o in outputs if o["output_type"] in ("display_data", "execute_result")]


def images(markup: str) -> list[int]:
    """The size of each inline image's base64 text."""
    return [len(m[1]) for m in IMAGE.finditer(markup)]


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    return executed(tmp_path_factory.mktemp("kept"))


def test_an_ended_jobs_progress_is_kept_as_its_static_view(kept: dict[str, list[Any]]) -> None:
    progress = [d for d in rich(kept["run"]) if d["text/plain"].startswith("<JobProgress")]
    assert len(progress) == 1, kept["run"]
    data = progress[0]
    assert WIDGET_VIEW not in data, "an ended job's output should hold no widget view"
    assert "succeeded in" in data["text/plain"]
    assert "succeeded" in data["text/html"] and "width:100.0%" in data["text/html"]


def test_a_displayed_gallery_is_kept_with_its_thumbnails(kept: dict[str, list[Any]]) -> None:
    (data,) = rich(kept["gallery"])
    assert WIDGET_VIEW not in data
    assert data["text/plain"].startswith("<Gallery: 2 files")
    sizes = images(data["text/html"])
    assert len(sizes) == 2 and all(0 < size <= MAX_IMAGE for size in sizes), sizes
    for match in IMAGE.finditer(data["text/html"]):
        base64.b64decode(match[1], validate=True)  # whole, not cut


def test_a_job_result_shown_as_the_cells_value_is_kept_static(kept: dict[str, list[Any]]) -> None:
    galleries = [d for d in rich(kept["run"]) if d["text/plain"].startswith("<Gallery")]
    assert galleries and all(WIDGET_VIEW not in d for d in galleries)


def test_nbconvert_execute_to_html_shows_the_thumbnails_offline(tmp_path: Path) -> None:
    source = tmp_path / "kept.ipynb"
    nbformat.write(notebook(), source)
    # no network: a proxy that refuses, so nothing is fetched from a CDN at conversion time
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "NO_PROXY": "127.0.0.1,localhost"}
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--execute", "--to", "html",
                    "--ExecutePreprocessor.timeout=180", str(source)],
                   cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    page = (tmp_path / "kept.html").read_text(encoding="utf-8")
    # the gallery cell's two thumbnails (and the result's, once the formatter keeps static views);
    # nbconvert rewrites the tag (`<img alt=".." src="data:image/..`), so any attribute order
    sizes = images(page)
    assert len(sizes) >= 2 and all(size <= MAX_IMAGE for size in sizes), sizes
    # the widget state was stored (nbconvert's default), yet the ended job shows its static view
    assert 'type="application/vnd.jupyter.widget-state+json"' in page
    progress = page[page.index('class="runcomfy-progress"'):]
    assert ">succeeded<" in progress[:3000] and "width:100.0%" in progress[:3000]
