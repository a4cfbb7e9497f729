"""The package: `import runcomfy_nb` stays lazy, and every public name resolves."""

from __future__ import annotations

import runcomfy_nb as rc


def test_lazy_import_keeps_heavy_modules_out() -> None:
    import subprocess
    import sys

    code = ("import sys, runcomfy_nb; heavy = {'httpx', 'PIL', 'aiohttp', 'ipywidgets', 'anywidget'}"
            " & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_all_resolves() -> None:
    for name in rc.__all__:
        assert getattr(rc, name) is not None, name
