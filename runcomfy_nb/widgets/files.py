"""A gallery's saved files as the static view links them, with no kernel: a relative link to a
file under the notebook's folder (`local_href`) and one ZIP of them all (`write_archive`, `zipped`)."""

from __future__ import annotations

import logging
import zipfile
from io import BytesIO
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger("runcomfy_nb")

__all__ = ["local_href", "write_archive", "zipped"]


def local_href(path: str | Path) -> str:
    """A relative link to a saved file under the kernel's working directory ('' for any other):
    JupyterLab and Notebook 7 start a kernel in the notebook's folder and resolve a relative link
    in an output against it, serving the file through /files/, so a kept notebook's link works
    while the server runs, with or without a kernel. No absolute path or URL goes in the HTML."""
    if not path:
        return ""
    try:
        target = Path(path).resolve()
        relative = target.relative_to(Path.cwd().resolve())
    except (OSError, ValueError):
        return ""
    return quote(relative.as_posix()) if target.is_file() else ""


def write_archive(archive: Path, paths: list[str]) -> str:
    """Write `archive`, one ZIP of the saved files at `paths`, when every one lies under the
    notebook's folder; its relative link ('' when not written or not under that folder)."""
    if not paths or not all(map(local_href, paths)):
        return ""
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
        archive.write_bytes(zipped([Path(p).name for p in paths], [Path(p).read_bytes() for p in paths]))
    except OSError:
        log.warning("could not write %s", archive.name, exc_info=True)
        return ""
    return local_href(archive)


def zipped(names: list[str], contents: list[bytes]) -> bytes:
    """One ZIP of the files, each under its own name (`name (2).ext` for a repeated one); media is
    already compressed, so stored as it is."""
    out, seen = BytesIO(), set()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in zip(names, contents, strict=True):
            stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
            unique, n = name, 1
            while unique in seen:
                n += 1
                unique = f"{stem} ({n}){dot}{ext}"
            seen.add(unique)
            archive.writestr(unique, data)
    return out.getvalue()
