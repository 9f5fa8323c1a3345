"""Steps that go wrong in ways workflow code really does (tests/test_step_failures.py)."""

from __future__ import annotations

import asyncio
import math

from orchd import State, Target, done, init, step, workflow


@step("raise CancelledError")
async def raise_cancelled() -> State:
    # e.g. code that cancels a task it awaits and lets the cancellation escape
    raise asyncio.CancelledError()


@workflow("A step raises CancelledError itself", target=Target.SYSTEM)
def cancels_itself():  # type: ignore[no-untyped-def]
    return init >> raise_cancelled >> done


@step("return NaN")
def return_nan() -> State:
    return {"ratio": {"values": [1.0, math.nan]}}


@workflow("A step returns NaN", target=Target.SYSTEM)
def returns_nan():  # type: ignore[no-untyped-def]
    return init >> return_nan >> done


@step("return infinity")
def return_infinity() -> State:
    return {"limit": -math.inf}


@workflow("A step returns -Infinity", target=Target.SYSTEM)
def returns_infinity():  # type: ignore[no-untyped-def]
    return init >> return_infinity >> done


@step("return null")
def return_null() -> State:
    return {"nothing": None, "ratio": 0.5}


@workflow("A step returns a null beside a float", target=Target.SYSTEM)
def returns_null():  # type: ignore[no-untyped-def]
    return init >> return_null >> done
