from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import stamina

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator

TOKEN = "rc_test_token_SENTINEL_5f2b9c0e7a"


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    with Emulator(speed=20.0, token=TOKEN) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _fast_retries() -> Iterator[None]:
    with stamina.set_testing(True, attempts=3):
        yield


@pytest.fixture
def fresh(emulator: Emulator) -> Iterator[Emulator]:
    emulator.clear_faults()
    yield emulator
    emulator.clear_faults()


@pytest.fixture
async def client(fresh: Emulator) -> AsyncIterator[rc.AsyncRunComfy]:
    async with rc.AsyncRunComfy(token=TOKEN, base_url=fresh.url) as c:
        yield c


def posts(emulator: Emulator, deployment: str) -> int:
    return sum(1 for r in emulator.log
               if r.method == "POST" and r.path.endswith(f"/deployments/{deployment}/inference"))
