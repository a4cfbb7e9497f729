"""The core knows nothing of display: jobs, clients and media import no widget, no facade and no
IPython; a JobResult shows as a Gallery through the IPython formatter the display layer registers."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import runcomfy_nb

PACKAGE = Path(runcomfy_nb.__file__).resolve().parent
CORE = ["jobs.py", "events.py", "status.py", "contact.py", "media.py", "client.py", "clients"]
DISPLAY = ("runcomfy_nb.widgets", "runcomfy_nb.sync", "runcomfy_nb.facade", "runcomfy_nb.magics",
           "IPython", "anywidget", "ipywidgets", "traitlets")


def imported_names(path: Path) -> set[str]:
    """Every module `path` imports (also inside functions), relative imports resolved."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_core_imports_no_display_code() -> None:
    files = [p for name in CORE for p in ([PACKAGE / name] if name.endswith(".py") else
                                            sorted((PACKAGE / name).rglob("*.py"))) if p.exists()]
    assert len(files) > 5
    found = {f"{path.relative_to(PACKAGE)} imports {name}" for path in files for name in imported_names(path)
             if any(name == d or name.startswith(d + ".") for d in DISPLAY)}
    assert not found


def test_the_widgets_import_no_facade_and_hand_work_to_loops_only_through_the_bridge() -> None:
    widgets = sorted((PACKAGE / "widgets").glob("*.py"))
    found = {f"{path.name} imports {name}" for path in widgets for name in imported_names(path)
             if name.split(".")[:2] in (["runcomfy_nb", "sync"], ["runcomfy_nb", "facade"])}
    assert not found
    handoffs = ("run_coroutine_threadsafe", "call_soon_threadsafe", "ensure_future")
    assert not [f"{path.name}: {word}" for path in widgets for word in handoffs if word in path.read_text()]


def test_the_bridge_sees_through_blocking_views() -> None:
    from runcomfy_nb import loops
    from runcomfy_nb.sync import Blocking

    target = object()
    assert loops.behind(Blocking(target)) is target and loops.behind(target) is target
    assert loops.home(Blocking(target)) is loops.background()


def run(script: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_job_result_shows_as_a_gallery_in_ipython_and_through_the_blocking_facade() -> None:
    out = run("""
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        import sys
        import runcomfy_nb as rc
        from runcomfy_nb.sync import Blocking
        assert "runcomfy_nb.widgets" not in sys.modules  # registering imported nothing
        result = rc.JobResult("job-1", media=[rc.Media(url="", filename="a.png", kind="image")],
                              text=["hello"])
        for shown in (result, Blocking(result)):
            data, meta = shell.display_formatter.format(shown)
            assert data["text/plain"].startswith("<Gallery: 1 file, 1 text"), data["text/plain"]
            assert 'class="runcomfy-gallery"' in data["text/html"] and "hello" in data["text/html"]
            assert "application/vnd.jupyter.widget-view+json" not in data  # final: static
        print("ok")
    """)
    assert out.strip() == "ok"


def test_the_formatter_is_registered_by_load_ext_when_the_shell_came_later() -> None:
    out = run("""
        import runcomfy_nb as rc
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        result = rc.JobResult("job-1", text=["later"])
        assert shell.display_formatter.format(result)[0]["text/plain"] == repr(result)
        rc.load_ipython_extension(shell)
        assert shell.display_formatter.format(result)[0]["text/plain"].startswith("<Gallery")
        print("ok")
    """)
    assert out.strip() == "ok"


def test_without_a_shell_a_blocking_view_shows_its_objects_repr() -> None:
    out = run("""
        import runcomfy_nb as rc
        from runcomfy_nb.sync import Blocking
        result = rc.JobResult("job-1", text=["x"])
        print(Blocking(result)._repr_mimebundle_() == {"text/plain": repr(result)})
    """)
    assert out.strip() == "True"
