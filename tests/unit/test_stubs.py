"""The typed blocking facade: the committed stub (runcomfy_nb/facade.pyi) is what the generator
writes from the async classes now, a type checker sees real types through it, and the blocking
classes have the async classes' signatures at run time."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

import mypy.api
import pytest

import runcomfy_nb as rc

ROOT = Path(__file__).resolve().parents[2]
STUB = ROOT / "runcomfy_nb" / "facade.pyi"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_stubs", ROOT / "scripts" / "make_stubs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def test_committed_stub_matches_the_async_classes() -> None:
    assert generator().generate() == STUB.read_text(), (
        "runcomfy_nb/facade.pyi is out of date with the async classes: run `make stubs`")


def test_the_package_ships_py_typed() -> None:
    assert (ROOT / "runcomfy_nb" / "py.typed").is_file()


@pytest.mark.parametrize("name", ["RunComfy", "ComfyUI", "ComfyCloud"])
def test_blocking_classes_have_the_async_signatures(name: str) -> None:
    blocking, original = getattr(rc, name), getattr(rc, f"Async{name}")
    assert inspect.signature(blocking) == inspect.signature(original)
    assert "args" not in inspect.signature(blocking).parameters


SNIPPET = '''
import runcomfy_nb as rc

client = rc.RunComfy()
job = client.deployments.submit("d", {})
reveal_type(job)
reveal_type(job.result())
reveal_type(job.result().media)
reveal_type(job.events())
reveal_type(client.machines.launch("v"))
reveal_type(client.machines.launch("v").wait_ready())
reveal_type(client.models.submit("m", {}).cancel())
reveal_type(rc.ComfyUI("http://127.0.0.1:8188").queue({}))
reveal_type(rc.ComfyCloud().user())
with rc.RunComfy() as same:
    reveal_type(same)
client.deployments.submit(1, {})
'''

EXPECTED = [  # blocking classes are the stub's (facade.X); plain data classes by their name
    "facade.Job",
    "facade.JobResult",
    "list[facade.Media]",
    "typing.Iterator[Event]",
    "facade.Machine",
    "MachineInfo",
    "bool",
    "facade.Job",
    "CloudUser",
    "facade.RunComfy",
]


def short(revealed: str) -> str:
    revealed = re.sub(r"runcomfy_nb\.(?!facade\.)[\w.]*\.(\w+)", r"\1", revealed)
    return revealed.replace("runcomfy_nb.facade.", "facade.")


def test_a_type_checker_sees_real_types(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    out, err, _ = mypy.api.run([str(snippet), "--follow-imports=silent", "--no-incremental",
                                "--cache-dir", str(tmp_path / "cache")])
    revealed = [short(r) for r in re.findall(r'Revealed type is "([^"]+)"', out)]
    assert revealed == EXPECTED, out + err
    # a wrong argument type is caught: the signature is real, not (*args, **kwargs)
    assert re.search(r'snippet\.py:\d+: error: Argument 1 to "submit" of "Deployments"', out), out
