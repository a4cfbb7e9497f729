"""Provenance: what produced an output (target, kind, job id, workflow or overrides, inputs,
seeds, extra_data without secrets), embedded in every saved output so it can be rerun.

PNG: tEXt chunks inserted into the original bytes (the pixels are not re-encoded) the way
ComfyUI's SaveImage writes them: `prompt` (the API workflow), each `extra_pnginfo` key (ComfyUI's
`workflow`), plus `runcomfy` (the whole provenance). WebP: EXIF the way ComfyUI's SaveAnimatedWEBP
writes it (0x0110 = "prompt:<json>", 0x010F downwards = "<key>:<json>"), added as an EXIF chunk
without re-encoding. Any other file: a sidecar `<file name>.json` beside it (`x.mp4.json`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .config import Secret
from .errors import ValidationError

log = logging.getLogger("runcomfy_nb")
W = TypeVar("W")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEED_NAMES = {"seed", "noise_seed"}
_SECRET_WORDS = ("api_key", "apikey", "token", "secret", "password", "authorization")
_EXIF_PROMPT, _EXIF_FIRST_EXTRA = 0x0110, 0x010F
# the keys of a provenance that say where a job ran, without what it ran
_TARGET_KEYS = ("target", "kind", "job_id", "inputs", "seeds", "extra_data")


def _is_secret_key(key: Any) -> bool:
    return any(word in str(key).lower() for word in _SECRET_WORDS)


def without_secrets(value: Any) -> Any:
    """`value` without `Secret`s and without keys that name a credential (`api_key_comfy_org`,
    `*token*`, `*secret*`, `*password*`...), at any depth. What holds none is returned as it is, not
    copied (a sweep's jobs share their workflow's unchanged nodes); treat the result as read-only."""
    if isinstance(value, Mapping):
        kept = {k: without_secrets(v) for k, v in value.items()
                if not _is_secret_key(k) and not isinstance(v, Secret)}
        same = isinstance(value, dict) and len(kept) == len(value) and all(
            kept[k] is v for k, v in value.items())
        return value if same else kept
    if isinstance(value, list | tuple):
        items = [without_secrets(v) for v in value if not isinstance(v, Secret)]
        same = isinstance(value, list) and len(items) == len(value) and all(
            a is b for a, b in zip(items, value, strict=True))
        return value if same else items
    return value


def seeds_of(nodes: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The seed inputs (`seed`, `noise_seed`) per node of an API workflow or of overrides."""
    found: dict[str, dict[str, Any]] = {}
    for node_id, node in (nodes or {}).items():
        inputs = node.get("inputs", {}) if isinstance(node, Mapping) else {}
        seeds = {k: v for k, v in inputs.items() if k in SEED_NAMES and not isinstance(v, list)}
        if seeds:
            found[str(node_id)] = seeds
    return found


def record(*, target: str, kind: str, job_id: str, workflow: Any = None,
           overrides: Mapping[str, Any] | None = None, inputs: Mapping[str, Any] | None = None,
           extra_data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The provenance of one submit, for `Job.provenance`. `target` is a deployment id, a model
    id, "comfyui" or "comfy cloud" (never a URL or token); `workflow` an API workflow (or a
    `Workflow`); `overrides` a serverless job's overrides; `inputs` a LoRA/Model API body.
    Secrets are dropped from everything."""
    if str(target).startswith(("http://", "https://")):
        raise ValueError("a provenance target is an id or a service name, not a URL")
    api = workflow.to_api() if hasattr(workflow, "to_api") else workflow
    found = {"target": target, "kind": kind, "job_id": job_id, "workflow": api,
             "overrides": overrides, "inputs": inputs, "extra_data": extra_data}
    kept: dict[str, Any] = without_secrets({k: v for k, v in found.items() if v is not None})
    seeds = seeds_of(api) or seeds_of(overrides)
    flat = {k: v for k, v in (inputs or {}).items() if k in SEED_NAMES}
    if seeds or flat:
        kept["seeds"] = seeds or flat
    return kept


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)  # ASCII: fits a tEXt chunk and an EXIF string


def metadata(provenance: Mapping[str, Any]) -> dict[str, str]:
    """The text entries a saved image carries, in ComfyUI's order: `prompt`, the extra_pnginfo
    keys (ComfyUI's UI `workflow`), then `runcomfy`."""
    entries: dict[str, str] = {}
    if provenance.get("workflow"):
        entries["prompt"] = _dumps(provenance["workflow"])
    extra = (provenance.get("extra_data") or {}).get("extra_pnginfo") or {}
    for key, value in extra.items():
        entries[str(key)] = _dumps(value)
    entries["runcomfy"] = _dumps(dict(provenance))
    return entries


# --- writing ------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG, each as (type, the whole chunk's bytes)."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    chunks, at = [], 8
    while at + 12 <= len(data):
        size = struct.unpack(">I", data[at:at + 4])[0]
        chunks.append((data[at + 4:at + 8], data[at:at + 12 + size]))
        at += 12 + size
    return chunks


def _text_keyword(kind: bytes, chunk: bytes) -> str | None:
    if kind not in (b"tEXt", b"zTXt", b"iTXt"):
        return None
    return chunk[8:].split(b"\0", 1)[0].decode("latin-1")


def _png_without(data: bytes, keys: set[str]) -> list[tuple[bytes, bytes]]:
    return [(k, c) for k, c in _png_chunks(data) if _text_keyword(k, c) not in keys]


def png_with_text(data: bytes, entries: Mapping[str, str]) -> bytes:
    """The PNG with tEXt chunks added after its IHDR (replacing text chunks of the same keys, e.g.
    the `prompt` ComfyUI wrote); every other byte is kept."""
    chunks = _png_without(data, set(entries))
    text = b"".join(_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1"))
                    for k, v in entries.items())
    return PNG_SIGNATURE + chunks[0][1] + text + b"".join(c for _, c in chunks[1:])


def without_provenance(data: bytes) -> bytes:
    """A saved PNG's bytes without the text chunks `embed` added: the bytes as downloaded (when
    the server's file had none of those keys). Other files are returned as they are."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    ours = next((c for k, c in _png_chunks(data) if _text_keyword(k, c) == "runcomfy"), None)
    if ours is None:
        return data
    keys = set(metadata(json.loads(ours[8:-4].split(b"\0", 1)[1])))
    return PNG_SIGNATURE + b"".join(c for _, c in _png_without(data, keys))


def _exif(entries: Mapping[str, str]) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    tag = _EXIF_FIRST_EXTRA
    for key, value in entries.items():
        if key == "prompt":
            exif[_EXIF_PROMPT] = f"prompt:{value}"
        else:
            exif[tag] = f"{key}:{value}"
            tag -= 1
    raw = exif.tobytes()
    return raw[6:] if raw.startswith(b"Exif\0\0") else raw


def _riff_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP file")
    chunks, at = [], 12
    while at + 8 <= len(data):
        kind, size = data[at:at + 4], struct.unpack("<I", data[at + 4:at + 8])[0]
        chunks.append((kind, data[at + 8:at + 8 + size]))
        at += 8 + size + (size & 1)
    return chunks


def _vp8x(chunks: list[tuple[bytes, bytes]], size: tuple[int, int]) -> bytes:
    """A VP8X header for a simple (VP8/VP8L) WebP: its canvas size, the alpha flag if it has alpha."""
    kinds = {k for k, _ in chunks}
    lossless = next((d for k, d in chunks if k == b"VP8L"), b"")
    alpha = b"ALPH" in kinds or (len(lossless) >= 5 and bool(lossless[4] & 0x10))
    flags = 0x10 if alpha else 0
    w, h = size[0] - 1, size[1] - 1
    return bytes([flags, 0, 0, 0]) + w.to_bytes(3, "little") + h.to_bytes(3, "little")


def webp_with_exif(data: bytes, entries: Mapping[str, str]) -> bytes:
    """The WebP with an EXIF chunk (and the VP8X flag for it); the image chunks are kept as they are."""
    from PIL import Image

    chunks = [(k, d) for k, d in _riff_chunks(data) if k != b"EXIF"]
    if chunks[0][0] != b"VP8X":
        chunks.insert(0, (b"VP8X", _vp8x(chunks, Image.open(io.BytesIO(data)).size)))
    header = bytearray(chunks[0][1])
    header[0] |= 0x08  # EXIF present
    chunks[0] = (b"VP8X", bytes(header))
    chunks.append((b"EXIF", _exif(entries)))
    body = b"".join(k + struct.pack("<I", len(d)) + d + (b"\0" if len(d) & 1 else b"")
                    for k, d in chunks)
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


def sidecar(path: Path) -> Path:
    """Where the provenance of a file that cannot carry it goes: `x.mp4` → `x.mp4.json`."""
    return path.with_name(path.name + ".json")


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:60]}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as sink:
            sink.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def embed(path: Path, provenance: Mapping[str, Any]) -> Path:
    """Write the provenance into the saved file (PNG, WebP) or beside it (a sidecar JSON);
    returns the file that holds it. A file that is not what its name says gets a sidecar."""
    suffix = path.suffix.lower()
    entries = metadata(provenance)
    try:
        if suffix == ".png":
            _replace(path, png_with_text(path.read_bytes(), entries))
            return path
        if suffix == ".webp":
            _replace(path, webp_with_exif(path.read_bytes(), entries))
            return path
    except (ValueError, OSError, IndexError) as exc:
        log.warning("Could not embed the provenance in %s (%s); writing %s", path, exc, sidecar(path).name)
    sidecar(path).write_text(json.dumps(dict(provenance), indent=1, default=str))
    return sidecar(path)


# --- reading ------------------------------------------------------------------------------------


def _webp_entries(image: Any) -> dict[str, str]:
    entries: dict[str, str] = {}
    for tag in range(_EXIF_PROMPT, 0x00FF, -1):
        value = image.getexif().get(tag)
        if isinstance(value, str) and ":" in value:
            key, _, text = value.partition(":")
            entries[key] = text
    return entries


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The provenance entries of a file, decoded: `runcomfy` (ours), `prompt` and `workflow`
    (ComfyUI's), from PNG text chunks, WebP EXIF or a sidecar JSON; {} if it has none."""
    path = Path(path)
    if sidecar(path).is_file():
        return {"runcomfy": json.loads(sidecar(path).read_text())}
    try:
        from PIL import Image

        with Image.open(path) as image:
            raw = _webp_entries(image) if image.format == "WEBP" else dict(getattr(image, "text", {}))
    except OSError:
        return {}
    entries: dict[str, Any] = {}
    for key, text in raw.items():
        try:
            entries[key] = json.loads(text)
        except (TypeError, ValueError):
            entries[key] = text
    return entries


def workflow_from_output(path: str | Path, make: Callable[[dict[str, Any]], W]
                         ) -> tuple[W | dict[str, Any], dict[str, Any]]:
    """What reruns a saved output, and where it ran: `(make(api_workflow), target info)`; for a
    serverless job that sent only overrides, `(overrides, info)` (rerun them on
    `info["target"]`, the deployment id); for a LoRA/Model API job `(inputs, info)`. A file
    ComfyUI saved gives its `prompt` with `{"target": None, "kind": "comfyui"}`. `make` builds
    the workflow (`Workflow`)."""
    found = read_metadata(path)
    mine = found.get("runcomfy")
    ours: dict[str, Any] = mine if isinstance(mine, dict) else {}
    info = {k: ours[k] for k in _TARGET_KEYS if k in ours}
    api = ours.get("workflow") or found.get("prompt")
    if isinstance(api, dict) and api:
        return make(api), info or {"target": None, "kind": "comfyui"}
    if ours.get("overrides") is not None:
        return dict(ours["overrides"]), info
    if ours.get("inputs") is not None:
        return dict(ours["inputs"]), info
    if "workflow" in found:
        raise ValidationError(f"{path} carries only a UI-format workflow (no API `prompt`): load it "
                              "in ComfyUI, or convert it with ui_format.to_api.")
    raise ValidationError(f"{path} carries no workflow: it was not saved by runcomfy_nb or ComfyUI, "
                          "or its metadata was stripped.")
