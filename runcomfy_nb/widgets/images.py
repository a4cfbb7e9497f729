"""Images for the browser: stills downscaled (JPEG, PNG with alpha, WebP), animations kept moving
at a smaller size, and data URLs."""

from __future__ import annotations

import base64
import io
import math
from typing import Any


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


_KEEP_AS_IS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


def downscale(data: bytes, max_px: int, *, keep_small: int = 48_000, quality: int = 82) -> tuple[bytes, str]:
    """A still image no larger than `max_px` on its long side: JPEG, or PNG when it has alpha
    (WebP if that PNG would be big). A small file the browser can show is kept as it is."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as opened:
        if (opened.format in _KEEP_AS_IS and max(opened.size) <= max_px and len(data) <= keep_small
                and getattr(opened, "n_frames", 1) == 1):
            return data, _KEEP_AS_IS[opened.format]
        image = ImageOps.exif_transpose(opened)
        alpha = image.mode in ("RGBA", "LA", "PA") or (
            image.mode == "P" and "transparency" in image.info)
        image = image.convert("RGBA" if alpha else "RGB")
    if alpha:  # an alpha channel that is opaque everywhere (common in generated PNGs) is no alpha
        lowest = image.getchannel("A").getextrema()[0]  # one band: (min, max)
        alpha = isinstance(lowest, (int, float)) and lowest < 255
    image = image.convert("RGBA" if alpha else "RGB")
    image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if not alpha:
        image.save(out, "JPEG", quality=quality, optimize=True)
        return out.getvalue(), "image/jpeg"
    image.save(out, "PNG", optimize=True)
    if out.tell() <= 2 * keep_small:
        return out.getvalue(), "image/png"
    out = io.BytesIO()
    image.save(out, "WEBP", quality=quality)
    return out.getvalue(), "image/webp"


def frame_count(data: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return getattr(image, "n_frames", 1)


def downscale_animation(data: bytes, max_px: int, *, max_frames: int = 60, quality: int = 60) -> bytes:
    """An animated WebP no larger than `max_px`, keeping the motion: every frame up to
    `max_frames`, beyond that every n-th frame with the skipped frames' time added to it."""
    from PIL import Image, ImageSequence

    frames: list[Any] = []
    durations: list[int] = []
    with Image.open(io.BytesIO(data)) as image:
        count = getattr(image, "n_frames", 1)
        step = max(1, math.ceil(count / max_frames))
        for index, frame in enumerate(ImageSequence.Iterator(image)):
            duration = int(frame.info.get("duration") or image.info.get("duration") or 100)
            if index % step:
                durations[-1] += duration
                continue
            small = frame.convert("RGBA")
            small.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
            frames.append(small)
            durations.append(duration)
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], duration=durations, loop=0,
                   quality=quality)
    return out.getvalue()


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """The ISO-BMFF boxes in data[start:end]: (type, payload start, box end)."""
    found = []
    while start + 8 <= end:
        size, kind = int.from_bytes(data[start:start + 4], "big"), data[start + 4:start + 8]
        header = 8
        if size == 1 and start + 16 <= end:  # a 64-bit size follows the type
            size, header = int.from_bytes(data[start + 8:start + 16], "big"), 16
        elif size == 0:  # to the end of the file
            size = end - start
        if size < header or start + size > end:
            break
        found.append((kind, start + header, start + size))
        start += size
    return found


def mp4_size(data: bytes) -> tuple[int, int]:
    """Width and height of an MP4/MOV's first visual track (its `tkhd`), or (0, 0)."""
    for kind, begin, end in _boxes(data, 0, len(data)):
        if kind != b"moov":
            continue
        for trak, t_begin, t_end in _boxes(data, begin, end):
            if trak != b"trak":
                continue
            for box, b_begin, b_end in _boxes(data, t_begin, t_end):
                # width and height are 16.16 fixed point at the end of tkhd (76 bytes in, 88 in v1)
                at = b_begin + (88 if data[b_begin:b_begin + 1] == b"\x01" else 76)
                if box == b"tkhd" and at + 8 <= b_end:
                    width = int.from_bytes(data[at:at + 4], "big") >> 16
                    height = int.from_bytes(data[at + 4:at + 8], "big") >> 16
                    if width and height:
                        return width, height
    return 0, 0


def dimensions(data: bytes) -> tuple[int, int]:
    """Width and height of an image, an animation or an MP4/MOV video; (0, 0) when unknown."""
    if data[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):
        return mp4_size(data)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # not a picture Pillow reads (audio, text, a format it lacks): no size
        return 0, 0


def human_size(count: int) -> str:
    """A byte count as people read it: 812 B, 6.1 KB, 3.4 MB, 1.2 GB."""
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"
