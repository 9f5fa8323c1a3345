"""Subscriptions for workflow tests: ``await subscription(engine, Node(...))`` saves one the
way a CREATE workflow would (checked against its product, its Refs recorded, insync at the
end), so a test of a MODIFY or a TERMINATE starts from the subscriptions it needs.

The engines of ``workflow_engine`` have the small CREATE workflow this runs
(``orchd_testing_subscription``); an engine of your own needs it among its workflows
(``orchd.testing.subscriptions.SAVE``).
"""

from __future__ import annotations

from typing import Any

from orchd.dsl import State, Workflow, done, init, step, workflow
from orchd.engine import Engine
from orchd.model import SubscriptionDetail
from orchd.products import Product, as_state


@step("Save the subscription the test gives")
def _save(given: dict[str, Any]) -> State:
    return {"subscription": given}


@workflow("orchd.testing: save a subscription a test gives")
def orchd_testing_subscription() -> Any:
    return init >> _save >> done


#: The workflow ``subscription`` runs.
SAVE: Workflow = orchd_testing_subscription


async def subscription(engine: Engine, given: Product | dict[str, Any]) -> SubscriptionDetail:
    """Save ``given`` (a product's model, or a subscription dict as State holds one) and answer
    it as ``GET /api/subscriptions/{id}`` shows it; raises AssertionError, with the reason,
    when the save is refused (a field its status requires, a Ref to nothing, ...)."""
    body = as_state(given) if isinstance(given, Product) else dict(given)
    pid = await engine.start(SAVE.name, {"given": body}, reporter="orchd.testing")
    process = await engine.wait(pid)
    if process.status != "completed":
        raise AssertionError(f"the subscription was not saved: {process.error}")
    return await engine.get_subscription(str(process.state["subscription_id"]))
