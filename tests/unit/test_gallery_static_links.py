"""Gallery, issue 16 point 3 in a kept (static) view: a saved file under the notebook's folder is
linked relatively (full size and download, served by Jupyter with or without a kernel), and
`archive` gives "download all" one ZIP of the saved files; no absolute path, URL or script."""

from __future__ import annotations

import asyncio
import zipfile
from pathlib import Path

import pytest

from runcomfy_nb.widgets import Gallery
from runcomfy_nb.widgets.fallback import fit_images
from runcomfy_nb.widgets.files import local_href

from .test_gallery_downloads import Fetcher, _empty_cache, files, media_for, thread_loop

__all__ = ["_empty_cache", "thread_loop"]  # fixtures, used by name

pytestmark = pytest.mark.usefixtures("_empty_cache")


def saved(folder: Path, data: dict[str, bytes], *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(data[name])
    return [folder / name for name in names]


def test_local_href_only_for_a_file_under_the_working_directory(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "nb" / "out dir").mkdir(parents=True)
    (tmp_path / "nb" / "out dir" / "a#1.png").write_bytes(b"x")
    (tmp_path / "elsewhere.png").write_bytes(b"x")
    monkeypatch.chdir(tmp_path / "nb")
    assert local_href(tmp_path / "nb" / "out dir" / "a#1.png") == "out%20dir/a%231.png"
    assert local_href("out dir/a#1.png") == "out%20dir/a%231.png"
    assert local_href(tmp_path / "elsewhere.png") == ""  # outside: no ../ links
    assert local_href("out dir/missing.png") == "" and local_href("") == ""
    assert local_href("out dir") == ""  # a folder is no file


def test_a_large_saved_file_links_for_download_and_full_size(thread_loop: asyncio.AbstractEventLoop,
                                                             tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = files()
    names = ("still.png", "long.mp4", "clip.mp4")
    paths = saved(tmp_path / "outputs", data, *names)
    gallery = Gallery(media_for(Fetcher(data, thread_loop), *names), paths=paths)
    html = gallery.static_bundle()[0]["text/html"]
    # today's main showed only "saved: <absolute path>" for a file over 32 KB
    assert '<a download="still.png" href="outputs/still.png"' in html
    assert '<a download="long.mp4" href="outputs/long.mp4"' in html
    assert '<a href="outputs/still.png" target="_blank" title="open full size"><img' in html
    assert 'download="clip.mp4" href="data:video/mp4;base64,' in html  # small: embedded, offline too
    assert str(tmp_path) not in html and "machine.secret" not in html and "<script" not in html
    assert "download all" not in html  # no archive asked for


def test_archive_is_one_zip_of_the_saved_files(thread_loop: asyncio.AbstractEventLoop, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = files()
    names = ("still.png", "long.mp4", "notes.txt")
    paths = saved(tmp_path / "outputs", data, *names)
    gallery = Gallery(media_for(Fetcher(data, thread_loop), *names), paths=paths,
                      archive=tmp_path / "outputs" / "all.zip")
    html = fit_images(gallery.static_bundle()[0]["text/html"])
    assert '<a download="all.zip" href="outputs/all.zip"' in html and "download all (3 files" in html
    with zipfile.ZipFile(tmp_path / "outputs" / "all.zip") as archive:
        assert archive.namelist() == list(names)
        assert all(archive.read(n) == data[n] for n in names)
    assert str(tmp_path) not in html


def test_no_archive_link_when_a_file_is_not_saved_under_the_folder(thread_loop: asyncio.AbstractEventLoop,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path / "..")
    data = files()
    paths = saved(tmp_path, data, "still.png")
    gallery = Gallery(media_for(Fetcher(data, thread_loop), "still.png", "notes.txt"),
                      paths=[paths[0], None], archive=tmp_path / "all.zip")
    assert "download all" not in gallery.static_bundle()[0]["text/html"]
    assert not (tmp_path / "all.zip").exists()


def test_a_job_result_shown_by_default_links_its_saved_copies(thread_loop: asyncio.AbstractEventLoop,
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The printer IPython uses for a cell's JobResult: once its media were saved (`auto_save`,
    `save()`, an attached job's copies), its kept view downloads them, each and all."""
    from runcomfy_nb import _result_as_gallery
    from runcomfy_nb.events import JobResult

    monkeypatch.chdir(tmp_path)
    data = files()
    names = ("still.png", "long.mp4")
    media = media_for(Fetcher(data, thread_loop), *names)
    result = JobResult("84cfb70b-1234", media=media)
    before = _result_as_gallery(result)[0]["text/html"]
    assert 'href="outputs/still.png"' not in before and "download all" not in before
    for item, path in zip(media, saved(tmp_path / "outputs", data, *names), strict=True):
        item.copies.append(path)  # as `Media.save` records it
    html = _result_as_gallery(result)[0]["text/html"]
    # before: the default display built its Gallery without the saved paths, so neither link
    assert '<a download="still.png" href="outputs/still.png"' in html
    assert '<a download="84cfb70b outputs.zip" href="outputs/84cfb70b%20outputs.zip"' in html
    with zipfile.ZipFile(tmp_path / "outputs" / "84cfb70b outputs.zip") as archive:
        assert archive.namelist() == list(names)
    assert str(tmp_path) not in html


def test_a_job_result_shown_static_keeps_no_widget(thread_loop: asyncio.AbstractEventLoop) -> None:
    """Its output is the static view: the Gallery that made it is closed, not kept in the kernel
    (one per shown result) nor opened in a front end without widgets."""
    from ipywidgets.widgets.widget import _instances

    from runcomfy_nb import _result_as_gallery
    from runcomfy_nb.events import JobResult
    from runcomfy_nb.widgets.fallback import WIDGET_VIEW

    media = media_for(Fetcher(files(), thread_loop), "still.png")
    before = set(_instances)
    data, _meta = _result_as_gallery(JobResult("84cfb70b-1234", media=media))
    assert WIDGET_VIEW not in data and "still.png" in data["text/html"]
    assert set(_instances) == before
