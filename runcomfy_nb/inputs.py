"""Local files as job inputs: uploaded to a ComfyUI/Cloud server, sent as data URIs to a
serverless deployment, refused where only public URLs work (LoRA deployments, Model API).
Sizes and formats are checked by content before anything is sent."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import ValidationError
from .media import AUDIO_EXT, IMAGE_EXT, VIDEO_EXT, classify, mime_type

MEDIA_EXT = IMAGE_EXT | VIDEO_EXT | AUDIO_EXT
# shared/api/serverless.md, "Media inputs": a data URI's recommended limit is "images ≤ 256 KB
# (~512×512); videos ≤ 1 MB (short 480p)"; larger files go as a public URL (images ≤ 50 MB).
DATA_URI_LIMIT = {"image": 256 * 1024, "video": 1024 * 1024, "audio": 1024 * 1024}
Upload = Callable[[Path], Awaitable[str]]


def local_file(value: Any) -> Path | None:
    """The local file `value` names: a `Path`, or a str naming an existing local image, video or
    audio file; None for URLs, data URIs and names that exist only on the server ("example.png")."""
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value or "://" in value or value.startswith("data:"):
        return None
    path = Path(value).expanduser()
    if path.suffix.lower() not in MEDIA_EXT:
        return None
    try:
        return path if path.is_file() else None
    except OSError:  # a name too long or otherwise impossible here
        return None


def _magic_kind(head: bytes) -> str | None:
    """The container a file's first bytes announce (mp4/mov, webm/mkv, wav, mp3, flac, ogg)."""
    if head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    return None


_MAGIC_OF = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mp4", ".m4a": "mp4", ".webm": "webm",
             ".mkv": "webm", ".wav": "wav", ".mp3": "mp3", ".flac": "flac", ".ogg": "ogg",
             ".opus": "ogg"}


def check_file(path: Path) -> str:
    """The file's kind ('image', 'video', 'audio') once its content is what its name says:
    images are opened with Pillow, videos and audio checked by their magic bytes."""
    if not path.is_file():
        raise ValidationError(f"No input file at {path}.")
    kind = classify(path.name)
    if kind == "image":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ValidationError(f"{path} is not a readable image ({exc}).") from None
        return kind
    expected = _MAGIC_OF.get(path.suffix.lower())
    with path.open("rb") as file:
        found = _magic_kind(file.read(16))
    if expected is not None and found != expected:
        raise ValidationError(f"{path} is not a {path.suffix.lstrip('.')} file "
                              f"(its content looks like {found or 'something else'}).")
    return kind


def _paths_in(value: Any) -> list[Path]:
    if isinstance(value, Mapping):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, list) and not _is_link(value):
        return [p for v in value for p in _paths_in(v)]
    path = local_file(value)
    return [path] if path is not None else []


def _is_link(value: list[Any]) -> bool:
    """A node input that is a link to another node's output: ["4", 0]."""
    return len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _replaced(value: Any, new: Callable[[Path], Any]) -> Any:
    if isinstance(value, Mapping):
        return {k: _replaced(v, new) for k, v in value.items()}
    if isinstance(value, list) and not _is_link(value):
        return [_replaced(v, new) for v in value]
    path = local_file(value)
    return value if path is None else new(path)


async def upload_local_files(workflow: Any, upload: Upload) -> Any:
    """The workflow (a `Workflow` or an API dict, returned as the same type) with every local file
    in a node input (LoadImage.image, a video loader's video, LoadAudio.audio...) uploaded with
    `upload(path) -> stored name` and replaced by that name. All files are checked first, so a bad
    one stops the submit before anything is sent; a file used twice is uploaded once."""
    given = workflow.data if hasattr(workflow, "to_api") else workflow
    nodes = {node_id: node.get("inputs", {}) for node_id, node in given.items()}
    paths = list(dict.fromkeys(_paths_in(nodes)))
    for path in paths:
        check_file(path)
    if not paths:
        return workflow  # nothing to upload: not even a copy (this runs on every submit)
    api = workflow.to_api() if hasattr(workflow, "to_api") else dict(workflow)
    stored = {path: await upload(path) for path in paths}
    for node_id, inputs in nodes.items():
        api[node_id] = {**api[node_id], "inputs": _replaced(inputs, stored.__getitem__)}
    return type(workflow)(api) if hasattr(workflow, "to_api") else api


def within_data_uri_limit(path: Path) -> None:
    """Check the file's format, and its size against the limit the serverless API documents for
    data URIs; a ValidationError names the file, its size and the limit, and advises a public URL."""
    kind = check_file(path)
    size, limit = path.stat().st_size, DATA_URI_LIMIT.get(kind, 0)
    if size > limit:
        raise ValidationError(
            f"{path.name} is {size / 1024:,.0f} KB; a serverless deployment takes {kind}s as data "
            f"URIs up to {limit // 1024:,} KB. Upload it somewhere public and pass its https URL.")


def _encoded(path: Path) -> str:
    return f"data:{mime_type(path.name)};base64,{base64.b64encode(path.read_bytes()).decode()}"


def data_uri(path: Path) -> str:
    """The file as a data URI, once `within_data_uri_limit` passes."""
    within_data_uri_limit(path)
    return _encoded(path)


def data_uri_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Serverless overrides (or inputs) with each local file replaced by its data URI; every file
    is checked (`within_data_uri_limit`) before any is encoded."""
    for path in dict.fromkeys(_paths_in(inputs)):
        within_data_uri_limit(path)
    return dict(_replaced(inputs, _encoded))


def _wants_url(value: Any) -> bool:
    """Whether a value is a file reference (a path, a data URI, a URL or a media file name)."""
    if isinstance(value, Path):
        return True
    if not isinstance(value, str):
        return False
    if value.startswith(("data:", "http://", "file:")):
        return True
    return not value.startswith("https://") and Path(value.split("?")[0]).suffix.lower() in MEDIA_EXT


def require_public_urls(inputs: Mapping[str, Any], service: str) -> None:
    """Refuse a local path, data URI or non-https value where a file is expected: LoRA
    deployments and the Model API fetch their inputs from public https URLs only."""
    for key, value in inputs.items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            if _wants_url(item):
                raise ValidationError(
                    f"Input {key!r} of {service} is {str(item)[:80]!r}; {service} needs a public "
                    "https URL for files (local files and data URIs are not accepted): upload "
                    "it somewhere public and pass its https:// URL.")
