"""The text progress view outside a widget front end (issue 16, point 4): a script's
`job.result()` on a TTY (a pty) rewrites one live line with \\r and ends with one final line;
without a TTY it writes one line per state change (when asked) or nothing (by default); terminal
IPython's `%%runcomfy run` shows the view live, not one frozen line."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SPEED = 4.0  # slow enough that a job lives for several rewrites of the live line
PRELUDE = textwrap.dedent(f"""
    import runcomfy_nb as rc
    from runcomfy_nb.emulator import Emulator
    emu = Emulator(speed={SPEED}, token="t0k-text")
    emu.start()
""")
SCRIPT = PRELUDE + textwrap.dedent("""
    with rc.RunComfy(token="t0k-text", base_url=emu.url) as client:
        job = client.deployments.submit("dep-flux-kontext", {"31": {"inputs": {"seed": 5}}})
        result = job.result(timeout=120)
    print("RESULT", len(result.media))
    emu.stop()
""")
IPYTHON = PRELUDE + textwrap.dedent("""
    import os
    os.environ.update(RUNCOMFY_TOKEN="t0k-text", RUNCOMFY_BASE_URL=emu.url)
    ip = get_ipython()
    ip.run_line_magic("load_ext", "runcomfy_nb")
    ip.run_cell_magic("runcomfy", "run dep-flux-kontext --out r", "31.seed = 5")
    print("RESULT", len(r.media))
    emu.stop()
""")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCOMFY_PROGRESS")}
    env.update(RUNCOMFY_OUTPUT_DIR=str(tmp_path / "out"), PYTHONUNBUFFERED="1", TERM="xterm", **extra)
    env.pop("RUNCOMFY_TOKEN", None)
    (tmp_path / "out").mkdir(exist_ok=True)  # also the cwd: the package comes from its install
    return env


def _run_on_pty(argv: list[str], env: dict[str, str], *, stream: str) -> tuple[int, str, str]:
    """Run with `stream` ("stdout" or "stderr") on a pty; (exit code, pty text, the other pipe)."""
    master, slave = pty.openpty()
    kwargs = {stream: slave, "stdout" if stream == "stderr" else "stderr": subprocess.PIPE}
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, cwd=env["RUNCOMFY_OUTPUT_DIR"], **kwargs)  # type: ignore[call-overload]
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    other = proc.communicate(timeout=60)[0 if stream == "stderr" else 1]
    return proc.wait(), b"".join(chunks).decode(errors="replace"), other.decode(errors="replace")


def _live_lines(text: str) -> list[str]:
    return [part for part in re.split(r"\r(?:\x1b\[K)?", text.replace("\r\n", "\n")) if part.strip()]


def test_a_script_on_a_tty_shows_a_live_line_then_one_final_line(tmp_path: Path) -> None:
    code, tty, out = _run_on_pty([sys.executable, "-c", SCRIPT], _env(tmp_path), stream="stderr")
    assert code == 0, tty + out
    assert "RESULT" in out
    rewrites = _live_lines(tty)
    assert len(rewrites) >= 3, tty  # rewritten in place, not one frozen line
    assert any("running" in r or "queued" in r for r in rewrites[:-1])
    assert len(set(rewrites)) >= 3, tty  # the line changes: status, elapsed
    finals = [r for r in rewrites if "succeeded in" in r]
    assert len(finals) == 1 and "output" in finals[0] and finals[0] == rewrites[-1], tty
    assert tty.replace("\r\n", "\n").rstrip("\n").count("\n") <= 1  # the live line, then the final one


def test_a_script_without_a_tty_writes_one_line_per_state_change(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=_env(tmp_path, RUNCOMFY_PROGRESS="on"),
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
                              cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "dep-flux-kontext" in line]
    assert "\r" not in proc.stderr
    assert len(lines) >= 2 and len(lines) == len(set(lines)), proc.stderr
    assert lines[-1].split(": ", 1)[1].startswith("succeeded in") and "output" in lines[-1]
    assert sum("succeeded" in line for line in lines) == 1


def test_a_script_without_a_tty_is_quiet_by_default_and_off_means_off(tmp_path: Path) -> None:
    for extra in ({}, {"RUNCOMFY_PROGRESS": "off"}):
        proc = subprocess.run([sys.executable, "-c", SCRIPT], env=_env(tmp_path, **extra),
                              capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
                              cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "dep-flux-kontext" not in proc.stderr and "RESULT" in proc.stdout


def test_a_tty_with_progress_off_is_silent(tmp_path: Path) -> None:
    code, tty, out = _run_on_pty([sys.executable, "-c", SCRIPT], _env(tmp_path, RUNCOMFY_PROGRESS="off"),
                                 stream="stderr")
    assert code == 0 and "RESULT" in out
    assert "dep-flux-kontext" not in tty


@pytest.mark.parametrize("interface", ["ipython"])
def test_terminal_ipython_shows_the_text_view_live(tmp_path: Path, interface: str) -> None:
    script = tmp_path / "cell.ipy"
    script.write_text(IPYTHON)
    argv = [sys.executable, "-m", "IPython", "--no-banner", "--colors=NoColor", "--quick", str(script)]
    code, tty, err = _run_on_pty(argv, _env(tmp_path), stream="stdout")
    assert code == 0, tty + err
    assert "RESULT" in tty
    assert "<JobProgress" not in tty  # not the widget's repr, printed once and frozen
    rewrites = _live_lines(tty)
    progress = [r for r in rewrites if "dep-flux-kontext" in r]
    assert len(progress) >= 3, tty
    assert sum("succeeded in" in r for r in progress) == 1
