"""The documents name tests and modules that exist: a promise backed by a moved or deleted test, or a
layout line for a module that is gone, fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_named_in_the_guarantees_exists() -> None:
    missing = []
    for line in (ROOT / "docs" / "guarantees.md").read_text().splitlines():
        current = None
        for ref in re.findall(r"`(tests/[\w/]+\.py)?(?:::(test_\w+)(?:\[(\w+)\])?)?`", line):
            path, name, row = ref
            if path:
                current = ROOT / path
                if not current.is_file():
                    missing.append(path)
                    continue
            if name and (current is None
                         or not re.search(rf"^(async )?def {name}\(", current.read_text(), re.M)):
                missing.append(f"{current}::{name}")
            elif row and current is not None and f'"{row}"' not in current.read_text():
                missing.append(f"{current}::{name}[{row}]")  # a parametrised case by its id
    assert not missing


def test_the_readme_layout_names_every_module() -> None:
    """One line a module: every module of the package (a package by its folder) and nothing else."""
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    package = ROOT / "runcomfy_nb"
    files = [p for p in package.rglob("*") if p.suffix in (".py", ".pyi") or p.name == "py.typed"]
    modules = {str(p.relative_to(package)).removesuffix("__init__.py").removesuffix(".py") or "__init__"
               for p in files}
    named = {name.removesuffix(".py") for name in re.findall(r"^- `([\w/.]+)`", layout, re.M)}
    assert sorted(modules - named) == [] and sorted(named - modules) == []
