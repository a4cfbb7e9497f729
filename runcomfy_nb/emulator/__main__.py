"""`python -m runcomfy_nb.emulator --port 0`: serve the emulator in the foreground.

With `--state FILE` (what `%runcomfy emulate --keep` runs) it writes its URLs, pid, token and key to
FILE (mode 0600) once it listens, prints no secret, and removes FILE when it ends (SIGTERM or
Ctrl-C). The token is `--token`, else `$RUNCOMFY_EMULATOR_TOKEN`, else a random one.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from .app import Emulator
from .process import TOKEN_ENV, KeptEmulator, remove_state, write_state


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runcomfy_nb.emulator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--speed", type=float, default=1.0, help="virtual seconds per real second")
    parser.add_argument("--token", help=f"the bearer token it accepts (default: ${TOKEN_ENV}, else a "
                        "random one, printed)")
    parser.add_argument("--comfy-api-key", help="Comfy Cloud's key (default: a random one, printed)")
    parser.add_argument("--config", help="a deployments JSON file (default: the packaged one)")
    parser.add_argument("--state", help="write url, pid, token and key to this file (0600); print no secret")
    return parser


def _announce(emulator: Emulator, url: str, token_given: bool, key_given: bool) -> None:
    print(f"runcomfy emulator listening on {url}", flush=True)
    if not token_given:
        print(f"token: {emulator.token}  (export RUNCOMFY_TOKEN=... RUNCOMFY_BASE_URL={url} "
              f"RUNCOMFY_MODEL_API_URL={url})", flush=True)
    ws = emulator.cloud_url.replace("http://", "ws://", 1)
    print(f"Comfy Cloud: {emulator.cloud_url}  (header X-API-Key; WebSocket {ws}/ws?clientId=...&token=...)",
          flush=True)
    if not key_given:
        print(f"comfy api key: {emulator.comfy_api_key}", flush=True)


def _kept(emulator: Emulator, url: str) -> KeptEmulator:
    return KeptEmulator(url=url, cloud_url=emulator.cloud_url, pid=os.getpid(), speed=emulator.speed,
                        user_id=emulator.user_id, deployments=emulator.deployment_ids(),
                        models=len(emulator.model_ids()), started_at=time.time(), token=emulator.token,
                        comfy_api_key=emulator.comfy_api_key)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    emulator = Emulator(speed=args.speed, token=token, port=args.port, config=args.config,
                        comfy_api_key=args.comfy_api_key)
    ended = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        ended.set()  # stop cleanly (sockets closed, state file removed), as on Ctrl-C

    signal.signal(signal.SIGTERM, on_term)
    url = emulator.start()
    state = Path(args.state) if args.state else None
    try:
        if state is None:
            _announce(emulator, url, token is not None, args.comfy_api_key is not None)
        else:
            write_state(state, _kept(emulator, url))
            print(f"runcomfy emulator listening on {url} (pid {os.getpid()}; state in {state})", flush=True)
        ended.wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
        if state is not None:
            remove_state(state, os.getpid())


if __name__ == "__main__":
    main()
