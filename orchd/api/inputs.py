"""Reading what a control API request asks for: its body as JSON within limits, its query
parameters and headers. Each refusal is a ``BadRequest`` naming the parameter at fault; the
console reads its own requests with the same rules.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from aiohttp import web

from orchd.engine.ids import MIN_PREFIX
from orchd.errors import BadRequest, DuplicateKey
from orchd.model import DEFAULT_PAGE, MAX_PAGE

#: Request bodies nested deeper than this are refused (400) rather than handed on.
MAX_DEPTH = 64
#: The largest integer a parameter may give: the database's (ids and cursors are its integers).
#: Its 19 digits are checked first: Python refuses to convert a string of more than 4,300.
MAX_INTEGER = 2**63 - 1

_decoder = msgspec.json.Decoder()
_PREFIX = re.compile(r"[0-9a-f][0-9a-f-]*")
#: A JSON string literal (the body is known to be valid JSON when this is used).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def decode_body(raw: bytes, empty: Any) -> Any:
    """Decode a request body as any JSON value; ``empty`` stands for no body at all (a JSON
    ``null`` is a value like any other: a form refuses it, a callback may carry it). A body
    of only whitespace is not JSON: it is refused like any other."""
    if not raw:
        return empty
    if not raw.strip():
        raise BadRequest(
            "the body is only whitespace, which is not JSON: send a JSON value or no body"
        )
    try:
        value = _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(f"the body is nested deeper than {MAX_DEPTH} levels") from None
    if _deeper_than(value, MAX_DEPTH):
        raise BadRequest(f"the body is nested deeper than {MAX_DEPTH} levels")
    members = _members(value)
    # Each member's colon is in the text once, besides those inside strings: as many colons
    # as members means no key came twice (the common case, without looking at the strings).
    if raw.count(b":") != members and _STRING.sub(b'""', raw).count(b":") != members:
        _name_duplicate(raw)
    return value


def _members(value: Any) -> int:
    """How many members the objects in ``value`` have, once each key is counted once."""
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def _name_duplicate(raw: bytes) -> None:
    """Raise DuplicateKey naming a key that ``raw`` gives twice in one object.

    Every colon outside a string separates a member from its value, so more colons than the
    decoded objects have members means a key came twice (the later one would silently win);
    this slower reading names it."""

    def pairs(members: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in members:
            if key in seen:
                raise DuplicateKey(f"the body gives the key {key!r} twice in one object")
            seen[key] = value
        return seen

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except ValueError:
        pass  # what the standard library reads differently (a number of 5,000 digits)
    raise DuplicateKey("the body gives a key twice in one object")


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
    if value and "\x00" in value:
        # No stored value holds one (README "Querying with SQL"), and PostgreSQL refuses it
        # as a parameter: the filter could only fail there, or match nothing here.
        raise BadRequest(f"{name}: holds the character U+0000, which no stored value holds")
    return value if value else None


def flag(query: Mapping[str, str], name: str) -> bool:
    """``true`` or ``false`` (not given: false)."""
    value = text(query, name)
    if value not in (None, "true", "false"):
        raise BadRequest(f"{name}: expected true or false, got {_shown(value or '')}")
    return value == "true"


def integer(name: str, raw: str) -> int:
    """ASCII digits only: int() would also take '1_0', '+5' and other scripts' digits; at most
    MAX_INTEGER (a larger number is no id or count, and a very long one int() refuses)."""
    text = raw.strip()
    if not text.isascii() or not text.isdigit():
        raise BadRequest(f"{name}: expected a non-negative integer, got {_shown(raw)}")
    if len(text.lstrip("0")) > len(str(MAX_INTEGER)) or int(text) > MAX_INTEGER:
        raise BadRequest(f"{name}: {_shown(raw)} is larger than {MAX_INTEGER}")
    return int(text)


def _shown(raw: str) -> str:
    """A parameter as an answer quotes it: whole when short, else its start."""
    return repr(raw) if len(raw) <= 40 else f"{raw[:20]!r}... ({len(raw)} characters)"


def cursor(query: Mapping[str, str]) -> str | None:
    """The ``?cursor=`` of a page: ``next_cursor`` of the one before, a number."""
    raw = text(query, "cursor")
    return None if raw is None else str(integer("cursor", raw))


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
    return None if raw is None else checked_idempotency_key(raw)


def checked_idempotency_key(raw: str) -> str:
    """An idempotency key as given (the API's header, the console's form), or BadRequest."""
    if not 1 <= len(raw) <= MAX_IDEMPOTENCY_KEY or not all("!" <= c <= "~" for c in raw):
        raise BadRequest(
            f"Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters without spaces"
        )
    return raw


async def process_filter(
    request: web.Request, resolve: Callable[[str], Awaitable[str]]
) -> str | None:
    """The ``?process=`` filter: a process id, or a unique prefix of one of at least
    MIN_PREFIX characters as every other route takes (``resolve`` finds its process: 404
    when none, 409 when several)."""
    raw = text(request.query, "process")
    if raw is None:
        return None
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        pass
    if not MIN_PREFIX <= len(raw) < 36 or not _PREFIX.fullmatch(raw.lower()):
        raise BadRequest(
            f"process: {_shown(raw)} is not a process id, nor a prefix of at least "
            f"{MIN_PREFIX} of its characters"
        )
    return await resolve(raw)
