"""What a subscription in State must look like before the engine saves it (contract §3)."""

from __future__ import annotations

import uuid
from typing import Any

from orchd.model import SUBSCRIPTION_FIELDS, SubscriptionStatus

FIELDS = frozenset(SUBSCRIPTION_FIELDS)
STATUSES = frozenset(s.value for s in SubscriptionStatus)


class SubscriptionError(Exception):
    """Raised when a step puts a subscription into State that cannot be saved."""


def complete_subscription(step: str, given: Any, new_id: str) -> dict[str, Any]:
    """Check a subscription a step returned and fill in every field, as it will be saved.

    ``insync`` is always false here: the running process holds the subscription until its
    ``done`` step (or an abort) releases it.
    """
    where = f"step {step!r}: subscription"
    if not isinstance(given, dict):
        raise SubscriptionError(f"{where} must be an object")
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
    sid = given.get("id") or new_id
    try:
        sid = str(uuid.UUID(sid))
    except (TypeError, ValueError, AttributeError):
        raise SubscriptionError(f"{where} id {sid!r} is not a UUID") from None
    for key in ("description", "start_date", "end_date"):
        if given.get(key) is not None and not isinstance(given[key], str):
            raise SubscriptionError(f"{where} {key} must be text")
    return {
        "id": sid,
        "product": given["product"],
        "customer_id": given["customer_id"],
        "description": given.get("description") or "",
        "status": status,
        "insync": False,
        "start_date": given.get("start_date"),
        "end_date": given.get("end_date"),
        "attributes": attributes,
    }
