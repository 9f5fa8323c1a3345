"""Parents and children in a daemon subprocess (tests/test_children_daemon.py)."""

from __future__ import annotations

import asyncio

from runfiles import record_run

from orchd import State, Target, children, done, init, step, workflow


@step("work")
async def work(process_id: str, n: int, pause: float = 0.0) -> State:
    await asyncio.sleep(pause)
    record_run(process_id, "work")
    return {"doubled": n * 2}


@workflow("A child: doubles n", target=Target.SYSTEM)
def child_job():  # type: ignore[no-untyped-def]
    return init >> work >> done


@step("report")
def report(process_id: str, results: list) -> State:  # type: ignore[type-arg]
    record_run(process_id, "report")
    return {"total": sum(r["state"]["doubled"] for r in results)}


@workflow("Fans out five at a time", target=Target.SYSTEM)
def fan_out():  # type: ignore[no-untyped-def]
    fan = children(
        "double them", workflow="child_job", inputs="inputs", into="results", max_concurrency=5
    )
    return init >> fan >> report >> done
