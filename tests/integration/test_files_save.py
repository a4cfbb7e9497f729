"""Saving outputs: never over an existing file, into `output_dir` by default, automatically with
auto-save. (Safe output names are unit tests: tests/unit/test_media.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

import runcomfy_nb as rc
from runcomfy_nb.events import JobResult
from runcomfy_nb.media import Media

from ..helpers import downloaded

FLUX = "dep-flux-kontext"
SHARED = "ComfyUI_00001_.png"  # ComfyUI names the first image of every run this way


async def run(client: rc.AsyncRunComfy, seed: int) -> JobResult:
    job = await client.deployments.submit(FLUX, {"31": {"inputs": {"seed": seed}}})
    return await job.result(timeout=30)


def named(media: Media, filename: str) -> Media:
    return dataclasses.replace(media, filename=filename)


async def test_two_jobs_with_one_output_name_keep_both_files(client: rc.AsyncRunComfy,
                                                             tmp_path: Path) -> None:
    first, second = await run(client, 1), await run(client, 2)
    outputs = [named(first.media[0], SHARED), named(second.media[0], SHARED)]
    paths = [await m.save(tmp_path) for m in outputs]
    assert {p.name for p in tmp_path.iterdir()} == {SHARED, "ComfyUI_00001_ (1).png"}
    for media, path in zip(outputs, paths, strict=True):
        assert downloaded(path) == await media.read()


async def test_concurrent_saves_of_one_name_pick_distinct_files(client: rc.AsyncRunComfy,
                                                                tmp_path: Path) -> None:
    media = named((await run(client, 3)).media[0], SHARED)
    (tmp_path / SHARED).write_bytes(b"mine")  # a file already there is never touched
    paths = await asyncio.gather(*(media.save(tmp_path) for _ in range(4)))
    assert len(set(paths)) == 4 and (tmp_path / SHARED).read_bytes() == b"mine"
    assert sorted(p.name for p in paths) == [f"ComfyUI_00001_ ({n}).png" for n in range(1, 5)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial file left


async def test_output_dir_is_the_default_of_every_save(client: rc.AsyncRunComfy, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNCOMFY_OUTPUT_DIR", str(tmp_path / "renders"))
    result = await run(client, 4)
    one = await result.media[0].save()
    every = await result.save()
    assert one.parent == tmp_path / "renders"
    assert {p.parent for p in every} == {tmp_path / "renders"} and len(every) == len(result.media)
    assert result.media[0].copies == [one, every[0]] and result.media[0].saved == every[0]
    assert not (tmp_path / "outputs").exists()


async def test_auto_save_downloads_each_finished_job(client: rc.AsyncRunComfy, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "auto"
    monkeypatch.setenv("RUNCOMFY_OUTPUT_DIR", str(folder))
    monkeypatch.setenv("RUNCOMFY_AUTO_SAVE", "1")
    result = await run(client, 5)
    saved = sorted(p.name for p in folder.iterdir())  # there as soon as the result is
    assert len(saved) == len(result.media) > 0
    assert sorted(m.filename for m in result.media) == saved
    assert sorted(m.saved.name for m in result.media if m.saved) == saved  # the gallery links them
    said = capsys.readouterr().out
    assert str(folder) in said and all(name in said for name in saved)
