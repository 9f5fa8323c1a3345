"""A product whose block refers to a class that is not a registered product: refused when the
module is imported."""

from __future__ import annotations

from orchd import Block, Product, Ref, Target, done, init, product, workflow


class Loose(Product):
    pass


class Holder(Block):
    other: Ref[Loose]


@product("dangling")
class Dangling(Product):
    holder: Holder


@workflow("Never loads", target=Target.MODIFY, product=Dangling)
def never() -> object:
    return init >> done
