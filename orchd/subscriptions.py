"""What a subscription in State must look like before the engine saves it.

An untyped subscription (its product has no registered class) is checked field by field, its
product data an ``attributes`` object. A typed one is checked against its product
(``orchd.products``): the types of its fields, the fields its status requires, and the Refs it
holds, which become its relations. Either way, what is saved has the same shape, and its
``version`` goes up by one when its content changed.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

from orchd.model import SUBSCRIPTION_FIELDS, SubscriptionStatus
from orchd.products import (
    PRODUCTS,
    Product,
    ProductError,
    as_state,
    missing_at,
    refs_in,
    to_model,
)

FIELDS = frozenset(SUBSCRIPTION_FIELDS)
STATUSES = frozenset(s.value for s in SubscriptionStatus)
#: What a save does not count as a change of content: the lock, the counter itself, the note.
_NOT_CONTENT = frozenset({"insync", "version", "note"})


class SubscriptionError(Exception):
    """Raised when a step puts a subscription into State that cannot be saved."""


class Saved(NamedTuple):
    """A subscription as it will be saved, and for a typed one its relations."""

    sub: dict[str, Any]
    #: Path -> id of every Ref it holds (None: untyped, or the same as before).
    relations: dict[str, str] | None
    #: The Refs that are new since the last save (path -> (id, product)): the engine checks
    #: that each names a subscription of that product that is not terminated.
    new_refs: dict[str, tuple[str, str]]


def complete_subscription(
    step: str,
    given: Any,
    new_id: str,
    previous: dict[str, Any] | None = None,
    products: Mapping[str, type[Product]] | None = None,
) -> Saved:
    """Check a subscription a step returned and fill in every field, as it will be saved.

    ``insync`` is always false here: the running process holds the subscription until its
    ``done`` step (or an abort) releases it. ``previous`` is the subscription as State held it
    before the step (None for a new one). ``products``: the product classes the engine knows
    (by default every registered one).
    """
    where = f"step {step!r}: subscription"
    if isinstance(given, Product):
        given = as_state(given)
    if not isinstance(given, dict):
        raise SubscriptionError(f"{where} must be an object")
    product = given.get("product") or (previous or {}).get("product")
    known = PRODUCTS if products is None else products
    cls = known.get(product) if isinstance(product, str) else None
    refs: dict[str, tuple[str, str]] = {}
    if cls is not None:
        sub, model, refs = _typed(where, cls, {**given, "product": product}, new_id)
    else:
        sub, model = _untyped(where, given, new_id), None
    before = previous if previous and previous.get("id") == sub["id"] else None
    sub["note"] = before.get("note") if before else None
    version = int(before.get("version") or 0) if before else 0
    sub["version"] = version if before and _same_content(before, sub) else version + 1
    if model is None or cls is None:
        return Saved(sub, None, {})
    old = _refs_before(cls, before)
    relations = {path: sid for path, (sid, _) in refs.items()}
    new_refs = {path: ref for path, ref in refs.items() if old.get(path) != ref[0]}
    unchanged = before is not None and old == relations
    return Saved(sub, None if unchanged else relations, new_refs)


def _typed(
    where: str, cls: type[Product], given: dict[str, Any], new_id: str
) -> tuple[dict[str, Any], Product, dict[str, tuple[str, str]]]:
    try:
        model = to_model(cls, given, where=where)
    except ProductError as exc:
        raise SubscriptionError(str(exc)) from None
    if not model.customer_id:
        raise SubscriptionError(f"{where} needs 'customer_id' (text)")
    missing = missing_at(model)
    if missing:
        raise SubscriptionError(
            f"{where} {', '.join(missing)}: required when the subscription is {model.status!r}"
        )
    sub = as_state(model)
    sub["id"] = _uuid(where, given.get("id") or new_id)
    sub["insync"] = False
    return sub, model, _refs(cls, sub["attributes"])


def _untyped(where: str, given: dict[str, Any], new_id: str) -> dict[str, Any]:
    unknown = set(given) - FIELDS
    if unknown:
        raise SubscriptionError(
            f"{where} has unknown field(s) {', '.join(sorted(unknown))} "
            "(product data belongs under 'attributes')"
        )
    for key in ("product", "customer_id"):
        if not isinstance(given.get(key), str) or not given[key]:
            raise SubscriptionError(f"{where} needs {key!r} (text)")
    status = given.get("status") or "initial"
    if status not in STATUSES:
        raise SubscriptionError(
            f"{where} status {status!r} is not one of {', '.join(sorted(STATUSES))}"
        )
    attributes = given.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise SubscriptionError(f"{where} attributes must be an object")
    for key in ("description", "start_date", "end_date"):
        if given.get(key) is not None and not isinstance(given[key], str):
            raise SubscriptionError(f"{where} {key} must be text")
    return {
        "id": _uuid(where, given.get("id") or new_id),
        "product": given["product"],
        "customer_id": given["customer_id"],
        "description": given.get("description") or "",
        "status": status,
        "insync": False,
        "start_date": given.get("start_date"),
        "end_date": given.get("end_date"),
        "attributes": attributes,
    }


def _uuid(where: str, sid: Any) -> str:
    try:
        return str(uuid.UUID(sid))
    except (TypeError, ValueError, AttributeError):
        raise SubscriptionError(f"{where} id {sid!r} is not a UUID") from None


def _same_content(before: dict[str, Any], after: dict[str, Any]) -> bool:
    keys = (set(before) | set(after)) - _NOT_CONTENT
    return all(before.get(k) == after.get(k) for k in keys)


def _refs_before(cls: type[Product], before: dict[str, Any] | None) -> dict[str, str]:
    """What the Refs of the subscription as saved before named (path -> id)."""
    if before is None:
        return {}
    return {path: sid for path, (sid, _) in _refs(cls, before.get("attributes")).items()}


#: The Refs of the attributes saved last, by the identity of the attributes object: the
#: next step of the same process finds them here (State keeps that very object) instead of
#: reading them again. Entries hold their object, so an id is never taken for another's.
_RECENT: dict[int, tuple[Any, dict[str, tuple[str, str]]]] = {}
_RECENT_MAX = 4096


def _refs(cls: type[Product], attributes: Any) -> dict[str, tuple[str, str]]:
    hit = _RECENT.get(id(attributes))
    if hit is not None and hit[0] is attributes:
        return hit[1]
    refs = refs_in(cls, attributes)
    if len(_RECENT) >= _RECENT_MAX:
        _RECENT.clear()
    _RECENT[id(attributes)] = (attributes, refs)
    return refs
