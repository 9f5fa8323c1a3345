"""Steps shared by the versions of a forking workflow (tests/test_branch_identity.py)."""

from __future__ import annotations

import os

from orchd import State, step


@step("reserve")
async def reserve(item: int) -> State:
    return {"reserved": item}


@step("apply")
def apply(item: int, reserved: int, fail_item: int = -1, fail_file: str = "") -> State:
    if item == fail_item and os.path.exists(fail_file):
        raise RuntimeError("apply refused")
    return {"applied": reserved * 2}


@step("apply (renamed)", key="apply")
async def apply_renamed(item: int, reserved: int) -> State:
    return {"applied": reserved * 3}


@step("confirm")
async def confirm(item: int) -> State:
    return {"confirmed": item}
