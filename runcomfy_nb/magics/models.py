"""`%runcomfy model MODEL_ID key=value ...` and `%runcomfy models`: the Model API's catalog models."""

from __future__ import annotations

import json
import math
from typing import Any

from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..clients.models import ModelInfo
from ..errors import ValidationError
from . import split_args
from .core import Table
from .run import deliver, seconds
from .session import SESSION


@magic_arguments()
@argument("model_id", help="the catalog model id, e.g. blackforestlabs/flux-1-kontext/pro/edit")
@argument("inputs", nargs="*", help="the model's inputs as key=value (values read as JSON where they parse)")
@argument("--out", help="store the result (or the job, with --no-wait) under this name")
@argument("--timeout", type=seconds, help="seconds to wait before cancelling the request")
@argument("--no-wait", action="store_true", help="return the job at once; it runs on")
def _model_args(line: str) -> None: ...


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """`key=value` words as a body: a value is JSON where it parses (`seed=7`, `num_images=2`,
    `image_urls=["https://..."]`), else the text itself. `@path` is refused for URL inputs:
    the Model API downloads media itself, from a public https URL."""
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValidationError(f"{pair!r} is not key=value: write each input as name=value, "
                                  "e.g. prompt=\"a red fox\" seed=7.")
        if key in inputs:
            raise ValidationError(f"Input {key!r} is given twice.")
        if text.startswith("@") and key.endswith(("_url", "_urls")):
            raise ValidationError(
                f"Input {key!r} takes a public https URL, not a local file ({text}): the Model API "
                "downloads media inputs itself, so upload the file somewhere public first.")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        # json reads NaN and Infinity, which no API takes: keep those as the text typed
        inputs[key] = text if isinstance(value, float) and not math.isfinite(value) else value
    return inputs


def model(magics: Any, line: str, cell: str | None) -> Any:
    # shell-style words, quotes removed: prompt="a red fox" is one input
    args = _model_args.parser.parse_args(split_args(line))  # type: ignore[attr-defined]
    job = SESSION.client.models.submit(args.model_id, parse_inputs(args.inputs))
    return deliver(magics, job, args)


@magic_arguments()
@argument("search", nargs="?", help="text to look for in model ids and names")
@argument("--category", help="e.g. text-to-image, image-to-video")
@argument("--kind", help="image, video, ...")
@argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
@argument("--out", help="store the list under this name")
def _models_args(line: str) -> None: ...


class ModelList(Table):
    """Catalog models as `%runcomfy models` shows them; `total` is how many match in all."""

    HEADER = ("model_id", "name", "categories", "price")
    total: int | None = None

    def row(self, n: int, m: ModelInfo) -> tuple[str, ...]:
        price = "" if m.base_price_usd is None else f"${m.base_price_usd:g} / {m.price_unit or 'request'}"
        return (m.model_id, m.display_name, ", ".join(m.categories), price)


def models(magics: Any, line: str, cell: str | None) -> ModelList | None:
    args = parse_argstring(_models_args, line)
    if args.limit <= 0:
        raise ValidationError("--limit must be a positive number.")
    page = SESSION.client.models.list(args.search, category=args.category, kind=args.kind,
                                      limit=args.limit)
    found = ModelList(page.models)
    found.total = page.total
    if args.out:
        magics.shell.user_ns[args.out] = found
    if not found:
        print("No model matches." if args.search or args.category or args.kind else "The catalog is empty.")
        return None
    if page.total is not None and page.total > len(found):
        print(f"{len(found)} of {page.total} shown: narrow with SEARCH or --category, or raise --limit.")
    return found
