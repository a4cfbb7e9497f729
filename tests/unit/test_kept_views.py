"""`Snapshots`: a displayed widget is live until its state is final, then its output is the static
view alone (no widget view, inline images ≤ 30 KB); a final state that changes again brings the
live widget back."""

from __future__ import annotations

import base64
import io
import os
import weakref
from types import SimpleNamespace
from typing import Any

import anywidget
import pytest
import traitlets as t
from PIL import Image

from runcomfy_nb.media import Media
from runcomfy_nb.widgets import Gallery
from runcomfy_nb.widgets.fallback import KEPT_IMAGE_BYTES, WIDGET_VIEW, Snapshots, fit_images
from runcomfy_nb.widgets.images import data_url

from .test_widgets import fake_kernel_display

__all__ = ["fake_kernel_display"]  # a fixture, used by name


class Panel(Snapshots, anywidget.AnyWidget):
    """A widget shaped like `MachinePanel`: final once every row is stopping or stopped."""

    _esm = "export default { render() {} }"
    rows = t.List(t.Dict()).tag(sync=True)

    def _html(self) -> str:
        return "<div>" + "".join(f"<p>{row['state']}</p>" for row in self.rows) + "</div>"


def test_a_live_widget_becomes_static_when_final_and_live_again_when_not(
    fake_kernel_display: tuple[list[Any], list[Any]],
) -> None:
    shown, updated = fake_kernel_display
    panel = Panel(rows=[{"state": "ready"}])
    panel._ipython_display_()
    assert WIDGET_VIEW in shown[0][0], "a running machine's panel is the live widget"
    panel._apply_changes({"rows": [{"state": "stopping"}]}, settled=True)  # the stop was confirmed
    data, kw = updated[-1]
    assert WIDGET_VIEW not in data and "<p>stopping</p>" in data["text/html"]
    assert kw["display_id"] == shown[0][1]["display_id"]
    panel._apply_changes({"rows": [{"state": "stopped"}, {"state": "starting"}]}, settled=True)
    assert WIDGET_VIEW in updated[-1][0], "a new machine brings the live widget (and its buttons) back"


def test_a_gallery_displayed_with_its_final_state_is_static_at_once(
    fake_kernel_display: tuple[list[Any], list[Any]],
) -> None:
    shown, _ = fake_kernel_display
    gallery = Gallery([Media(url="", filename="a.png", kind="image")], text=["hello"])
    assert not gallery.loading  # nothing to fetch (no client): final
    gallery._ipython_display_()
    (data, kw), = shown
    assert WIDGET_VIEW not in data and kw["display_id"]
    assert "a.png" in data["text/html"] and "hello" in data["text/html"]
    # what the widget itself answers is unchanged: the widget plus its fallbacks
    assert WIDGET_VIEW in gallery._repr_mimebundle_()[0]


def noise(px: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (px, px), os.urandom(px * px * 3)).save(out, "PNG")
    return out.getvalue()


def test_fit_images_shrinks_only_images_over_the_limit() -> None:
    small = data_url(noise(8), "image/png")
    big = data_url(noise(500), "image/png")
    markup = f'<img src="{small}" alt="s"><img alt="b" src="{big}"><a href="{big}">file</a>'
    out = fit_images(markup)
    assert small in out, "a small image is kept as it is"
    assert out.count(big) == 1 and f'href="{big}"' in out, "only images are shrunk, not links"
    shrunk = out.split('alt="b" src="data:image/jpeg;base64,', 1)[1].split('"', 1)[0]
    assert 0 < len(shrunk) <= KEPT_IMAGE_BYTES
    with Image.open(io.BytesIO(base64.b64decode(shrunk))) as image:
        assert max(image.size) < 500


def test_fit_images_keeps_an_animation_moving() -> None:
    frames = [Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3)) for _ in range(4)]
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], duration=100, quality=90)
    assert len(base64.b64encode(out.getvalue())) > KEPT_IMAGE_BYTES
    fitted = fit_images(f'<img src="{data_url(out.getvalue(), "image/webp")}">')
    payload = fitted.split("base64,", 1)[1].split('"', 1)[0]
    assert len(payload) <= KEPT_IMAGE_BYTES
    with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
        assert getattr(image, "n_frames", 1) > 1


class Shell(t.HasTraits):
    """IPython's shell as far as a kernel's exit goes: `exit_now` set by `exit` or `do_shutdown`."""

    exit_now = t.Bool(False)
    kernel = object()


def test_a_kernel_that_ends_keeps_its_unfinished_widgets_as_static_views(
    fake_kernel_display: tuple[list[Any], list[Any]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    from runcomfy_nb.widgets import fallback

    shell = Shell()
    monkeypatch.setattr(InteractiveShell, "instance", classmethod(lambda cls, *a, **k: shell))
    monkeypatch.setattr(fallback, "_EXITING", False)
    monkeypatch.setattr(fallback, "_WATCHED", [])
    monkeypatch.setattr(fallback, "_SHOWN", weakref.WeakSet())
    shown, updated = fake_kernel_display
    running, stopped = Panel(rows=[{"state": "ready"}]), Panel(rows=[{"state": "stopped"}])
    running._ipython_display_()
    stopped._ipython_display_()
    assert WIDGET_VIEW in shown[0][0] and not updated
    shell.exit_now = True
    (data, kw), = updated  # the final one is static already: only the running one is re-sent
    assert kw["display_id"] == shown[0][1]["display_id"] and WIDGET_VIEW not in data
    assert "<p>ready</p>" in data["text/html"] and "The kernel ended" in data["text/html"]
    assert "The kernel ended" in data["text/plain"]
    running._apply_changes({"rows": [{"state": "starting"}]}, settled=True)
    assert len(updated) == 1, "a late refresh of the ending kernel must not bring the widget view back"


def test_a_job_left_behind_says_how_to_follow_it_again() -> None:
    from runcomfy_nb.widgets import JobProgress

    note = JobProgress._left_behind(SimpleNamespace(status="running", job_id="84cfb70b-1234"))  # type: ignore[arg-type]
    assert "while this job was running" in note and "%runcomfy attach 84cfb70b " in note
