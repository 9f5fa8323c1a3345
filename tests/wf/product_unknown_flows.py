"""A workflow naming a product no loaded module registers: refused when the engine loads it."""

from __future__ import annotations

from orchd import Target, done, init, workflow


@workflow("Configure a router", target=Target.MODIFY, product="router")
def configure_router() -> object:
    return init >> done
