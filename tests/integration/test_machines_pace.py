"""Our own pace on the Server API never draws a 429, even from a server whose burst is as short as
ours used to be (1 request/s, bursts of 3), and from the first call of a fresh process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator
from runcomfy_nb.emulator.app import load_config

from ..helpers import TOKEN


@pytest.fixture(autouse=True)
def _fast_retries() -> Iterator[None]:
    yield  # real stamina: a 429 would be waited out, and logged


def test_a_fresh_process_never_meets_a_429() -> None:
    config = load_config(None)
    config["machines"].update(rate_per_second=1.0, rate_burst=3)
    with Emulator(speed=20.0, token=TOKEN, config=config) as emu:
        # a fresh emulator URL: a fresh account limiter, as in a new process
        client = rc.RunComfy(token=TOKEN, base_url=emu.url, user_id=emu.user_id)
        with client:
            client.machines.workflows()
            for _ in range(5):
                client.machines.list()
        calls = [r for r in emu.log if r.path.startswith("/prod/api/")]
        assert len(calls) >= 6
        assert [r.status for r in calls if r.status == 429] == []


def test_the_account_limiter_keeps_a_margin() -> None:
    from runcomfy_nb.client import _account_limiter

    limiter = _account_limiter("http://pace.invalid", "a-token")
    assert limiter is _account_limiter("http://pace.invalid", "a-token")  # one per account
    assert limiter.rate < 1.0 and limiter.burst < 3
