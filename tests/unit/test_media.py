"""Outputs: the media of every output shape, and file names that are safe to save under (they keep
their extension and avoid Windows device names)."""

from __future__ import annotations

import pytest

from runcomfy_nb.media import Media, classify, media_from_outputs, safe_filename


def test_media_shapes() -> None:
    outputs = {
        "9": {"images": [{"url": "https://s/o/ComfyUI_00001_.png", "filename": "ComfyUI_00001_.png",
                          "subfolder": "", "type": "output"}]},
        "12": {"gifs": [{"url": "https://s/o/anim.webp", "filename": "anim.webp"}]},
        "38:42": {"text": [["a caption"]]},
    }
    media, text = media_from_outputs(outputs, None)
    assert [(m.kind, m.filename, m.node) for m in media] == [
        ("image", "ComfyUI_00001_.png", "9"), ("video", "anim.webp", "12")]
    assert text == ["a caption"]
    media, _ = media_from_outputs({"images": ["https://s/a.png", "https://s/b.jpg"],
                                   "video": "https://s/c.mp4"}, None)
    assert [m.kind for m in media] == ["image", "image", "video"]
    assert classify("x.webp") == "image" and classify("x.mp4") == "video"
    assert safe_filename("../../etc/passwd") == "passwd"


def test_long_names_keep_their_extension() -> None:
    name = "x" * 300 + ".png"
    short = safe_filename(name)
    assert short.endswith(".png") and len(short) <= 180
    media = Media.from_url(f"https://storage.example/out/{name}")
    assert media.kind == "image" and media.filename == short


@pytest.mark.parametrize(("name", "safe"), [
    ("CON.png", "_CON.png"), ("con", "_con"), ("nul.tar.gz", "_nul.tar.gz"), ("Com1.webp", "_Com1.webp"),
    ("LPT9.mp4", "_LPT9.mp4"), ("aux .png", "_aux .png"), ("CONSOLE.png", "CONSOLE.png"),
    ("com10.png", "com10.png"), ("prn_1.png", "prn_1.png"),
])
def test_windows_device_names_are_renamed(name: str, safe: str) -> None:
    assert safe_filename(name) == safe

