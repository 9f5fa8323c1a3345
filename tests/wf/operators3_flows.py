"""Forks whose branches wait or fail (tests/test_operators_round3.py, issue 30 item 2).

Steps are steered through the test's ``Flaky`` resource, not module globals.
"""

from __future__ import annotations

from typing import Any

from orchd import (
    Form,
    State,
    Target,
    begin,
    done,
    foreach,
    init,
    parallel,
    retrystep,
    step,
    workflow,
)


class Flaky:
    """Which items fail, and how often each retrystep call failed so far."""

    def __init__(self) -> None:
        #: Items whose ``touch item`` step raises while listed.
        self.failing: set[Any] = set()
        #: Items whose ``poll item`` retrystep fails this many more times.
        self.flaps: dict[Any, int] = {}

    def check(self, item: Any) -> None:
        if item in self.failing:
            raise RuntimeError(f"item {item} is failing")


class Items(Form):
    items: list[Any] = []


@step("touch item")
def touch_item(item: Any, flaky: Flaky) -> State:
    flaky.check(item)
    return {"touched": item}


@retrystep("poll item", max_attempts=5)
def poll_item(item: Any, flaky: Flaky) -> State:
    left = flaky.flaps.get(item, 0)
    if left:
        flaky.flaps[item] = left - 1
        raise RuntimeError(f"item {item} not ready")
    return {"polled": item}


@step("note")
def note() -> State:
    return {"noted": True}


@workflow("Touches every item", initial_input_form=Items)
def fan_touch():  # type: ignore[no-untyped-def]
    return init >> foreach("Touch items", "items", begin >> touch_item, into="touched") >> done


@workflow("Polls every item until it is ready", initial_input_form=Items)
def fan_poll():  # type: ignore[no-untyped-def]
    return init >> foreach("Poll items", "items", begin >> poll_item, into="polled") >> done


@workflow("A foreach inside a parallel branch", initial_input_form=Items)
def fan_nested():  # type: ignore[no-untyped-def]
    inner = foreach("Inner", "items", begin >> touch_item, into="touched")
    return init >> parallel("Outer", begin >> inner, begin >> note) >> done


@workflow("A task without a form", target=Target.SYSTEM)
def quiet_task():  # type: ignore[no-untyped-def]
    return init >> note >> done
