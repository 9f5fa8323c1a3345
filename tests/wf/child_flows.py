"""Parents and children (tests/test_children.py, README "Child processes").

A child's input says what it does: ``{"n": 3}`` doubles 3; ``"mode": "fail"`` raises,
``"mode": "hold"`` waits at the test's ``Gate`` resource, ``"fail_while_closed"`` raises
until it is open; ``"pause"`` seconds slow it down.
"""

from __future__ import annotations

import asyncio

from orchd import Form, State, Target, children, done, init, step, workflow
from orchd.testing import Gate


@step("work")
async def work(n: int, gate: Gate, mode: str = "ok", pause: float = 0.0) -> State:
    if pause:
        await asyncio.sleep(pause)
    if mode == "hold":
        await gate.passage()
    if mode == "fail" or (mode == "fail_while_closed" and not gate.is_open):
        raise RuntimeError(f"child {n} failed")
    return {"doubled": n * 2}


@workflow("A child: doubles n", target=Target.SYSTEM)
def child_task():  # type: ignore[no-untyped-def]
    return init >> work >> done


class Numbered(Form):
    n: int


@workflow("A child with a form", initial_input_form=Numbered, target=Target.CREATE)
def child_with_form():  # type: ignore[no-untyped-def]
    return init >> done


@step("report")
def report(results: list) -> State:  # type: ignore[type-arg]
    return {"total": sum(r["state"]["doubled"] for r in results)}


@workflow("Fans out to child_task", target=Target.SYSTEM)
def fan_out():  # type: ignore[no-untyped-def]
    fan = children("double them", workflow="child_task", inputs="inputs", into="results")
    return init >> fan >> report >> done


@workflow("Fans out two at a time", target=Target.SYSTEM)
def fan_out_limited():  # type: ignore[no-untyped-def]
    fan = children(
        "double them", workflow="child_task", inputs="inputs", into="results", max_concurrency=2
    )
    return init >> fan >> report >> done


@workflow("Fans out to a form", target=Target.SYSTEM)
def fan_out_to_a_form():  # type: ignore[no-untyped-def]
    return init >> children("make them", workflow="child_with_form", inputs="inputs") >> done


@workflow("Fans out to the workflow State names", target=Target.SYSTEM)
def fan_out_to_nowhere():  # type: ignore[no-untyped-def]
    return init >> children("make them", workflow="{child}", inputs="inputs") >> done


@workflow("A child that fans out itself", target=Target.SYSTEM)
def middle():  # type: ignore[no-untyped-def]
    fan = children("grandchildren", workflow="child_task", inputs="inputs", into="results")
    return init >> fan >> report >> done


@workflow("Fans out to parents", target=Target.SYSTEM)
def fan_out_twice():  # type: ignore[no-untyped-def]
    return init >> children("middles", workflow="middle", inputs="groups", into="results") >> done
