"""A loaded gallery's downloads in a real JupyterLab and Notebook 7 (issue 16, point 3): its output
is the static view (what the notebook keeps), and there, live and after the notebook is saved, its
kernel shut down and reopened, the per-file download of a file over 32 KB and "download all" yield
the exact bytes (Playwright's expect_download), served by Jupyter from where the files were saved."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import nbformat
import pytest

from .jupyter import Notebook, browser, lab, notebook7

__all__ = ["browser", "lab", "notebook7"]  # the fixtures, used by name

NAME = "gallery_downloads.ipynb"
CELL = '''\
import asyncio, random, threading
from pathlib import Path
from PIL import Image
from runcomfy_nb.media import Media, classify
from runcomfy_nb.widgets import Gallery

loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
out = Path("gallery_out")
out.mkdir(exist_ok=True)
# noise does not compress: a PNG of about 100 KB, far over what a kept output embeds
Image.frombytes("RGB", (190, 180), random.Random(1).randbytes(190 * 180 * 3)).save(out / "big.png")
(out / "notes.txt").write_bytes(b"hello")

class Disk:
    """Reads the saved files, on its own loop, as the clients' fetchers do."""
    loop = loop
    async def read(self, media):
        return (out / media.filename).read_bytes()

media = [Media(url=f"https://example.invalid/{n}", filename=n, kind=classify(n, "images"), _fetcher=Disk())
         for n in ("big.png", "notes.txt")]
Gallery(media, paths=[out / m.filename for m in media], archive=out / "all.zip")
'''


def write_notebook(root: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(CELL)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / NAME)


def downloaded(notebook: Notebook, selector: str) -> bytes:
    link = notebook.code_cell(0).locator(selector)
    link.wait_for(state="visible", timeout=60_000)
    with notebook.page.expect_download(timeout=60_000) as download:
        link.click()
    return Path(download.value.path()).read_bytes()


def check_downloads(notebook: Notebook, root: Path) -> None:
    big = (root / "gallery_out" / "big.png").read_bytes()
    assert len(big) > 32 * 1024
    assert downloaded(notebook, 'a[download="big.png"]') == big
    with zipfile.ZipFile(io.BytesIO(downloaded(notebook, 'a[download="all.zip"]'))) as archive:
        assert archive.namelist() == ["big.png", "notes.txt"]
        assert archive.read("big.png") == big and archive.read("notes.txt") == b"hello"
    image = notebook.code_cell(0).locator('a[title="open full size"] img')
    assert notebook.page.evaluate("(img) => img.naturalWidth", image.element_handle()) > 0


@pytest.mark.parametrize("app", ["lab", "notebook7"])
def test_per_file_download_and_download_all_live_and_kept(browser: Any, app: str,
                                                          request: pytest.FixtureRequest) -> None:
    lab = request.getfixturevalue(app)  # JupyterLab, then Notebook 7
    write_notebook(lab.root)
    notebook = Notebook.open(browser, lab, NAME)
    try:
        notebook.run_all(timeout=180)
        check_downloads(notebook, lab.root)  # live: the kernel runs
        notebook.screenshot("gallery-downloads", notebook.code_cell(0))
        notebook.save_and_shutdown()
        saved = nbformat.read(lab.root / NAME, as_version=4)
        html = saved.cells[0].outputs[0]["data"]["text/html"]
        assert "<script" not in html and str(lab.root) not in html and "example.invalid" not in html
        notebook.close()
        notebook = Notebook.open(browser, lab, NAME)  # kept: no kernel made these outputs
        check_downloads(notebook, lab.root)
        assert "model not found" not in notebook.code_cell(0).inner_text()
        assert not notebook.errors, "\n".join(notebook.errors[:10])
    finally:
        notebook.discard()


def untrust(path: Path) -> None:
    """As a notebook someone else ran arrives: its outputs are not signed by this user."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata["received_from"] = "a colleague"  # another digest: the signature no longer matches
    nbformat.write(nb, path)


def test_an_untrusted_notebook_shows_the_gallery_and_links_the_files(browser: Any, lab: Any) -> None:
    """A notebook another person ran (its outputs not signed here): JupyterLab sanitizes the static
    view, which still shows every thumbnail and links each saved file and the ZIP through Jupyter's
    files URL; the sanitizer drops `download`, so a click opens the file in JupyterLab instead
    (the README says so: trust the notebook, or save the link)."""
    write_notebook(lab.root)
    notebook = Notebook.open(browser, lab, NAME)
    try:
        notebook.run_all(timeout=180)
        notebook.save_and_shutdown()
        notebook.close()
        untrust(lab.root / NAME)
        notebook = Notebook.open(browser, lab, NAME)
        cell = notebook.code_cell(0)
        image = cell.locator('a[title="open full size"] img')
        image.wait_for(timeout=30_000)
        assert notebook.page.evaluate("(img) => img.naturalWidth", image.element_handle()) > 0
        links = {name: link.first.get_attribute("href") or "" for name, link in (
            ("big.png", cell.locator('a[title="open full size"]')),
            ("all.zip", cell.locator("a", has_text="download all")))}
        for name, href in links.items():
            assert f"/files/gallery_out/{name}" in href, links
        assert cell.locator("a[download]").count() == 0  # sanitized, as JupyterLab does
        assert "model not found" not in cell.inner_text()
        assert not notebook.errors, "\n".join(notebook.errors[:10])
    finally:
        notebook.discard()
