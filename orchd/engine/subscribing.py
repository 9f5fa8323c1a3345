"""A process's subscription (README "Products"): what a step put into State, checked and
completed before the step commits, and the subscription as a process's last step leaves it.

The actor asks these and keeps the answers (its subscription's id, once a step made one).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from orchd.dsl import Step
from orchd.engine.host import Host
from orchd.model import Target
from orchd.subscriptions import SubscriptionError, complete_subscription

_MISSING: Any = object()


async def changed(
    host: Host,
    step: Step,
    delta: dict[str, Any],
    state: dict[str, Any],
    own: str | None,
    target: Target,
) -> tuple[dict[str, Any] | None, dict[str, str] | None]:
    """Check and complete a subscription a step put into State (``delta``, which takes the
    completed one, and its id for a process that had none: ``own``), and for a typed one the
    relations to save with it; (None, None) if the step did not change it."""
    given = delta.get("subscription", _MISSING)
    if given is _MISSING or target is Target.SYSTEM:
        return None, None
    previous = state.get("subscription")
    saved = complete_subscription(
        step.name,
        given,
        own or host.new_id(),
        previous if isinstance(previous, dict) else None,
        host.product_classes,
    )
    full = saved.sub
    if own is not None and full["id"] != own:
        raise SubscriptionError(f"step {step.name!r}: a process cannot switch subscriptions")
    if saved.new_refs:
        await _check_refs(host, step.name, full["id"], saved.new_refs)
    delta["subscription"] = full
    if own is None:
        delta["subscription_id"] = full["id"]
    return full, saved.relations


async def _check_refs(host: Host, step: str, own: str, refs: dict[str, tuple[str, str]]) -> None:
    """Each new Ref names a subscription of its product that is not terminated."""
    for path, (sid, product) in refs.items():
        where = f"step {step!r}: subscription {path}"
        if sid == own:
            raise SubscriptionError(f"{where}: a subscription cannot depend on itself")
        found = await host.subscription_of(sid)
        if found is None:
            raise SubscriptionError(f"{where}: subscription {sid} does not exist")
        if found.product != product:
            raise SubscriptionError(
                f"{where}: subscription {sid} is a {found.product!r} subscription, not {product!r}"
            )
        if found.status == "terminated":
            raise SubscriptionError(f"{where}: subscription {sid} is terminated")


def at_done(state: dict[str, Any], own: str | None, target: Target) -> dict[str, Any] | None:
    """The process's own subscription as its last step saves it (in sync; terminated by a
    terminate workflow), or None when it has none."""
    sub = state.get("subscription")
    if target is Target.SYSTEM or not isinstance(sub, dict) or own is None or sub.get("id") != own:
        return None
    done = {**sub, "insync": True}
    if target is Target.TERMINATE:
        done["status"] = "terminated"
        done["end_date"] = datetime.now(UTC).isoformat()
        done["version"] = int(sub.get("version") or 0) + 1
    return done
