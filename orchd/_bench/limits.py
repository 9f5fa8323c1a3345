"""The P10 rows of ``orchd bench``: limits on shared resources (README "Limits on shared
resources").

P10: steps that name a limit with room for all of them, against the same steps without
``uses=``, taken in turns: what taking and giving back a slot costs a step.

P10r: ``router = 1`` over 100 routers, 2,000 processes of one step that holds its router for a
while: the time until all completed, against the ideal schedule (every router busy from the
first moment to the last, its changes back to back: 20 x the step's time).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

from orchd.dsl import State, StepList, step, workflow
from orchd.dsl import done as done_step
from orchd.dsl import init as init_step
from orchd.engine import Engine
from orchd.model import Target
from orchd.settings import LimitSpec

WORKFLOWS = "orchd._bench.limits"
#: A limit with room for every step of P10, and one change at a time per router (P10r).
LIMITS = {"room": LimitSpec(concurrency=1_000_000), "router": LimitSpec(concurrency=1)}


def _trivial(n: int, uses: list[str] | None) -> Any:
    @step(f"step {n}", uses=uses)
    async def trivial() -> State:
        return {f"k{n}": n}

    return trivial


def _eight(uses: list[str] | None) -> StepList:
    flow = StepList([init_step])
    for n in range(8):
        flow = flow >> _trivial(n, uses)
    return flow >> done_step


@workflow("Bench: eight trivial steps, each naming a limit with room for all", target=Target.SYSTEM)
def bench_limited_steps() -> StepList:
    return _eight(["room"])


@workflow("Bench: the same eight trivial steps, naming no limit", target=Target.SYSTEM)
def bench_unlimited_steps() -> StepList:
    return _eight(None)


@step("configure the router", uses=["router:{router}"])
async def _configure(hold: float) -> State:
    await asyncio.sleep(hold)
    return {"configured": True}


@workflow("Bench: one change to a router, one at a time per router", target=Target.SYSTEM)
def bench_router_change() -> StepList:
    return init_step >> _configure >> done_step


async def _until(engine: Engine, workflow: str, inputs: list[dict[str, Any]], steps: int) -> float:
    """Start one process per input at once; seconds until every step of every one committed."""
    target = len(inputs) * steps
    finished = asyncio.Event()
    after = engine.last_event_id

    async def watch() -> None:
        seen = 0
        async for event in engine.listen(after):
            seen += event.kind == "step"
            if seen >= target:
                finished.set()
                return

    watcher = asyncio.create_task(watch())
    started = time.perf_counter()
    await asyncio.gather(*(engine.start(workflow, given) for given in inputs))
    await finished.wait()
    elapsed = time.perf_counter() - started
    watcher.cancel()
    return elapsed


async def _steps_per_second(directory: str, workflow: str, processes: int) -> tuple[float, float]:
    """Steps per second of wall time, and per second of CPU (every thread's)."""
    db = os.path.join(directory, f"p10-{workflow}-{time.monotonic_ns()}.db")
    async with Engine(database=db, workflows=[WORKFLOWS], limits=LIMITS) as engine:
        cpu = time.process_time()
        elapsed = await _until(engine, workflow, [{} for _ in range(processes)], 10)
        cpu = time.process_time() - cpu
        if engine.stats().resources.get("room", (0, 0)) != (0, 0):
            raise RuntimeError("P10: slots still held after every process completed")
    return processes * 8 / elapsed, processes * 8 / cpu


def p10_overhead(directory: str, steps: int, runs: int) -> dict[str, float]:
    """Limited steps per second beside the same steps without ``uses=``, taken in turns
    (each pair's own ratio; the median of each), and the same per second of CPU."""
    processes = max(1, steps // 8)
    figures: dict[str, list[float]] = {k: [] for k in ("limited", "plain", "ratio", "cpu")}
    for _ in range(runs):
        limited, limited_cpu = asyncio.run(
            _steps_per_second(directory, "bench_limited_steps", processes)
        )
        plain, plain_cpu = asyncio.run(
            _steps_per_second(directory, "bench_unlimited_steps", processes)
        )
        figures["limited"].append(limited)
        figures["plain"].append(plain)
        figures["ratio"].append(limited / plain)
        figures["cpu"].append(limited_cpu / plain_cpu)
    return {
        "limited_per_s": statistics.median(figures["limited"]),
        "plain_per_s": statistics.median(figures["plain"]),
        "ratio": statistics.median(figures["ratio"]),
        "cpu_ratio": statistics.median(figures["cpu"]),
        "steps": processes * 8,
    }


async def _routers(directory: str, routers: int, processes: int, hold: float) -> float:
    db = os.path.join(directory, f"p10r-{time.monotonic_ns()}.db")
    async with Engine(database=db, workflows=[WORKFLOWS], limits=LIMITS) as engine:
        inputs = [{"router": f"r{i % routers}", "hold": hold} for i in range(processes)]
        return await _until(engine, "bench_router_change", inputs, 3)


def p10_routers(
    directory: str, routers: int, processes: int, hold: float, runs: int
) -> dict[str, float]:
    """Seconds until ``processes`` one-step changes over ``routers`` routers (one at a time
    per router, each holding it ``hold`` seconds) completed, and the ideal schedule's."""
    ideal = -(-processes // routers) * hold
    seconds = statistics.median(
        asyncio.run(_routers(directory, routers, processes, hold)) for _ in range(runs)
    )
    return {"seconds": seconds, "ideal": ideal, "ratio": seconds / ideal}
