"""Comfy Cloud (cloud.comfy.org), as api/comfy-cloud.md has it, on the base path `/cloud`.

A client configured with `comfy_cloud_url = emulator.cloud_url` (`{emulator.url}/cloud`) finds the HTTP
API under `{base}/api/...` and the WebSocket at `{base}/ws?clientId=...&token=<key>`. Every request
needs `X-API-Key: <key>` (`Emulator.comfy_api_key`; more accounts: `Emulator.cloud_account(key)`) except
GET `/api/system_stats`; a missing or unknown key answers 401 `{"code", "message"}`, as do the other
errors (the WebSocket: the upgrade is refused with 401).

Routes under `/cloud/api`: POST `/prompt`, GET `/job/{id}/status`, GET `/jobs/{id}`, GET
`/jobs?status=&limit=&offset=&sort_by=create_time&sort_order=`, GET `/history_v2[?max_items=&offset=]`
(the list), GET `/history_v2/{id}`, POST
`/upload/image`, `/upload/mask`, GET `/view`, GET/POST `/queue`, POST `/interrupt`, GET
`/object_info[/{class}]`, `/user`, `/system_stats`, `/features`; GET `/history/{id}` is 404, as on Cloud.
GET `/view` answers 302 to a signed URL `/cloud-storage/{user_id}/{filename}?Expires=&Signature=` (`channel=
rgb|a`: 200 PNG bytes); that URL serves the bytes without auth, refuses a bad or expired signature (403)
and refuses (403, recorded in `Emulator.leaks`) a request carrying `X-API-Key` or `Authorization`.
Uploads are flat and content-addressed (`{sha256}{ext}`; `subfolder` and `overwrite` are ignored,
`type` defaults to `output`); over 50 MB, 16384 px per edge or 64 MP → 400.

The engine is comfyui's (here: accounts.py; settings.py holds the settings and names, routes.py the
table): an account runs its jobs on `Worker`s (ComfyUI backends whose messages go to
every socket of the account, clientId being ignored, and whose files are the account's store), as many
at once as its tier allows (Standard 1, Creator 3, Pro 5); the other jobs wait in the account's queue.
Messages are ComfyUI's plus `notification` `{"value": "Executing workflow..."}` when a job starts; the
`status` messages count the account's unfinished jobs. Previews: type 4 to sockets whose first message
announced `supports_preview_metadata`, else type 1.

Account settings (`Emulator.cloud_account(key=None, **changes)`; the main account's also from the
config's "cloud" object): `tier` ("standard" | "creator" | "pro"; default "creator"), `active` (False:
POST /api/prompt answers 429 "subscription inactive", GET /api/user says "waitlisted"), `credits` (the
balance, which jobs do not spend; 0 or less: POST /api/prompt answers 402). Cloud settings
(`Emulator.cloud_settings(**changes)` or the config's "cloud" object): `status_vocabulary` of GET
/api/job/{id}/status — "guide" (pending, in_progress, completed, failed, cancelled; the default and what
/api/jobs always says), "openapi" (waiting_to_dispatch, pending, in_progress, completed, error,
cancelled) or "newer" (queued_waiting, preparing, executing, success, error, cancelled);
`step_seconds`, `node_seconds`, `load_seconds`, `partner_seconds` (virtual), `previews`, `url_seconds`
(real seconds a signed URL stays valid; 0 or less: already expired), `checkpoints`.

Partner node `FluxProUltraImageNode` ("Flux 1.1 [pro] Ultra Image", category "api node/image/BFL",
output IMAGE): unless the prompt's `extra_data.api_key_comfy_org` is the account's key, the job fails at
run time with an `execution_error` (`Exception`, "Unauthorized: Please login first to use this node.").
`api_key_comfy_org` / `auth_token_comfy_org` never appear in queue items, history or jobs.

Faults (target "cloud" or "*"): the request faults `rate_limit`, `server_error`, `http_error` (`status`,
`code`, `message`), `drop` and `delay` on POST /prompt ("submit"; `drop`/`delay` after the job was
taken), uploads ("upload"), job status, job lists, queue, user, object_info, features and system_stats
("status"), /jobs/{id} and /history_v2 ("result"), /view ("download"; `truncate` applies to the storage
URL), POST /queue and /interrupt ("cancel"); comfyui's `ws_refused` (the WebSocket handshake is
answered 429 with `Retry-After`), `ws_drop` and `node_raises` (on "run"): with an
`exception_type` of CLOUD_ERRORS (ValidationError, ModelDownloadError, ImageDownloadError, OOMError,
InsufficientFundsError, InactiveSubscriptionError, ...) the job fails with that category and, unless
`message` is given, a fitting message.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..routing import mount
from .accounts import Account, Cloud, Job, Worker
from .routes import CloudAPI
from .settings import BASE, CLOUD_ERRORS, PARTNER_NODE, PARTNER_UNAUTHORIZED

__all__ = ["BASE", "CLOUD_ERRORS", "KEY", "PARTNER_NODE", "PARTNER_UNAUTHORIZED", "Account", "Cloud", "Job",
           "Worker", "register"]

KEY = web.AppKey("cloud", Cloud)


def register(app: web.Application, state: Any) -> None:
    """Mount Comfy Cloud under `/cloud` (its own X-API-Key auth) and its storage under `/cloud-storage`."""
    cloud = Cloud(state, state.config.get("cloud", {}))
    app[KEY] = cloud
    mount(app, CloudAPI(cloud))
