"""CPU per HTTP request with and without `sniffio`, against the emulator on 127.0.0.1.

httpcore asks `sniffio` which async library runs each time it makes a lock or semaphore; when it is
not installed, every such call tries to import it and fails. Each case runs in its own process,
both in this run; the first hides `sniffio` (each import of it looks through every finder and
fails). N status calls of one request, 8 at a time, through one `AsyncRunComfy`; the CPU time is
the client's thread only. Ends with `RESULT cpu_ms_per_request_without=… with=… ratio=…`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = r"""
import asyncio, sys, time
if sys.argv[1] == "hide":
    import importlib.abc
    class Hide(importlib.abc.MetaPathFinder):
        # a miss as it costs when sniffio is not installed: every other finder looks, none finds
        def find_spec(self, name, path=None, target=None):
            if name == "sniffio":
                for finder in sys.meta_path[1:]:
                    finder.find_spec("sniffio_not_installed", path, target)
                raise ModuleNotFoundError("No module named 'sniffio'")
    sys.meta_path.insert(0, Hide())
import runcomfy_nb as rc
from runcomfy_nb.emulator import Emulator

N = int(sys.argv[2])

async def main(url, token):
    async with rc.AsyncRunComfy(token=token, base_url=url) as client:
        job = await client.deployments.submit("dep-flux-kontext", {})
        await job.result(timeout=60)
        gate = asyncio.Semaphore(8)
        async def one():
            async with gate:
                await client.deployments.status("dep-flux-kontext", job.id)
        start = time.thread_time()  # this thread: the client, not the emulator's thread
        await asyncio.gather(*(one() for _ in range(N)))
        return (time.thread_time() - start) * 1000 / N

with Emulator(speed=50.0) as emu:
    print(asyncio.run(main(emu.url, emu.token)))
"""


def run(case: str, n: int) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, case, str(n)], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    without, with_ = run("hide", args.requests), run("keep", args.requests)
    print(f"{args.requests} status calls: {without:.3f} CPU-ms/request without sniffio, {with_:.3f} with")
    print(f"RESULT cpu_ms_per_request_without={without:.3f} with={with_:.3f} ratio={without / with_:.2f}")


if __name__ == "__main__":
    main()
