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
