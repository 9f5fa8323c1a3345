"""Reading what a control API request asks for: its body as JSON within limits, its query
parameters and headers. Each refusal is a ``BadRequest`` naming the parameter at fault; the
console reads its own requests with the same rules.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

from orchd.errors import BadRequest
from orchd.model import DEFAULT_PAGE, MAX_PAGE

#: Request bodies nested deeper than this are refused (400) rather than handed on.
MAX_DEPTH = 64

_decoder = msgspec.json.Decoder()


def decode_body(raw: bytes, empty: Any) -> Any:
    """Decode a request body as any JSON value; ``empty`` stands for a blank body (a JSON
    ``null`` is a value like any other: a form refuses it, a callback may carry it)."""
    if not raw.strip():
        return empty
    try:
        value = _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(f"the body is nested deeper than {MAX_DEPTH} levels") from None
    if _deeper_than(value, MAX_DEPTH):
        raise BadRequest(f"the body is nested deeper than {MAX_DEPTH} levels")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def text(query: Mapping[str, str], name: str) -> str | None:
    # An empty value means "not given": scripts build `?cursor=$next` with an empty first page.
    value = query.get(name)
    return value if value else None


def integer(name: str, raw: str) -> int:
    """ASCII digits only: int() would also take '1_0', '+5' and other scripts' digits."""
    text = raw.strip()
    if not text.isascii() or not text.isdigit():
        raise BadRequest(f"{name}: expected a non-negative integer, got {raw!r}")
    return int(text)


def page_limit(query: Mapping[str, str]) -> int:
    raw = text(query, "limit")
    if raw is None:
        return DEFAULT_PAGE
    value = integer("limit", raw)
    if value < 1:
        raise BadRequest(f"limit: must be at least 1, got {value}")
    return min(value, MAX_PAGE)


def event_id(request: web.Request) -> int | None:
    for name, raw in (
        ("Last-Event-ID", request.headers.get("Last-Event-ID")),
        ("after", text(request.query, "after")),
    ):
        if raw:
            return integer(name, raw)
    return None


#: The longest ``Idempotency-Key``.
MAX_IDEMPOTENCY_KEY = 200


def idempotency_key(request: web.Request) -> str | None:
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_IDEMPOTENCY_KEY or not all("!" <= c <= "~" for c in raw):
        raise BadRequest(
            f"Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters without spaces"
        )
    return raw


def process_filter(request: web.Request) -> str | None:
    raw = text(request.query, "process")
    if raw is None:
        return None
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise BadRequest(f"process: {raw!r} is not a process id") from None
