"""`%load_ext runcomfy_nb` stays light: it registers the magics from a table and imports no
subcommand module, no client and no heavy library until a subcommand needs them (timed in
benchmarks/load_ext.py; here only which modules it imports)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["httpx", "websockets", "anywidget", "ipywidgets", "PIL", "aiohttp", "stamina",
         "runcomfy_nb.client", "runcomfy_nb.clients", "runcomfy_nb.facade", "runcomfy_nb.sync",
         "runcomfy_nb.jobs", "runcomfy_nb.transport", "runcomfy_nb.widgets", "runcomfy_nb.emulator",
         "runcomfy_nb.workflow", "runcomfy_nb.magics.session"]

CODE = """
import json, sys
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
before = set(sys.modules)
ip.run_line_magic("load_ext", "runcomfy_nb")
assert "runcomfy" in ip.magics_manager.magics["line"], "the magic is not registered"
ip.run_line_magic("runcomfy", "--help")
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_load_ext_imports_no_subcommand_and_no_client() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = [m for m in loaded if any(m == h or m.startswith(f"{h}.") for h in HEAVY)]
    assert heavy == [], f"%load_ext imported {heavy}"
    subcommands = [m for m in loaded
                   if m.startswith("runcomfy_nb.magics.") and m != "runcomfy_nb.magics.registry"]
    assert subcommands == [], f"%load_ext imported subcommand modules {subcommands}"
    assert "Usage: %runcomfy SUBCOMMAND" in out.stdout  # --help needs no subcommand module either
