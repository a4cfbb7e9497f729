"""`python -m runcomfy_nb.emulator --port 0`: serve the emulator in the foreground."""

from __future__ import annotations

import argparse
import threading

from .app import Emulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runcomfy_nb.emulator", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--speed", type=float, default=1.0, help="virtual seconds per real second")
    parser.add_argument("--token", help="the bearer token it accepts (default: a random one, printed)")
    parser.add_argument("--comfy-api-key", help="Comfy Cloud's key (default: a random one, printed)")
    parser.add_argument("--config", help="a deployments JSON file (default: the packaged one)")
    args = parser.parse_args(argv)
    emulator = Emulator(speed=args.speed, token=args.token, port=args.port, config=args.config,
                        comfy_api_key=args.comfy_api_key)
    url = emulator.start()
    print(f"runcomfy emulator listening on {url}", flush=True)
    if not args.token:
        print(f"token: {emulator.token}  (export RUNCOMFY_TOKEN=... RUNCOMFY_BASE_URL={url} "
              f"RUNCOMFY_MODEL_API_URL={url})", flush=True)
    ws = emulator.cloud_url.replace("http://", "ws://", 1)
    print(f"Comfy Cloud: {emulator.cloud_url}  (header X-API-Key; WebSocket {ws}/ws?clientId=...&token=...)",
          flush=True)
    if not args.comfy_api_key:
        print(f"comfy api key: {emulator.comfy_api_key}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
