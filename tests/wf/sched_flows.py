"""Tasks the scheduler tests run: a quick one, a slow one held by a gate, and a non-task."""

from __future__ import annotations

from orchd import Target, done, init, step, workflow
from orchd.testing import Gate


@step("tick")
def tick(state: dict[str, object]) -> dict[str, object]:
    return {"ticked": True, "seen_input": state.get("label")}


@step("hold")
async def hold(gate: Gate) -> None:
    await gate.passage()


@workflow("a task that finishes at once", target=Target.SYSTEM)
def quick_task():  # type: ignore[no-untyped-def]
    return init >> tick >> done


@workflow("a task that waits for the test's gate", target=Target.SYSTEM)
def slow_task():  # type: ignore[no-untyped-def]
    return init >> hold >> done


@workflow("not a task: it creates a subscription")
def create_thing():  # type: ignore[no-untyped-def]
    return init >> tick >> done
