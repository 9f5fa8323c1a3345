"""A product saved before it had a class: an untyped "legacy_node" subscription."""

from __future__ import annotations

from orchd import State, done, init, step, workflow


@step("Save an untyped legacy node")
def save_legacy() -> State:
    sub = {"product": "legacy_node", "customer_id": "acme", "status": "active",
           "attributes": {"name": "old-1"}}  # fmt: skip
    return {"subscription": sub}


@workflow("Create a legacy node, untyped")
def create_legacy() -> object:
    return init >> save_legacy >> done
