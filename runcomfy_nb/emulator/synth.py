"""Synthetic media: images, a short animation and an MP4 video that depend only on their inputs."""

from __future__ import annotations

import functools
import hashlib
import io
import random
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont

MAX_SIDE, MAX_BATCH = 1024, 4


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _palette(rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    def color() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    return color(), color()


def _background(size: tuple[int, int], rng: random.Random) -> Image.Image:
    low, high = _palette(rng)
    ramp = Image.linear_gradient("L").rotate(rng.choice((0, 90, 180, 270))).resize(size)
    return Image.merge("RGB", [ramp.point(lambda v, a=a, b=b: a + (b - a) * v // 255)
                               for a, b in zip(low, high, strict=False)])


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line][:4]


def image(seed: int, prompt: str, width: int = 512, height: int = 512, index: int = 0) -> bytes:
    """A PNG made only from its arguments: same inputs, same bytes."""
    width, height = max(64, min(int(width), MAX_SIDE)), max(64, min(int(height), MAX_SIDE))
    rng = _rng(seed, prompt, width, height, index)
    picture = _background((width, height), rng)
    draw = ImageDraw.Draw(picture, "RGBA")
    for _ in range(rng.randint(6, 14)):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randint(min(width, height) // 20, min(width, height) // 4)
        fill = (*_palette(rng)[0], rng.randint(90, 200))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            draw.polygon([(x + rng.randint(-r, r), y + rng.randint(-r, r)) for _ in range(3)], fill=fill)
    font = ImageFont.load_default()
    caption = [*_wrap(prompt or "(empty prompt)", max(12, width // 9)), f"seed {seed} · #{index + 1}"]
    box_h = 14 * len(caption) + 12
    draw.rectangle((0, height - box_h, width, height), fill=(0, 0, 0, 150))
    for n, line in enumerate(caption):
        draw.text((8, height - box_h + 6 + 14 * n), line, fill=(255, 255, 255), font=font)
    out = io.BytesIO()
    picture.save(out, "PNG", optimize=False)
    return out.getvalue()


def _frames(seed: int, prompt: str, frames: int, size: int) -> list[Image.Image]:
    """The frames of a ball crossing a gradient, made only from the arguments."""
    rng = _rng("video", seed, prompt)
    background = _background((size, size), rng)
    color = _palette(rng)[1]
    images = []
    for n in range(frames):
        frame = background.copy()
        draw = ImageDraw.Draw(frame)
        x = int((size - 40) * n / max(1, frames - 1)) + 20
        y = size // 2 + int((size // 4) * ((n % 12) - 6) / 6)
        draw.ellipse((x - 18, y - 18, x + 18, y + 18), fill=color, outline=(255, 255, 255))
        draw.text((6, 6), f"seed {seed} frame {n + 1}/{frames}", fill=(255, 255, 255))
        images.append(frame)
    return images


def animation(seed: int, prompt: str, frames: int = 24, size: int = 256, fmt: str = "WEBP") -> bytes:
    """A short animated WebP (or GIF: `fmt="GIF"`) of a ball crossing a gradient, made only from its
    arguments."""
    images = _frames(seed, prompt, frames, size)
    out = io.BytesIO()
    if fmt.upper() == "GIF":
        images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=80, loop=0)
    else:
        images[0].save(out, "WEBP", save_all=True, append_images=images[1:], duration=80, loop=0,
                       quality=70, method=0)
    return out.getvalue()


def can_make_mp4() -> bool:
    """Whether PyAV (the `emulator` extra's `av`) with an H.264 encoder is installed."""
    try:
        import av
    except ImportError:
        return False
    return "libx264" in av.codecs_available


def video(seed: int, prompt: str, frames: int = 24, size: int = 256, fps: int = 12) -> bytes:
    """A short H.264 MP4 (yuv420p, constrained baseline, `moov` before `mdat`, no audio) of the
    same ball as `animation`, a few KB, that browsers play. Same inputs, same bytes: one encoder
    thread, and the muxer writes no creation time. Needs PyAV (`pip install runcomfy_nb[emulator]`)."""
    import tempfile

    import av

    size = max(16, size - size % 2)  # yuv420p needs even sides
    images = _frames(seed, prompt, frames, size)
    with tempfile.TemporaryDirectory(prefix="rcnb-mp4-") as folder:
        # +faststart moves `moov` to the front (players start before the whole file arrived);
        # the muxer does that by rewriting the file, so it needs a real path, not a BytesIO
        path = f"{folder}/video.mp4"
        with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=fps, options={
                "crf": "28", "preset": "medium", "profile": "baseline", "threads": "1"})
            stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
            for picture in images:
                container.mux(stream.encode(av.VideoFrame.from_image(picture)))
            container.mux(stream.encode())
        with open(path, "rb") as made:
            return made.read()


@functools.lru_cache(maxsize=8)
def _preview_base(seed: int, prompt: str, width: int, height: int, index: int, side: int) -> Image.Image:
    picture = Image.open(io.BytesIO(image(seed, prompt, width, height, index))).convert("RGB")
    picture.thumbnail((side, side))
    return picture


def preview(seed: int, prompt: str, width: int, height: int, step: int, steps: int, index: int = 0,
            side: int = 256) -> bytes:
    """A JPEG sampler preview of `image(seed, prompt, ...)`: heavily blurred at the first step, sharp
    at the last (the blur radius falls linearly as `step` approaches `steps`)."""
    base = _preview_base(seed, prompt, width, height, index, side)
    radius = 12.0 * (1 - max(0, min(step, steps)) / max(1, steps))
    frame = base.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else base
    out = io.BytesIO()
    frame.save(out, "JPEG", quality=80)
    return out.getvalue()


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool):
        return default
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return default


def workflow_params(workflow: dict[str, Any]) -> dict[str, Any]:
    """What the synthetic outputs of an API-format workflow are made from: `seed` (a KSampler-like
    `seed`/`noise_seed`), `prompt` (the `text` of the sampler's positive CLIPTextEncode, else the
    first one), `width`/`height`/`batch` (an EmptyLatentImage-like node; capped at 1024 and 4) and
    `save_node` (the last Save*/VHS_VideoCombine node). Never raises: odd values fall back."""
    params: dict[str, Any] = {"seed": 0, "prompt": "", "width": 512, "height": 512, "batch": 1,
                              "save_node": "9"}
    prompts: dict[str, str] = {}
    positive = None
    seeded = False
    for node_id, node in (workflow.items() if isinstance(workflow, dict) else ()):
        if not isinstance(node, dict):
            continue
        inputs, kind = node.get("inputs"), str(node.get("class_type", ""))
        inputs = inputs if isinstance(inputs, dict) else {}
        seed = inputs.get("seed", inputs.get("noise_seed"))
        if isinstance(seed, int) and not isinstance(seed, bool) and ("Sampler" in kind or not seeded):
            params["seed"], seeded = seed, seeded or "Sampler" in kind
        if "KSampler" in kind and isinstance(inputs.get("positive"), list) and inputs["positive"]:
            positive = str(inputs["positive"][0])
        if kind.startswith("CLIPTextEncode") and isinstance(inputs.get("text"), str):
            prompts[str(node_id)] = inputs["text"]
        elif kind.startswith("EmptyLatentImage") or kind == "EmptySD3LatentImage":
            params["width"] = max(64, min(_int(inputs.get("width"), 512), MAX_SIDE))
            params["height"] = max(64, min(_int(inputs.get("height"), 512), MAX_SIDE))
            params["batch"] = max(1, min(_int(inputs.get("batch_size"), 1), MAX_BATCH))
        elif kind.startswith("Save") or kind.startswith("VHS_VideoCombine"):
            params["save_node"] = str(node_id)
    params["prompt"] = prompts.get(positive or "", next(iter(prompts.values()), ""))
    return params


MP4_FORMATS = ("video/h264-mp4", "video/nvenc_h264-mp4")  # VHS_VideoCombine's H.264 MP4 choices


def video_file(seed: int, prompt: str, fmt: str) -> tuple[str, bytes]:
    """What a VHS_VideoCombine node with `format` = `fmt` writes: (extension, bytes). An H.264 MP4
    for the `video/*-mp4` formats (an animated WebP instead when PyAV is missing, so the emulator
    still runs without it), a GIF for `image/gif`, else an animated WebP."""
    if fmt in MP4_FORMATS and can_make_mp4():
        return "mp4", video(seed, prompt)
    if fmt == "image/gif":
        return "gif", animation(seed, prompt, fmt="GIF")
    return "webp", animation(seed, prompt)


def save_node_format(workflow: dict[str, Any], node_id: str) -> str:
    """The `format` input of the workflow's node `node_id` (a VHS_VideoCombine), or ''."""
    node = workflow.get(node_id) if isinstance(workflow, dict) else None
    inputs = node.get("inputs") if isinstance(node, dict) else None
    fmt = inputs.get("format") if isinstance(inputs, dict) else None
    return fmt if isinstance(fmt, str) else ""
