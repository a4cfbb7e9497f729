"""What `%load_ext runcomfy_nb` costs: a bare `ipython --quick` start against one that loads the
extension, alternated in the same run (medians of several runs each), and how many modules the
extension imports. The goal (issue 13): load_ext_s / bare_s <= 1.2.
Ends with `RESULT bare_s=... load_ext_s=... ratio=... modules=...`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COUNT = ("import sys; before = set(sys.modules); get_ipython().run_line_magic('load_ext', 'runcomfy_nb'); "
         "print(len(set(sys.modules) - before))")


def ipython() -> list[str]:
    """The IPython of this interpreter's environment."""
    beside = Path(sys.executable).with_name("ipython")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("ipython")
    return [found] if found else [sys.executable, "-m", "IPython"]


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="starts of each kind (default 15)")
    args = parser.parse_args()
    base = [*ipython(), "--quick", "--no-banner", "-c"]
    bare_cmd, load_cmd = [*base, "pass"], [*base, "%load_ext runcomfy_nb"]
    seconds(bare_cmd), seconds(load_cmd)  # warm the file cache and .pyc files; not counted
    bare: list[float] = []
    loaded: list[float] = []
    for _ in range(args.runs):  # alternated, so drifts of the machine's load hit both alike
        bare.append(seconds(bare_cmd))
        loaded.append(seconds(load_cmd))
    out = subprocess.run([*base, COUNT], check=True, capture_output=True, text=True).stdout
    modules = int(out.strip().splitlines()[-1])
    bare_s, load_s = statistics.median(bare), statistics.median(loaded)
    print(f"{'start':<28}{'median s':>10}{'min s':>10}{'max s':>10}")
    for name, times in (("ipython --quick", bare), ("... + %load_ext runcomfy_nb", loaded)):
        print(f"{name:<28}{statistics.median(times):>10.3f}{min(times):>10.3f}{max(times):>10.3f}")
    print(f"modules imported by %load_ext: {modules}")
    print(f"RESULT bare_s={bare_s:.3f} load_ext_s={load_s:.3f} ratio={load_s / bare_s:.2f} modules={modules}")


if __name__ == "__main__":
    main()
