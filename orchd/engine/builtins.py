"""What every engine has without loading it: the ``Subscriptions`` reader steps (and forms) ask
for by annotation, and the built-in task ``validate_subscriptions``.

``validate_subscriptions`` takes ``{"product": "..."}`` and runs that product's VALIDATE
workflow as a child process for every ``active`` subscription of the product that is insync
(one not insync is held by a process already, or drifted at its last validation). The task
ends when every validation has ended; a failed one keeps it waiting, as any failed child does,
until an operator retries or aborts it.
"""

from __future__ import annotations

from typing import Any

from orchd.dsl import Form, State, Workflow, children, done, init, step
from orchd.engine.catalog import Catalog
from orchd.model import MAX_PAGE, Subscription, Target
from orchd.pages import Choice, Choices
from orchd.store.base import Store

#: The name of the built-in task; a loaded workflow of that name takes its place.
VALIDATE_TASK = "validate_subscriptions"
#: The most subscriptions a choices field offers.
MAX_CHOICES = 1000
#: How many validations of one run go at once.
VALIDATIONS_AT_ONCE = 20


class Subscriptions:
    """What workflow code may read of the subscriptions: a step or a form asks for it with a
    parameter annotated ``Subscriptions``."""

    def __init__(self, store: Store, catalog: Catalog) -> None:
        self._store = store
        self._catalog = catalog

    async def get(self, sid: str) -> Subscription | None:
        """The subscription as committed, or None."""
        return await self._store.subscription(sid)

    async def find(
        self,
        *,
        product: str | None = None,
        status: str | None = None,
        insync: bool | None = None,
        q: str | None = None,
    ) -> list[Subscription]:
        """Every subscription that matches, oldest first."""
        filters = {k: v for k, v in (("product", product), ("status", status)) if v is not None}
        found: list[Subscription] = []
        cursor: int | None = None
        while True:
            page, cursor = await self._store.subscription_page(filters, MAX_PAGE, cursor, q)
            found.extend(s for s in page if insync is None or s.insync == insync)
            if cursor is None:
                break
        found.reverse()
        return found

    async def in_use(self, sid: str) -> bool:
        """Whether a subscription that is not terminated depends on this one."""
        _, users = await self._store.relations(sid)
        return any(u.status != "terminated" for u in users)

    async def choices(self, marker: Choices) -> list[Choice]:
        """What a ``choices(...)`` field offers now (at most ``MAX_CHOICES``)."""
        rows = await self._store.subscription_choices(
            marker.product, marker.statuses, marker.unused, MAX_CHOICES
        )
        return [Choice(id=sid, title=title or sid) for sid, title in rows]

    def validate_workflow(self, product: str) -> str | None:
        """The name of the product's VALIDATE workflow, if it has one."""
        for wf in self._catalog.workflows.get(product, []):
            if wf.target is Target.VALIDATE:
                return wf.name
        return None


class ValidateSubscriptions(Form):
    """The input of ``validate_subscriptions``: the product whose subscriptions to validate."""

    product: str


@step("Pick the subscriptions to validate")
async def pick_subscriptions(product: str, subscriptions: Subscriptions) -> State:
    workflow = subscriptions.validate_workflow(product)
    if workflow is None:
        raise ValueError(f"product {product!r} has no VALIDATE workflow among the loaded workflows")
    found = await subscriptions.find(product=product, status="active", insync=True)
    validations: list[dict[str, Any]] = [{"subscription_id": s.id} for s in found]
    return {"validate_workflow": workflow, "validations": validations}


validate_subscriptions = Workflow(
    name=VALIDATE_TASK,
    description="Validate every active, insync subscription of a product against the outside "
    "world (the product's VALIDATE workflow, one child process each)",
    target=Target.SYSTEM,
    steps=tuple(
        init
        >> pick_subscriptions
        >> children(
            "Validate each subscription",
            workflow="{validate_workflow}",
            inputs="validations",
            max_concurrency=VALIDATIONS_AT_ONCE,
        )
        >> done
    ),
    form=ValidateSubscriptions,
    module=__name__,
)
