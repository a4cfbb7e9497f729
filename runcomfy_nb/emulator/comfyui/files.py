"""ComfyUI's file routes' work: uploads (images, masks) and /view (previews, channels)."""

from __future__ import annotations

import io
import json
import mimetypes
import posixpath
from typing import Any

from aiohttp import web

from ..storage import send_file
from .nodes import FOLDER_TYPES, MAX_UPLOAD
from .server import Server, annotated, server_error


async def upload(request: web.Request, backend: Server, *, mask: bool) -> web.StreamResponse:
    post = await request.post()
    image = post.get("image")
    if not isinstance(image, web.FileField):
        return web.Response(status=400)
    kind = str(post.get("type") or "input")
    if kind not in FOLDER_TYPES:
        return server_error()  # ComfyUI's get_dir_by_type leaves the directory unbound
    filename = image.filename
    if not filename:
        return web.Response(status=400)
    subfolder = str(post.get("subfolder", ""))
    base = f"/comfy/{kind}"
    folder = posixpath.join(base, posixpath.normpath(subfolder))
    path = posixpath.normpath(posixpath.join(folder, filename))
    if posixpath.commonpath((base, path)) != base:
        return web.Response(status=400)
    data = image.file.read()
    if len(data) > MAX_UPLOAD:
        return web.Response(status=413)
    overwrite = post.get("overwrite")
    stem, ext = posixpath.splitext(filename)
    duplicate = False
    if overwrite not in ("true", "1"):
        n = 1
        while (kind, posixpath.relpath(path, base)) in backend.files:
            if backend.files[(kind, posixpath.relpath(path, base))] == data:
                duplicate = True
                break
            filename = f"{stem} ({n}){ext}"
            path = posixpath.normpath(posixpath.join(folder, filename))
            n += 1
    if not duplicate:
        key = (kind, posixpath.relpath(path, base))
        if mask:
            merged = _apply_mask(backend, str(post.get("original_ref", "{}")), data)
            if merged is not None:
                backend.files[key] = merged
        else:
            backend.files[key] = data
    return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})


def _apply_mask(backend: Server, original_ref: str, mask: bytes) -> bytes | None:
    """The original image with the mask's alpha; None when the original is missing (nothing saved)."""
    try:
        ref = json.loads(original_ref)
        name, kind = annotated(ref["filename"])
        if not name or name[0] == "/" or ".." in name:
            return None
        kind = kind or ref.get("type", "output")
        subfolder = ref.get("subfolder", "")
        if ".." in posixpath.normpath(subfolder).split("/"):
            return None
        original = backend.files.get((kind, posixpath.normpath(posixpath.join(subfolder, name))))
        return None if original is None else mask_onto(original, mask)
    except Exception:
        return None


def mask_onto(original: bytes, mask: bytes) -> bytes:
    """The original image (PNG) with the mask's alpha channel."""
    from PIL import Image

    picture = Image.open(io.BytesIO(original)).convert("RGBA")
    alpha = Image.open(io.BytesIO(mask)).convert("RGBA").getchannel("A").resize(picture.size)
    picture.putalpha(alpha)
    out = io.BytesIO()
    picture.save(out, "PNG", compress_level=4)
    return out.getvalue()


def _viewed(query: Any) -> tuple[str, str, str] | web.Response:
    """The (folder kind, path in it, filename) GET /view names, or its refusal (400, 403, 404)."""
    if "filename" not in query:
        return web.Response(status=404)
    filename, kind = annotated(query["filename"])
    if not filename:
        return web.Response(status=400)
    if filename[0] == "/" or ".." in filename:
        return web.Response(status=400)
    kind = kind or query.get("type", "output")
    if kind not in FOLDER_TYPES:
        return web.Response(status=400)
    base = f"/comfy/{kind}"
    folder = base
    if "subfolder" in query:
        folder = posixpath.normpath(posixpath.join(base, query["subfolder"]))
        if posixpath.commonpath((folder, base)) != base:
            return web.Response(status=403)
    filename = posixpath.basename(filename)
    return kind, posixpath.relpath(posixpath.join(folder, filename), base), filename


async def view(request: web.Request, backend: Server, faults: Any) -> web.StreamResponse:
    """GET /view: a file of the backend's folders, converted on request, whole or the byte range
    asked (see `storage.send_file`, which also applies `truncate` and `no_range`)."""
    query = request.query
    named = _viewed(query)
    if isinstance(named, web.Response):
        return named
    kind, path, filename = named
    data = backend.files.get((kind, path))
    if data is None:
        return web.Response(status=404)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if "preview" in query or query.get("channel", "rgba") != "rgba":
        converted = convert(data, query.get("preview", ""), query.get("channel", "rgba"))
        if converted is not None:
            data, content_type = converted
    if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript",
                        "text/css"}:
        content_type = "application/octet-stream"
    headers = {"Content-Disposition": f'filename="{filename}"', "Content-Type": content_type}
    return await send_file(request, data, headers, faults, backend.server_id)


def convert(data: bytes, preview: str, channel: str) -> tuple[bytes, str] | None:
    from PIL import Image

    try:
        picture = Image.open(io.BytesIO(data))
    except Exception:
        return None
    out = io.BytesIO()
    if preview:
        fmt, _, quality = preview.partition(";")
        fmt = fmt if fmt in ("webp", "jpeg") else "webp"
        picture.convert("RGB").save(out, fmt.upper(), quality=int(quality) if quality.isdigit() else 90)
        return out.getvalue(), f"image/{fmt}"
    if channel == "rgb":
        picture.convert("RGB").save(out, "PNG")
    elif channel == "a":
        alpha = picture.convert("RGBA").getchannel("A")
        Image.merge("RGBA", (alpha, alpha, alpha, alpha)).save(out, "PNG")
    else:
        return None
    return out.getvalue(), "image/png"
