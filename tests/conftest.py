from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import stamina

import runcomfy_nb as rc

from .helpers import TOKEN

if TYPE_CHECKING:  # imported by the fixtures that start one: the unit tests need no emulator
    from runcomfy_nb.emulator import Emulator


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    from runcomfy_nb.emulator import Emulator

    with Emulator(speed=20.0, token=TOKEN) as emu:
        yield emu


@pytest.fixture(scope="session", autouse=True)
def _ctrl_c_works() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt, as at a terminal, even when the suite was started in the
    background by a shell without job control (`cmd &`, nohup), which starts it with SIGINT ignored:
    then `_thread.interrupt_main()` does nothing and every child process inherits the ignore."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(scope="session", autouse=True)
def _suite_journal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test writes the user's job journal: the suite's, kernels and scripts it starts included,
    is a file of its own (each test moves it again, see `journal`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RUNCOMFY_JOURNAL", str(tmp_path_factory.mktemp("journal") / "jobs.sqlite3"))
        yield


@pytest.fixture(autouse=True)
def journal(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own job journal file (RUNCOMFY_JOURNAL), which its kernels and scripts inherit."""
    path = tmp_path_factory.mktemp("journal") / "jobs.sqlite3"
    monkeypatch.setenv("RUNCOMFY_JOURNAL", str(path))
    return path


@pytest.fixture(autouse=True)
def _fast_retries() -> Iterator[None]:
    with stamina.set_testing(True, attempts=3):
        yield


LOGGERS = ("", "runcomfy_nb", "httpx", "httpcore", "websockets", "aiohttp", "asyncio")


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger that could print a secret at DEBUG, captured (the secret-sentinel tests)."""
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    yield caplog
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def fresh(emulator: Emulator) -> Iterator[Emulator]:
    emulator.clear_faults()
    yield emulator
    emulator.clear_faults()


@pytest.fixture
async def client(fresh: Emulator) -> AsyncIterator[rc.AsyncRunComfy]:
    async with rc.AsyncRunComfy(token=TOKEN, base_url=fresh.url) as c:
        yield c


