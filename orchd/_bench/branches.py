"""The P9 rows of ``orchd bench``: a foreach inside one process (README "Parallel branches").

Throughput: one process whose foreach runs a branch of two trivial async steps per element,
``max_concurrency`` at once; every branch step is a durable commit like any other step, so the
figure is comparable with P1's steps per second in the same run.

Memory: one process whose foreach keeps every element's branch waiting in its step (a poll
that sleeps), measured in a fresh interpreter like P3's polling actors.
"""

from __future__ import annotations

import asyncio
import os
import time

from orchd._bench.fresh import in_fresh_interpreter, report
from orchd.dsl import Form, State, begin, done, foreach, init, step, workflow
from orchd.engine import Engine


def rss_mb() -> float:
    """Current resident set size (Linux /proc), in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Elements(Form):
    elements: list[int]
    limit: int = 1000


@step("touch")
async def _touch(item: int) -> State:
    return {"touched": item}


@step("confirm")
async def _confirm(touched: int) -> State:
    return {"confirmed": touched + 1}


@workflow("Bench: a foreach of two trivial async steps, 1,000 at once", Elements)
def bench_foreach():  # type: ignore[no-untyped-def]
    return (
        init
        >> foreach("each", "elements", begin >> _touch >> _confirm, max_concurrency=1000)
        >> done
    )


class Waiting:
    """How many branches are in their poll right now (the probe's resource)."""

    def __init__(self) -> None:
        self.count = 0


@step("poll")
async def _poll(waiting: Waiting) -> State:
    waiting.count += 1
    await asyncio.sleep(3600)
    return {}


@workflow("Bench: a foreach whose every branch waits in a poll", Elements)
def bench_foreach_waiting():  # type: ignore[no-untyped-def]
    return init >> foreach("each", "elements", begin >> _poll) >> done


WORKFLOWS = "orchd._bench.branches"


async def until_completed(engine: Engine, pid: str) -> None:
    while (await engine.store.statuses([pid]))[pid] not in ("completed", "failed"):  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def p9_throughput(directory: str, count: int) -> dict[str, float]:
    """Branch steps per second of a foreach over ``count`` elements, 1,000 at once."""
    db = os.path.join(directory, f"p9-{count}-{time.monotonic_ns()}.db")
    async with Engine(database=db, workflows=[WORKFLOWS]) as engine:
        started = time.perf_counter()
        pid = await engine.start("bench_foreach", {"elements": list(range(count))})
        await until_completed(engine, pid)
        elapsed = time.perf_counter() - started
        process = await engine.get(pid)
        if process.status != "completed":
            raise RuntimeError(f"P9: the foreach ended {process.status}: {process.error}")
        records = sum(1 for s in process.steps if s.branch is not None)
    if records != 2 * count:
        raise RuntimeError(f"P9: {records} branch step records, not {2 * count}")
    return {"steps_per_s": records / elapsed, "seconds": elapsed}


async def _probe(db: str, count: int) -> dict[str, float]:
    waiting = Waiting()
    async with Engine(
        database=db, workflows=[WORKFLOWS], resources={Waiting: waiting}, grace_period=0.1
    ) as engine:
        await asyncio.sleep(0.2)
        before = rss_mb()
        await engine.start("bench_foreach_waiting", {"elements": list(range(count))})
        while waiting.count < count:  # noqa: ASYNC110 - a benchmark may poll its own engine
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        per_branch = (rss_mb() - before) * 1024 / count
    return {"per_branch_kb": per_branch, "waiting": waiting.count}


def p9_memory(directory: str, count: int) -> dict[str, float]:
    """KiB of RSS per branch waiting in its step, in a fresh interpreter."""
    db = os.path.join(directory, f"p9-memory-{count}.db")
    return in_fresh_interpreter("--p9-probe", db, str(count))


def probe_main(db: str, count: str) -> int:
    return report(asyncio.run(_probe(db, int(count))))
