"""The configuration is read when it is used, not when the extension loads: a variable set later takes
effect on the next call; `%runcomfy login` keeps a token typed with getpass; `%runcomfy config KEY=VALUE`
sets the other settings; `%runcomfy emulate --stop` gives back only what it took."""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from runcomfy_nb import sync
from runcomfy_nb.config import SETTINGS, Config
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.errors import MissingCredentials
from runcomfy_nb.magics.session import SESSION

from ..helpers import TOKEN, emulating_shell, run_cell

WRONG = "rc_wrong_SENTINEL_token_1e2f"
LOGIN = "rc_login_SENTINEL_token_3a4b"
ENV = ("RUNCOMFY_TOKEN", "RUNCOMFY_API_KEY", "RUNCOMFY_USER_ID", "RUNCOMFY_BASE_URL",
       "RUNCOMFY_MODEL_API_URL", "RUNCOMFY_OUTPUT_DIR", "RUNCOMFY_AUTO_SAVE", "RUNCOMFY_SERVERLESS_VERSION")


@pytest.fixture
def ip(monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    saved = dict(SETTINGS)
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "runcomfy_nb")
    yield shell
    SETTINGS.clear()
    SETTINGS.update(saved)


def run(ip: InteractiveShell, cell: str, capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    return run_cell(ip, cell, capsys, TOKEN, WRONG, LOGIN)


def answer(monkeypatch: pytest.MonkeyPatch, token: str, user_id: str = "") -> list[str]:
    """Make `getpass` type `token` and `input` type `user_id`; returns the prompts shown."""
    prompts: list[str] = []
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": prompts.append(prompt) or token)
    monkeypatch.setattr("builtins.input", lambda prompt="": prompts.append(prompt) or user_id)
    return prompts


def test_a_token_set_after_loading_takes_effect(ip: InteractiveShell, emulator: Emulator,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RUNCOMFY_MODEL_API_URL", emulator.url)
    monkeypatch.setenv("RUNCOMFY_TOKEN", WRONG)
    refused, text = run(ip, "%runcomfy models --limit 1", capsys)
    assert not refused.success and "rejected the credentials" in text
    monkeypatch.setenv("RUNCOMFY_TOKEN", TOKEN)
    listed, text = run(ip, "%runcomfy models --limit 1", capsys)
    assert listed.success and len(listed.result) == 1, text


def test_a_user_id_set_after_loading_takes_effect(ip: InteractiveShell, emulator: Emulator,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCOMFY_BASE_URL", emulator.url)
    monkeypatch.setenv("RUNCOMFY_TOKEN", TOKEN)
    with pytest.raises(MissingCredentials, match="RUNCOMFY_USER_ID"):
        SESSION.client.machines  # noqa: B018
    monkeypatch.setenv("RUNCOMFY_USER_ID", emulator.user_id)
    assert isinstance(SESSION.client.machines.list(), list)


def test_login_asks_without_echo_and_wins_over_the_env(ip: InteractiveShell, emulator: Emulator,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RUNCOMFY_MODEL_API_URL", emulator.url)
    monkeypatch.setenv("RUNCOMFY_TOKEN", WRONG)
    prompts = answer(monkeypatch, TOKEN, emulator.user_id)
    done, text = run(ip, "%runcomfy login", capsys)
    assert done.success and "token" in prompts[0].lower() and len(prompts) == 2, text
    listed, text = run(ip, "%runcomfy models --limit 1", capsys)
    assert listed.success, text
    assert SESSION.config.user_id == emulator.user_id
    assert TOKEN not in "\n".join(ip.user_ns["In"]) and TOKEN not in repr(ip.user_ns["Out"])
    assert TOKEN not in repr(SETTINGS) and os.environ["RUNCOMFY_TOKEN"] == WRONG
    forgot, _ = run(ip, "%runcomfy login --forget", capsys)
    refused, text = run(ip, "%runcomfy models --limit 1", capsys)
    assert forgot.success and not refused.success and "rejected the credentials" in text


def test_login_with_nothing_typed_changes_nothing(ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    answer(monkeypatch, "  ")
    done, text = run(ip, "%runcomfy login --user-id u-1", capsys)
    assert done.success and "nothing" in text.lower() and Config.from_env().token is None


def test_config_sets_settings_that_are_not_secret(ip: InteractiveShell, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RUNCOMFY_OUTPUT_DIR", "from-env")
    done, text = run(ip, "%runcomfy config output_dir=renders timeout=12.5 serverless_version=v2 "
                         "auto_save=yes user_id=u-7", capsys)
    assert done.success, text
    config = Config.from_env()
    assert (config.output_dir, config.timeout, config.serverless_version) == ("renders", 12.5, "v2")
    assert config.auto_save is True and config.user_id == "u-7"
    _, table = run(ip, "%runcomfy config", capsys)
    assert "renders" in table and "12.5" in table
    run(ip, "%runcomfy config output_dir= auto_save=", capsys)  # back to the environment
    assert Config.from_env().output_dir == "from-env" and Config.from_env().auto_save is False


@pytest.mark.parametrize(("line", "words"), [
    ("token=abc123", "%runcomfy login"),
    ("comfy_api_key=abc123", "%runcomfy login --cloud"),
    ("outptu_dir=x", "output_dir"),
    ("timeout=soon", "timeout"),
    ("serverless_version=v3", "v1"),
    ("output_dir", "KEY=VALUE"),
])
def test_config_refuses_secrets_and_bad_values(ip: InteractiveShell, capsys: pytest.CaptureFixture[str],
                                               line: str, words: str) -> None:
    before = dict(SETTINGS)
    result, text = run(ip, f"%runcomfy config {line}", capsys)
    assert not result.success and words in text and "Traceback" not in text
    assert before == SETTINGS


def test_magics_traits_set_output_dir_and_auto_save(ip: InteractiveShell,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run(ip, "%config RunComfyMagics.output_dir = 'renders2'", capsys)
    run(ip, "%config RunComfyMagics.auto_save = True", capsys)
    try:
        assert Config.from_env().output_dir == "renders2" and Config.from_env().auto_save is True
    finally:
        run(ip, "%config RunComfyMagics.output_dir = ''", capsys)
        run(ip, "%config RunComfyMagics.auto_save = False", capsys)
    assert Config.from_env().output_dir == "outputs"


def test_emulate_stop_keeps_what_the_user_set_meanwhile(ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RUNCOMFY_TOKEN", "rc_before_SENTINEL")
    monkeypatch.setenv("RUNCOMFY_BASE_URL", "http://before.invalid")
    answer(monkeypatch, LOGIN)
    run(ip, "%runcomfy login", capsys)
    with emulating_shell(20) as shell:
        emulated = Config.from_env()
        assert emulated.base_url.startswith("http://127.0.0.1:")
        assert emulated.token is not None and emulated.token.get() == SESSION.emulator.token
        assert shell.run_cell("%runcomfy models --limit 1").success
        monkeypatch.setenv("RUNCOMFY_TOKEN", "rc_mine_SENTINEL")  # the user's own, set meanwhile
    assert os.environ["RUNCOMFY_TOKEN"] == "rc_mine_SENTINEL"
    assert os.environ["RUNCOMFY_BASE_URL"] == "http://before.invalid"
    after = Config.from_env()
    assert after.base_url == "http://before.invalid" and after.token is not None
    assert after.token.get() == LOGIN  # the login still wins over the environment


def test_a_job_outlives_the_client_a_config_change_replaced(ip: InteractiveShell, fresh: Emulator,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RUNCOMFY_BASE_URL", fresh.url)
    monkeypatch.setenv("RUNCOMFY_TOKEN", TOKEN)
    fresh.set_fault("dep-flux-kontext", "slow_queue", seconds=20)
    started, text = run(ip, "%%runcomfy run dep-flux-kontext --no-wait --out pending\n31.seed = 4\n", capsys)
    assert started.success, text
    before = SESSION.client
    monkeypatch.setenv("RUNCOMFY_TIMEOUT", "31")
    assert SESSION.client is not before and SESSION.config.timeout == 31.0
    job = sync.unwrap(ip.user_ns["pending"])
    assert not job.done  # still running on the replaced client, which waits for it before closing
    assert sync.run(job.wait(30)).value == "succeeded"


def test_auto_save_from_the_magics_says_where_the_files_went(ip: InteractiveShell, fresh: Emulator,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RUNCOMFY_BASE_URL", fresh.url)
    monkeypatch.setenv("RUNCOMFY_TOKEN", TOKEN)
    folder = tmp_path / "renders"
    run(ip, f"%runcomfy config output_dir={folder} auto_save=on", capsys)
    done, text = run(ip, "%%runcomfy run dep-flux-kontext --out city\n31.seed = 8\n", capsys)
    assert done.success, text
    saved = sorted(p.name for p in folder.iterdir())
    assert saved == sorted(m.filename for m in ip.user_ns["city"].media) and saved
    assert f"to {folder}" in text and all(name in text for name in saved)
