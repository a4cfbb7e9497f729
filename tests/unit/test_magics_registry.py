"""The `%runcomfy` subcommand table and small magic pieces, without a server."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

from runcomfy_nb.clients.machines import MachineInfo
from runcomfy_nb.magics import machines as machine_magics
from runcomfy_nb.magics.registry import SUBCOMMANDS, help_text


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_names_a_function_of_its_module(name: str) -> None:
    command = SUBCOMMANDS[name]
    fn = command.handler()
    assert fn.__module__ == f"runcomfy_nb.magics.{command.module}" and fn.__name__ == name
    assert list(inspect.signature(fn).parameters) == ["magics", "line", "cell"]
    assert command.usage.split()[0] == name and command.usage in help_text()


def test_every_subcommand_function_is_in_the_table() -> None:
    modules = {c.module for c in SUBCOMMANDS.values()}
    for module in modules:
        found = importlib.import_module(f"runcomfy_nb.magics.{module}")
        handlers = [n for n, f in vars(found).items()
                    if inspect.isfunction(f) and f.__module__ == found.__name__
                    and list(inspect.signature(f).parameters) == ["magics", "line", "cell"]]
        assert set(handlers) <= set(SUBCOMMANDS), f"{module} has a subcommand the table lacks"


class _Machines:
    def __init__(self, info: MachineInfo) -> None:
        self.info = info

    def extend(self, server_id: str, by: str) -> MachineInfo:
        return self.info


@pytest.mark.parametrize(("duration", "said"),
                         [(5400, "now runs 1.50 h in all"), (None, "was given 30m more")])
def test_extend_says_what_the_server_answered(monkeypatch: pytest.MonkeyPatch, capsys: Any,
                                              duration: int | None, said: str) -> None:
    info = MachineInfo(server_id="abcdef1234", state="ready", estimated_duration=duration)
    monkeypatch.setattr(machine_magics, "_machines", lambda: _Machines(info))
    machine_magics.extend(None, "abcdef1234 30m", None)
    assert capsys.readouterr().out.strip() == f"Machine abcdef12 {said}."
