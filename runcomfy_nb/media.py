"""Output files: what kind they are, where they live, how to fetch and save them."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from .config import Config
from .journal import journal
from .provenance import embed

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"}
ANIMATED_EXT = {".gif", ".webp"}
VIDEO_EXT = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v"}
AUDIO_EXT = {".mp3", ".wav", ".flac", ".ogg", ".m4a", ".opus"}
VIDEO_KEYS = {"gifs", "videos", "video", "animated"}
MAX_NAME = 180
# Windows opens a device, not a file, for these names whatever their extension
_DEVICE = re.compile(r"(?i)(con|prn|aux|nul|com[1-9]|lpt[1-9]) *(\..*)?")
log = logging.getLogger("runcomfy_nb")


def classify(filename: str, key: str = "") -> str:
    """'image', 'video', 'audio' or 'other', by extension; an animated image format listed
    under a video key (ComfyUI's `gifs`) counts as a video."""
    ext = PurePosixPath(filename.lower()).suffix
    if ext in VIDEO_EXT or (ext in ANIMATED_EXT and key.lower() in VIDEO_KEYS):
        return "video"
    if ext in IMAGE_EXT:
        return "image"
    if ext in AUDIO_EXT:
        return "audio"
    return "other"


def mime_type(filename: str) -> str:
    ext = PurePosixPath(filename.lower()).suffix.lstrip(".")
    return {
        "jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
        "gif": "image/gif", "mp4": "video/mp4", "webm": "video/webm", "mov": "video/quicktime",
        "mp3": "audio/mpeg", "wav": "audio/wav", "ogg": "audio/ogg", "flac": "audio/flac",
    }.get(ext, "application/octet-stream")


def safe_filename(name: str, fallback: str = "output") -> str:
    """A file name that cannot escape its folder or trouble a file system: no path, no odd
    characters, at most 180 characters with its extension kept, never a Windows device name
    (`CON.png` becomes `_CON.png`)."""
    base = PurePosixPath(name.replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._ ()+-]", "_", base).strip(" .")
    if len(base) > MAX_NAME:
        suffix = PurePosixPath(base).suffix
        suffix = suffix if len(suffix) <= 16 else ""
        base = base[: MAX_NAME - len(suffix)].rstrip(" .") + suffix
    if _DEVICE.fullmatch(base):
        base = "_" + base
    return base or fallback


def claim(finished: Path, target: Path) -> Path:
    """Move the finished file to `target`, or, when that name is taken, to the first free
    `stem (1).ext`, `stem (2).ext`, ... beside it; returns where it went. It never replaces a file:
    each name is taken atomically (a hard link, or an exclusive create where links are not
    supported), so two saves at once never pick the same one."""
    suffix = PurePosixPath(target.name).suffix
    stem = target.name[: len(target.name) - len(suffix)]
    for n in itertools.count():
        candidate = target if n == 0 else target.with_name(f"{stem} ({n}){suffix}")
        try:
            os.link(finished, candidate)
        except FileExistsError:
            continue
        except OSError:  # no hard links here: reserve the name, then move the file over the reservation
            try:
                os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                continue
            os.replace(finished, candidate)
            return candidate
        os.unlink(finished)
        return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def output_dir() -> Path:
    """The default folder of every save: the `output_dir` setting (`RUNCOMFY_OUTPUT_DIR`,
    `%runcomfy config output_dir=...`), else `outputs`; read at each call."""
    return Path(Config.from_env().output_dir)


async def auto_save(job_id: str, media: list[Media]) -> list[Path]:
    """With the `auto_save` setting on (`RUNCOMFY_AUTO_SAVE=1`, `%runcomfy config auto_save=on`),
    save a finished job's media into `output_dir` and say where they went. A failed download is
    logged and ends nothing: the job's result stays whole."""
    if not media or not Config.from_env().auto_save:
        return []
    folder = output_dir()
    try:
        paths = [await m.save(folder) for m in media]
    except Exception as exc:
        log.warning("Auto-save of job %s into %s failed: %s", job_id, folder, exc)
        return []
    print(f"Saved {len(paths)} output{'s' if len(paths) > 1 else ''} of job {job_id} to "
          f"{folder.resolve()}: {', '.join(p.name for p in paths)}")
    return paths


def filename_from_url(url: str) -> str:
    return safe_filename(unquote(PurePosixPath(urlsplit(url).path).name))


class Fetcher(Protocol):
    """Reads output files; never sends our credentials to the file's host. `save` writes to `path`,
    or beside it under a free name (see `claim`), never over a file, and returns where. `loop` is the event
    loop it works on. A fetcher may add `public_url(media)` when a browser can load the URL
    itself (widgets then use it instead of passing bytes through the kernel)."""

    @property
    def loop(self) -> Any: ...

    async def read(self, media: Media) -> bytes: ...

    async def save(self, media: Media, path: Path) -> Path: ...


@dataclass(frozen=True)
class Media:
    """One output file of a job. Its URL stays out of the repr: some (a machine's /view) grant access."""

    url: str = field(repr=False)
    filename: str
    kind: str
    node: str | None = None
    subfolder: str = ""
    type: str = "output"
    _fetcher: Fetcher | None = field(default=None, repr=False, compare=False)
    # what produced it (`Job.provenance`); a save embeds it (see `provenance.embed`)
    provenance: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    copies: list[Path] = field(default_factory=list, repr=False, compare=False)  # where `save` wrote it

    @classmethod
    def from_url(cls, url: str, *, key: str = "", node: str | None = None,
                 fetcher: Fetcher | None = None, **extra: Any) -> Media:
        filename = safe_filename(extra.get("filename") or filename_from_url(url))
        return cls(url=url, filename=filename, kind=classify(filename, key), node=node,
                   subfolder=extra.get("subfolder") or "", type=extra.get("type") or "output",
                   _fetcher=fetcher)

    @property
    def saved(self) -> Path | None:
        """Where it was last saved, if it was."""
        return self.copies[-1] if self.copies else None

    @property
    def mime(self) -> str:
        return mime_type(self.filename)

    def _require_fetcher(self) -> Fetcher:
        if self._fetcher is None:
            raise RuntimeError(f"{self.filename} has no client to download it with")
        return self._fetcher

    async def read(self) -> bytes:
        """The file's bytes."""
        return await self._require_fetcher().read(self)

    async def save(self, directory: str | Path | None = None, name: str | None = None) -> Path:
        """Download into `directory` (default: `output_dir()`), streamed and written atomically;
        returns the path written. It never overwrites a file: when the name is taken, the file is
        saved as `name (1).ext`, `name (2).ext`, ... (see `claim`). The file carries the job's
        provenance: in a PNG's text chunks or a WebP's EXIF, else in `<name>.json` beside it."""
        folder = output_dir() if directory is None else Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        path = await self._require_fetcher().save(self, folder / safe_filename(name or self.filename))
        self.copies.append(path)
        if self.provenance:
            embed(path, self.provenance)
            job_id = self.provenance.get("job_id")
            if job_id:
                with contextlib.suppress(sqlite3.Error, OSError):  # the file is saved: that counts
                    journal().saved(str(job_id), self.filename, path)
        return path


def media_from_outputs(outputs: Any, fetcher: Fetcher | None) -> tuple[list[Media], list[str]]:
    """Media and text from any result shape: ComfyUI `outputs` per node (items with `url` or the
    filename triple), or a LoRA/Model API `output` of URL strings, lists or objects of them."""
    found = _Found(fetcher)
    per_node = isinstance(outputs, dict) and bool(outputs) and all(
        _looks_like_node_id(k) and isinstance(v, dict) for k, v in outputs.items()
    )
    if per_node:
        for node_id, per_kind in outputs.items():
            for key, items in per_kind.items():
                found.walk(items, key, node_id)
    else:
        found.walk(outputs, "", None)
    return found.media, found.text


class _Found:
    """What a walk through a result has found so far."""

    def __init__(self, fetcher: Fetcher | None) -> None:
        self.fetcher = fetcher
        self.media: list[Media] = []
        self.text: list[str] = []

    def walk(self, value: Any, key: str, node: str | None) -> None:
        if isinstance(value, str):
            self._string(value, key, node)
        elif isinstance(value, list):
            for item in value:
                self.walk(item, key, node)
        elif isinstance(value, dict):
            if isinstance(value.get("url"), str):
                self.media.append(Media.from_url(
                    value["url"], key=key, node=node, fetcher=self.fetcher,
                    **{k: value.get(k) for k in ("filename", "subfolder", "type")}))
                return
            for sub_key, sub_value in value.items():
                self.walk(sub_value, sub_key, node)

    def _string(self, value: str, key: str, node: str | None) -> None:
        if value.startswith(("http://", "https://")):
            self.media.append(Media.from_url(value, key=key, node=node, fetcher=self.fetcher))
        elif key == "text" or value:
            self.text.append(value)


def _looks_like_node_id(key: str) -> bool:
    return bool(re.fullmatch(r"\d+(:\d+)*", str(key)))
