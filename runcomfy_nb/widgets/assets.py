"""The widgets' front-end files as anywidget gets them: one ES module and one stylesheet each.

anywidget imports a widget's `_esm` text from a blob URL, where `import ... from "./shared.js"`
cannot resolve. So `esm()` inlines each such import of a sibling file (which must itself import
nothing), and `css()` puts the shared stylesheet before the widget's own.
"""

from __future__ import annotations

import re
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent

# `import { a, b } from "./file.js";` on lines of its own (the one form the widget modules use)
_IMPORT = re.compile(r'^import\s*\{(?P<names>[^}]*)\}\s*from\s*"\./(?P<file>[\w.-]+\.js)";?[ \t]*$', re.M)
# an import of a path, which a blob URL cannot resolve: static, side-effect only, re-export or dynamic
_RELATIVE_IMPORT = re.compile(r"""(?:\bimport|\bfrom)\s*\(?\s*["'](?:\.\.?)?/""")
# a top-level declaration (our modules declare top-level names at the start of a line)
_DECLARED = re.compile(r"^(?:export\s+)?(?:async\s+)?(?:function\*?|const|let|var|class)\s+(\w+)", re.M)
_EXPORTED = re.compile(r"^export\s+(?:async\s+)?(?:function\*?|const|let|class)\s+(\w+)", re.M)
SHARED_CSS = "shared.css"


def asset(name: str) -> Path:
    """A front-end file: `runcomfy_nb/static/<name>` in a built wheel, `js/<name>` in a checkout."""
    built = _PACKAGE / "static" / name
    return built if built.is_file() else _PACKAGE.parent / "js" / name


def bundle(path: Path) -> str:
    """The ES module at `path` as one module: each `import { ... } from "./x.js"` line is replaced
    by the text of x.js (exports kept). Raises ValueError for what would not load the same way
    (an unknown name, a clash of top-level names, a relative import left over)."""
    text = path.read_text(encoding="utf-8")
    inlined: list[str] = []

    def inline(match: re.Match[str]) -> str:
        file = match["file"]
        if file in inlined:
            raise ValueError(f"{path.name}: imports ./{file} twice")
        inlined.append(file)
        shared = (path.parent / file).read_text(encoding="utf-8")
        if _RELATIVE_IMPORT.search(shared) or re.search(r"^export\s+default\b", shared, re.M):
            raise ValueError(f"./{file} must import nothing and have no default export")
        names = {name.strip() for name in match["names"].split(",") if name.strip()}
        missing = names - set(_EXPORTED.findall(shared))
        if missing:
            raise ValueError(f"{path.name}: ./{file} does not export {', '.join(sorted(missing))}")
        clash = set(_DECLARED.findall(shared)) & set(_DECLARED.findall(text))
        if clash:
            raise ValueError(f"{path.name} declares {', '.join(sorted(clash))}, as ./{file} does")
        return f"// ./{file}, inlined by runcomfy_nb.widgets.assets\n{shared.rstrip()}\n// end of ./{file}"

    result = _IMPORT.sub(inline, text)
    left = _RELATIVE_IMPORT.search(result)
    if left:
        raise ValueError(f"{path.name}: a relative import anywidget cannot resolve: {left.group(0)!r}")
    return result


def esm(name: str) -> str:
    """A widget's `_esm`: the module `name` with its shared imports inlined."""
    return bundle(asset(name))


def css(name: str) -> str:
    """A widget's `_css`: the shared stylesheet, then the widget's own stylesheet `name`."""
    return "\n".join(asset(file).read_text(encoding="utf-8") for file in (SHARED_CSS, name))
