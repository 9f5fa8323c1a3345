"""Workflows of tests/test_step_rules.py: one rule of the step interpreter on the process line
and in a branch (a condition that raises)."""

from __future__ import annotations

from typing import Any

from orchd import State, begin, conditional, done, init, parallel, step, workflow


def _broken_condition(state: dict[str, Any]) -> bool:
    return bool(state["no such key"])  # raises KeyError


@step("guarded work")
async def guarded_work() -> State:
    return {"worked": True}


@step("other work")
async def other_work() -> State:
    return {"other": True}


@workflow("A condition that raises, on the process line")
def condition_raises_on_the_line():  # type: ignore[no-untyped-def]
    return init >> conditional(_broken_condition)(guarded_work) >> done


@workflow("A condition that raises, in a branch")
def condition_raises_in_a_branch():  # type: ignore[no-untyped-def]
    guarded = conditional(_broken_condition)(guarded_work)
    return init >> parallel("Both", guarded, begin >> other_work) >> done
