"""RunComfy Model API: hosted catalog models by `model_id` (submit, status, result, cancel, catalog).

Same queue pattern as serverless (api/model-api.md), so a run is followed by the same `PolledRun`
(polled.py). Media inputs are URLs the server fetches itself: every `*_url` / `*_urls` input is
checked to be a public https URL before anything is sent (and paid for).
"""

from __future__ import annotations

import builtins
import ipaddress
import re
from collections.abc import Awaitable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import ValidationError
from ..jobs import Job
from ..journal import journal, submitting
from ..polled import PolledRequests, Request, RequestResult, RequestStatus
from ..provenance import record
from ..storage import Storage
from ..transport import Transport

SERVICE = "RunComfy Model API"
_BAD_ID_CHARS = re.compile(r"[\s?#%\\]")
_PRIVATE_HOSTS = ("localhost", "localhost.localdomain")


@dataclass(frozen=True)
class ModelInfo:
    """One catalog entry. The schema field names are not documented (api/model-api.md): the
    input and output schemas are read from `input_schema`/`output_schema` (or `schema.input`/
    `schema.output`) and kept whole in `raw`."""

    model_id: str
    display_name: str = ""
    categories: tuple[str, ...] = ()
    kind: str | None = None
    base_price_usd: float | None = None
    price_unit: str | None = None
    input_schema: dict[str, Any] | None = field(default=None, repr=False)
    output_schema: dict[str, Any] | None = field(default=None, repr=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_reply(cls, entry: Mapping[str, Any]) -> ModelInfo:
        schema = entry.get("schema")
        schema = schema if isinstance(schema, dict) else {}
        price = entry.get("base_price_usd")
        categories = entry.get("categories")
        return cls(
            model_id=str(entry.get("model_id") or entry.get("id") or ""),
            display_name=str(entry.get("display_name") or entry.get("name") or ""),
            categories=tuple(map(str, categories)) if isinstance(categories, list) else (),
            kind=entry.get("kind") if isinstance(entry.get("kind"), str) else None,
            base_price_usd=float(price) if isinstance(price, (int, float)) else None,
            price_unit=entry.get("price_unit") if isinstance(entry.get("price_unit"), str) else None,
            input_schema=_dict(entry.get("input_schema")) or _dict(schema.get("input")),
            output_schema=_dict(entry.get("output_schema")) or _dict(schema.get("output")),
            raw=dict(entry),
        )

    @property
    def required(self) -> list[str]:
        """The input fields the model requires (from its input schema, when the catalog gave it)."""
        required = (self.input_schema or {}).get("required")
        return [str(name) for name in required] if isinstance(required, list) else []


@dataclass(frozen=True)
class ModelPage:
    """One page of the catalog: `models` and the `total` number matching (None if not given)."""

    models: list[ModelInfo]
    total: int | None = None

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def __getitem__(self, index: int) -> ModelInfo:
        return self.models[index]


def _dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) and value else None


def check_model_id(model_id: Any) -> str:
    """The model id, or a ValidationError: ids look like `owner/model/...` and go into the path
    with their slashes."""
    if not isinstance(model_id, str) or not model_id.strip():
        raise ValidationError("model_id must be a catalog model id such as "
                              "'blackforestlabs/flux-1-kontext/pro/edit'.")
    model_id = model_id.strip()
    segments = model_id.split("/")
    if len(segments) < 2 or _BAD_ID_CHARS.search(model_id) or any(
            s in ("", ".", "..") for s in segments):
        raise ValidationError(
            f"{model_id!r} is not a Model API model id: it looks like 'owner/model/variant' "
            "(e.g. 'blackforestlabs/flux-1-kontext/pro/edit'), as on the model's API page.")
    return model_id


def _looks_local(text: str) -> bool:
    if text.startswith(("/", ".", "~")) or "\\" in text:
        return True
    try:
        return Path(text).expanduser().exists()
    except (OSError, ValueError):
        return False


def _url_problem(value: Any) -> str | None:
    """Why `value` cannot be a media input URL, or None if it is a public https URL."""
    if isinstance(value, PurePath):
        return "is a local file path"
    if not isinstance(value, str) or not value.strip():
        return f"must be a URL string, not {type(value).__name__}"
    text = value.strip()
    scheme = text.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text) else ""
    if scheme == "data":
        return "is a data: URI (the file itself, inline)"
    if scheme == "file" or re.match(r"^[A-Za-z]:[\\/]", text):
        return "is a local file path"
    if not scheme:
        return "is a local file path" if _looks_local(text) else "is not a URL (no https://)"
    if scheme != "https":
        return f"uses {scheme}:, not https:"
    host = (urlsplit(text).hostname or "").lower()
    if not host:
        return "has no host"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host in _PRIVATE_HOSTS or host.endswith((".localhost", ".local", ".internal")):
            return "points at a private host the service cannot reach"
    else:
        if not address.is_global:
            return "points at a private address the service cannot reach"
    return None


def check_inputs(inputs: Any) -> dict[str, Any]:
    """The submit body, checked before anything is sent: an object of the model's input fields,
    whose `*_url` fields (and `*_urls` lists), at any depth, hold public https URLs, and where no
    value is a local path or raw bytes."""
    if not isinstance(inputs, Mapping):
        raise ValidationError("inputs must be an object of the model's input fields, e.g. "
                              "{\"prompt\": \"...\", \"image_url\": \"https://...\"}.")
    for name in inputs:
        if not isinstance(name, str):
            raise ValidationError(f"Input field names must be strings, not {name!r}.")
    return {name: _checked(value, name, name) for name, value in inputs.items()}


def _checked(value: Any, name: str, where: str) -> Any:
    """`value` made JSON-ready (tuples become lists), or a ValidationError naming `where`."""
    if name.endswith("_urls"):
        if not isinstance(value, (list, tuple)):
            raise ValidationError(f"Input '{where}' must be a list of public https URLs.")
        return [_checked(item, name[:-1], f"{where}[{n}]") for n, item in enumerate(value)]
    if value is None:  # an optional input left unset: the server's schema decides
        return None
    if name.endswith("_url") or isinstance(value, (PurePath, bytes, bytearray)):
        problem = ("is raw file bytes" if isinstance(value, (bytes, bytearray)) else _url_problem(value))
        if problem:
            shown = "…" if isinstance(value, (bytes, bytearray)) else str(value)
            shown = shown if len(shown) <= 60 else f"{shown[:40]}…"
            raise ValidationError(
                f"Input '{where}' {problem} ({shown!r}): the Model API downloads media inputs "
                "itself, so upload the file somewhere public first (any https host that serves "
                "it without cookies or auth, or a pre-signed URL) and pass that https URL.")
        return value
    if isinstance(value, Mapping):
        return {k: _checked(v, str(k), f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_checked(item, name, f"{where}[{n}]") for n, item in enumerate(value)]
    return value


class Models(PolledRequests):
    """Run catalog models by id and browse the catalog. `submit` returns a running `Job`."""

    service = SERVICE
    kind = "model"

    def __init__(self, transport: Transport, storage: Storage) -> None:
        super().__init__()
        self._http = transport
        self._storage = storage

    def __repr__(self) -> str:
        return "<Models>"

    @staticmethod
    def _model_path(model_id: str) -> str:
        return f"/v1/models/{quote(check_model_id(model_id), safe='/:@')}"

    async def submit(self, model_id: str, inputs: Mapping[str, Any], *, label: str | None = None) -> Job:
        """Queue one request with the model's own input fields (keys 1:1 as on its API page).
        Inputs are checked first; the POST is never resent after it may have reached the server."""
        path = self._model_path(model_id)
        body = check_inputs(inputs)
        model_id, where = model_id.strip(), {"base_url": self._http.base_url}
        with submitting(self.kind, model_id, label=label, **where) as pending:
            reply = await self._http.request("POST", path, json=body, idempotent=False)
            request_id = self._request_id(reply)
        job = self._attach(request_id, model_id=model_id, label=label)
        job.provenance = record(target=model_id, kind=self.kind, job_id=job.id, inputs=body)
        pending.taken(job, target=model_id, **where)
        return job

    def attach(self, request_id: str, *, model_id: str | None = None, label: str | None = None) -> Job:
        """Follow an existing request as a Job (call inside the event loop); it is journaled.
        `model_id`, if known, lets polling learn from that model's earlier run times."""
        job = self._attach(request_id, model_id=model_id, label=label)
        journal().follow(job, target=model_id or "", base_url=self._http.base_url)
        return job

    def _attach(self, request_id: str, *, model_id: str | None = None, label: str | None = None) -> Job:
        if not isinstance(request_id, str) or not request_id.strip():
            raise ValidationError("request_id must be the id a submit returned (a string).")
        known = f", model_id={model_id!r}" if model_id else ""
        return self._follow(self._request(request_id), target=model_id or "",
                            what=f"The model run{f' of {model_id}' if model_id else ''}",
                            label=label or f"{model_id or 'model'} · {request_id[:8]}",
                            reattach=f"`client.models.attach({request_id!r}{known})`")

    def _request(self, request_id: str) -> Request:
        path = f"/v1/requests/{quote(request_id, safe='')}"

        def send(method: str, action: str, **kwargs: Any) -> Awaitable[Any]:
            return self._http.request(method, f"{path}/{action}", **kwargs)

        return Request(request_id, send, self._storage)

    async def status(self, request_id: str) -> RequestStatus:
        """Where the request stands (`queue_position` while it waits)."""
        return await self._request(request_id).status()

    async def result(self, request_id: str) -> RequestResult:
        """The outputs (a URL, a list or an object of them: all become Media) or the error."""
        return await self._request(request_id).result()

    async def cancel(self, request_id: str) -> bool:
        """Ask to cancel; True if accepted (only while queued: a running request is not
        cancellable, finishes, and is billed)."""
        return await self._request(request_id).cancel()

    # --- catalog (seen in the official CLI, not documented) ------------------------------------
    async def list(
        self, search: str | None = None, *, category: str | None = None, kind: str | None = None,
        include_schema: bool = False, limit: int | None = None, offset: int | None = None,
    ) -> ModelPage:
        """One page of the catalog, optionally filtered by a search text, category or kind."""
        params: dict[str, Any] = {"search": search, "category": category, "kind": kind,
                                  "limit": limit, "offset": offset}
        params = {k: v for k, v in params.items() if v is not None}
        if include_schema:
            params["include_schema"] = "true"
        reply = await self._http.request("GET", "/v1/models", params=params)
        entries = reply.get("models") if isinstance(reply, dict) else reply
        total = reply.get("total") if isinstance(reply, dict) else None
        models = [ModelInfo.from_reply(e) for e in entries or [] if isinstance(e, dict)]
        return ModelPage(models, total if isinstance(total, int) else None)

    async def categories(self) -> builtins.list[str]:
        reply = await self._http.request("GET", "/v1/models/categories")
        found = reply.get("categories") if isinstance(reply, dict) else reply
        return [str(c) for c in found] if isinstance(found, list) else []

    async def get(self, model_id: str) -> ModelInfo:
        """One catalog entry with its input and output schema."""
        reply = await self._http.request("GET", self._model_path(model_id))
        return ModelInfo.from_reply(reply if isinstance(reply, dict) else {"model_id": model_id})
