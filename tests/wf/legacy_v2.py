"""The same product once it has a class, which requires a field the saved one lacks."""

from __future__ import annotations

from typing import Annotated

from orchd import Product, State, Target, done, init, product, required, step, workflow


@product("legacy_node")
class LegacyNode(Product):
    name: str
    site: Annotated[str | None, required("active")] = None


@step("Touch the legacy node")
def touch(subscription: LegacyNode) -> State:
    return {"touched": subscription.name}


@workflow("Touch a legacy node, typed", target=Target.MODIFY, product=LegacyNode)
def touch_legacy() -> object:
    return init >> touch >> done
