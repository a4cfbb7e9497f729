"""What an upload sends: the file's name, its bytes and the form of `/upload/image` or `/upload/mask`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from ...errors import ValidationError
from .replies import UploadedFile


def _read(file: str | os.PathLike[str] | bytes, filename: str | None) -> tuple[str, bytes]:
    if isinstance(file, (bytes, bytearray, memoryview)):
        if not filename:
            raise ValidationError("Uploading bytes needs filename=..., e.g. filename='cat.png'.")
        return filename, bytes(file)
    path = Path(file)
    if not path.is_file():
        raise ValidationError(f"No file to upload at {path}.")
    return filename or path.name, path.read_bytes()


def upload_parts(
    file: str | os.PathLike[str] | bytes, *, filename: str | None, subfolder: str, type: str,
    overwrite: bool, mask: bool, original_ref: UploadedFile | Mapping[str, str] | None,
) -> tuple[str, bytes, dict[str, str]]:
    """The name, bytes and form of an upload, checked before anything is sent."""
    filename, data = _read(file, filename)
    name = PurePosixPath(str(filename).replace("\\", "/")).name
    if not name or name in (".", ".."):
        raise ValidationError(f"{filename!r} is not a usable file name.")
    if type not in ("input", "temp", "output"):
        raise ValidationError(f"type must be 'input', 'temp' or 'output', not {type!r}.")
    form = {"overwrite": "true" if overwrite else "false", "type": type, "subfolder": subfolder}
    if mask:
        if original_ref is None:
            raise ValidationError("A mask needs original_ref=: the uploaded image it applies to.")
        ref = original_ref if isinstance(original_ref, Mapping) else {
            "filename": original_ref.name, "subfolder": original_ref.subfolder, "type": original_ref.type}
        form["original_ref"] = json.dumps(dict(ref))
    return name, data, form
