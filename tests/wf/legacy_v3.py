"""Another module's class for the product "legacy_node": an engine that loads this and
legacy_v2 has two classes for one product, which it refuses."""

from __future__ import annotations

from orchd import Product, State, Target, done, init, product, step, workflow


@product("legacy_node")
class OtherLegacyNode(Product):
    label: str = ""


@step("Look at the other legacy node")
def look(subscription: OtherLegacyNode) -> State:
    return {"label": subscription.label}


@workflow("Look at a legacy node, typed otherwise", target=Target.MODIFY, product=OtherLegacyNode)
def look_legacy() -> object:
    return init >> look >> done
