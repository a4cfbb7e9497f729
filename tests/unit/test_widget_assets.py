"""The text anywidget gets of each widget: one module, with the shared helpers inlined."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runcomfy_nb.widgets import Gallery, JobProgress, MachinePanel
from runcomfy_nb.widgets.assets import asset, bundle

# what a browser would try to resolve against the module's URL (a blob URL in anywidget)
RELATIVE = re.compile(r"""(?:\bimport\b|\bfrom\b)\s*\(?\s*["'](?:\.|/)""")

SHARED = """\
export function element(tag) {
  return document.createElement(tag);
}

export const money = (value) => `$${value}`;
"""


@pytest.mark.parametrize("widget", [JobProgress, Gallery, MachinePanel])
def test_the_esm_anywidget_gets_has_no_relative_import(widget: type) -> None:
    text = str(widget._esm)  # as anywidget's __init__ makes the trait
    assert "\n" in text  # a text, not a path anywidget would read
    assert not RELATIVE.search(text), RELATIVE.search(text)
    assert text.count("export function element(") == 1  # shared.js, inlined once
    assert "export default" in text


@pytest.mark.parametrize(("widget", "own"), [
    (JobProgress, "progress.css"), (Gallery, "gallery.css"), (MachinePanel, "machines.css")])
def test_the_css_anywidget_gets_is_the_shared_stylesheet_then_its_own(widget: type, own: str) -> None:
    text = str(widget._css)
    assert "\n" in text and "@import" not in text
    assert text == f"{asset('shared.css').read_text()}\n{asset(own).read_text()}"


def write(folder: Path, shared: str, widget: str) -> Path:
    (folder / "shared.js").write_text(shared, encoding="utf-8")
    (folder / "widget.js").write_text(widget, encoding="utf-8")
    return folder / "widget.js"


def test_an_import_of_a_sibling_is_replaced_by_its_text(tmp_path: Path) -> None:
    path = write(tmp_path, SHARED, (
        '// a widget\nimport {\n  element,\n  money,\n} from "./shared.js";\n\n'
        'function render() {\n  element("div");\n}\n\nexport default { render };\n'))
    text = bundle(path)
    assert not RELATIVE.search(text)
    assert text.startswith("// a widget\n// ./shared.js, inlined")
    assert SHARED.rstrip() in text and text.endswith("export default { render };\n")


@pytest.mark.parametrize(("widget", "message"), [
    ('import { nope } from "./shared.js";\n', "does not export nope"),
    ('import { element } from "./shared.js";\nfunction money() {}\n', "declares money"),
    ('import { element } from "./shared.js";\nimport { money } from "./shared.js";\n', "twice"),
    ('import money from "./shared.js";\n', "relative import"),
    ('import "../elsewhere.js";\n', "relative import"),
    ('const m = await import("./shared.js");\n', "relative import"),
    ('export { money } from "/js/shared.js";\n', "relative import"),
])
def test_what_would_not_load_the_same_way_is_refused(tmp_path: Path, widget: str, message: str) -> None:
    path = write(tmp_path, SHARED, widget)
    with pytest.raises(ValueError, match=message):
        bundle(path)


def test_the_inlined_file_must_import_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, 'import { x } from "./other.js";\n' + SHARED,
                 'import { element } from "./shared.js";\n')
    with pytest.raises(ValueError, match="must import nothing"):
        bundle(path)
