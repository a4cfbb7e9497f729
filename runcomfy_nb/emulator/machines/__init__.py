"""The RunComfy Server API (dedicated machines), as api/server-api.md has it.

Routes under `/prod/api/users/{user_id}` (bearer token checked by the app's middleware): GET
`/workflows`, GET/POST `/servers`, GET/DELETE `/servers/{server_id}`, POST
`/servers/{server_id}/update-estimated-duration`. A machine is `Starting` for `ready_seconds`, then
`Ready` with `main_service_url = {origin}/machines/{server_id}` (a ComfyUI backend, comfyui/),
billed per virtual second from Ready until DELETE or `estimated_stopping_at`; then `Deleting` for
`deleting_seconds`, then gone (404).

Settings (the config's "machines" object): `user_id`, `ready_seconds`, `deleting_seconds`,
`launch_404_seconds` (a fresh machine's GET answers 404 for that long, as clients have seen),
`rate_per_second` and `rate_burst` (a token bucket per account in REAL seconds; 0 turns it off),
and the backend's `step_seconds`, `node_seconds`, `load_seconds`, `previews`, `checkpoints`.
Workflows: the config's "workflows" list; each names a `preset` (the API-format workflow its
environment runs; its checkpoints are installed on the machine).

Choices where the docs are silent (api/server-api.md "Uncertain"): a wrong `user_id` answers 403
`{"error_code": 403001, ...}`; the 429 body is `{"error_code": "rate_limited", ...}` with a
`Retry-After` header; timestamps are virtual (they advance `speed` times faster than the wall clock,
so `estimated_stopping_at = service_ready_at + estimated_duration` holds) and the Server API's `Date`
header carries the same virtual now.

Faults (target: the server_id; the workflow version id or "*" for a launch): `never_ready` (on
"ready": the machine stays Starting), `slow_ready` (param `seconds`), and the request faults
`rate_limit`, `server_error`, `http_error`, `body_error`, `drop`, `delay` on launch and
update-estimated-duration ("submit"; `drop`/`delay` after the machine was taken), status, list and
workflows ("status"), and stop ("cancel"); `not_json` on status and list: HTTP 200 with an HTML
page, as a proxy in front of the API may answer.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import comfyui
from ..routing import mount
from .fleet import DEFAULTS, Machine, Machines
from .routes import ServerAPI

__all__ = ["DEFAULTS", "KEY", "Machine", "Machines", "register"]

KEY = web.AppKey("machines", Machines)


def register(app: web.Application, state: Any) -> None:
    """Mount the Server API (bearer auth on `/prod/api/`) and hand comfyui/ the machines' backends."""
    fleet = Machines(state, state.config)
    app[KEY] = fleet
    app[comfyui.BACKENDS] = fleet.backend
    state.bearer_prefixes.append("/prod/api/")
    mount(app, ServerAPI(fleet))

    async def close_machines(app: web.Application) -> None:  # open WebSockets would stall cleanup
        await fleet.shutdown()

    app.on_shutdown.append(close_machines)
