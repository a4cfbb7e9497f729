"""`%runcomfy emulate --keep`: the emulator in a process of its own session, found again by a later
process through its state file (beside the journal, 0600), stopped by `--stop` only once its process
has ended, and replaced when it had died. No test leaves an emulator process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from IPython.core.interactiveshell import InteractiveShell

from runcomfy_nb.config import SETTINGS
from runcomfy_nb.emulator import process
from runcomfy_nb.magics.session import SESSION

from ..helpers import wait_for

EMU_TOKEN = "rc_keep_emulator_SENTINEL_7c1d"
USER_TOKEN = "rc_keep_user_SENTINEL_2b8e"
PID = re.compile(r"\(pid (\d+)\)")

# A second process: a fresh shell (as a restarted kernel is) running one `%runcomfy` line.
SECOND = textwrap.dedent("""
    import sys
    from IPython.core.interactiveshell import InteractiveShell
    from runcomfy_nb.magics.session import SESSION
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "runcomfy_nb")
    shell.run_line_magic("runcomfy", sys.argv[1])
    print("BASE", SESSION.config.base_url)
""")


@pytest.fixture
def ip(monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """A shell whose kept emulators are all ended afterwards, whatever the test did."""
    monkeypatch.setenv("RUNCOMFY_EMULATOR_TOKEN", EMU_TOKEN)
    saved = dict(SETTINGS)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "runcomfy_nb")
    yield shell
    if SESSION.emulator is not None:
        shell.run_line_magic("runcomfy", "emulate --stop")
    left = process.read_state()  # one a second process started
    for pid in {*process._CHILDREN, *([left.pid] if left else [])}:
        assert process.stop_pid(pid)
    SETTINGS.clear()
    SETTINGS.update(saved)


def second(line: str) -> str:
    """Run `%runcomfy LINE` in a new Python process; everything it printed."""
    done = subprocess.run([sys.executable, "-c", SECOND, line], capture_output=True, text=True,
                          timeout=60, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def pid_in(text: str) -> int:
    found = PID.search(text)
    assert found, text
    return int(found.group(1))


def test_kept_emulator_is_found_from_another_process_and_stopped(
        ip: InteractiveShell, capsys: pytest.CaptureFixture[str], journal: Path) -> None:
    ip.run_line_magic("runcomfy", "emulate --keep --speed 20")
    said = capsys.readouterr().out
    assert "EMULATOR ON (kept)" in said and "started it in a process of its own" in said, said
    assert EMU_TOKEN not in said
    pid = pid_in(said)
    state = journal.with_name("emulator.json")  # beside the journal: a test's own
    assert process.state_path() == state and (state.stat().st_mode & 0o777) == 0o600
    kept = process.read_state()
    assert kept is not None and kept.pid == pid and kept.token == EMU_TOKEN
    assert SESSION.config.base_url == kept.url and SESSION.config.token.get() == EMU_TOKEN  # type: ignore[union-attr]
    assert EMU_TOKEN not in " ".join(Path(f"/proc/{pid}/cmdline").read_text().split("\0"))

    again = second("emulate --keep --speed 20")
    assert f"found it still running from before (pid {pid})" in again and f"BASE {kept.url}" in again
    assert "asked" not in again and EMU_TOKEN not in again
    slower = second("emulate --keep --speed 5")
    assert "it runs at speed ×20, not the ×5 asked" in slower and f"BASE {kept.url}" in slower

    ip.run_line_magic("runcomfy", "emulate --stop")
    said = capsys.readouterr().out
    assert said.startswith(f"Kept emulator stopped (pid {pid}: its process has ended)"), said
    assert not process.process_alive(pid) and not state.exists()
    assert SESSION.emulator is None and SESSION.config.base_url != kept.url
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{kept.url}/_emulator/log")


def test_a_random_token_and_the_users_own_stay_out_of_output_and_the_process(
        ip: InteractiveShell, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNCOMFY_EMULATOR_TOKEN")
    monkeypatch.setenv("RUNCOMFY_TOKEN", USER_TOKEN)
    ip.run_line_magic("runcomfy", "emulate --keep --speed 20")
    said = capsys.readouterr().out
    kept = process.read_state()
    assert kept is not None and kept.token.startswith("emu-") and kept.token != EMU_TOKEN
    assert kept.token not in said and kept.comfy_api_key not in said and USER_TOKEN not in said
    assert USER_TOKEN not in Path(f"/proc/{kept.pid}/environ").read_bytes().decode(errors="replace")
    assert SESSION.config.token.get() == kept.token  # type: ignore[union-attr]
    ip.run_line_magic("runcomfy", "emulate --stop")
    assert os.environ["RUNCOMFY_TOKEN"] == USER_TOKEN  # given back


def test_a_kept_emulator_outlives_its_starters_process_group(
        ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    # a kernel restart kills the kernel's whole process group (jupyter_client's killpg): a kept
    # emulator started from it must not be in that group
    starter = subprocess.Popen([sys.executable, "-c", SECOND + "import time; time.sleep(600)\n",
                                "emulate --keep --speed 20"], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        wait_for(lambda: process.find()[0], timeout=60, what="the kept emulator's state file")
        os.killpg(starter.pid, signal.SIGKILL)
        assert starter.wait(10) == -signal.SIGKILL
    finally:
        starter.kill()
        if starter.stdout:
            starter.stdout.close()
    kept, ended = process.find()
    assert kept is not None and ended is None and process.answers(kept)
    ip.run_line_magic("runcomfy", "emulate --keep")
    assert f"found it still running from before (pid {kept.pid})" in capsys.readouterr().out


def test_a_dead_kept_emulator_is_replaced(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("runcomfy", "emulate --keep --speed 20")
    first = pid_in(capsys.readouterr().out)
    os.kill(first, signal.SIGKILL)  # no clean exit: its state file stays behind
    wait_for(lambda: not process.process_alive(first), what="the killed emulator to end")
    assert process.read_state() is not None and process.read_state().pid == first  # type: ignore[union-attr]

    ip.run_line_magic("runcomfy", "emulate --keep --speed 20")
    said = capsys.readouterr().out
    assert f"the kept emulator before it (pid {first}) had ended" in said, said
    kept = process.read_state()
    assert kept is not None and kept.pid == pid_in(said) != first and process.answers(kept)
    assert SESSION.config.base_url == kept.url


def test_stop_in_a_kernel_that_does_not_use_it_says_how(
        ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    assert "started it" in second("emulate --keep --speed 20")
    kept = process.read_state()
    assert kept is not None and SESSION.emulator is None
    ip.run_line_magic("runcomfy", "emulate --stop")
    assert "`%runcomfy emulate --keep --stop` stops it" in capsys.readouterr().out
    assert process.answers(kept)
    ip.run_line_magic("runcomfy", "emulate --keep --stop")
    assert f"The kept emulator (pid {kept.pid}) stopped" in capsys.readouterr().out
    assert not process.process_alive(kept.pid) and process.read_state() is None
    ip.run_line_magic("runcomfy", "emulate --stop")
    assert capsys.readouterr().out.strip() == "The emulator is not running."


def test_the_command_line_with_state_prints_no_secret_and_cleans_up(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    child = subprocess.Popen([sys.executable, "-m", "runcomfy_nb.emulator", "--state", str(state)],
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "RUNCOMFY_EMULATOR_TOKEN": EMU_TOKEN})
    try:
        kept = wait_for(lambda: process.read_state(state), what="the state file")
        assert kept.pid == child.pid and kept.token == EMU_TOKEN and process.answers(kept)
        child.terminate()  # SIGTERM: a clean stop
        assert child.wait(10) == 0
    finally:
        child.kill()
    out = child.stdout.read() if child.stdout else ""
    assert "listening on http://127.0.0.1:" in out and EMU_TOKEN not in out
    assert kept.comfy_api_key not in out and not state.exists()
