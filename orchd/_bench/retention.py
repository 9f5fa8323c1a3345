"""The retention row of ``orchd bench``: the database's size under a 10 s schedule, with
retention and without, measured in the same run.

Days are simulated, nothing else: each simulated day runs its 8,640 real processes of a
three-step task through the engine (real checkpoints, events and actions), then retention
deletes, through the engine's own pruning, what finished more than ``KEEP_DAYS`` simulated days
before. The cutoff is the real time at which that earlier day's runs had finished.
"""

from __future__ import annotations

import asyncio
import os
import time

from orchd.dsl import State, done, init, step, workflow
from orchd.engine import Engine
from orchd.model import Target
from orchd.settings import Duration, RetentionSettings
from orchd.store.base import Retention

#: Runs a day of a schedule every 10 s.
PER_DAY = 8640
#: ``[retention] tasks = "7d"``, the default.
KEEP_DAYS = 7


@step("tick")
async def _tick() -> State:
    return {"ticked": True}


@workflow("A scheduled task, for the retention benchmark", target=Target.SYSTEM)
def bench_tick():  # type: ignore[no-untyped-def]
    return init >> _tick >> done


async def _one_day(engine: Engine, per_day: int) -> None:
    # In waves, as a schedule would spread them; a wave's processes finish together.
    wave = min(per_day, 960)
    for _ in range(per_day // wave):
        pids = await asyncio.gather(*(engine.start("bench_tick") for _ in range(wave)))
        for pid in pids:
            await engine.wait(pid)


async def _simulate(path: str, days: int, keep: bool, per_day: int) -> int:
    """The processes kept after ``days`` simulated days."""
    # Tasks kept for ever ("0"): the simulation prunes them itself, by its simulated days.
    forever = RetentionSettings(tasks=Duration(0))
    engine = Engine(database=path, workflows=["orchd._bench.retention"], retention=forever)
    await engine.open()
    ends: list[float] = []
    kept = 0
    try:
        for day in range(days):
            await _one_day(engine, per_day)
            ends.append(time.time())
            if keep and day >= KEEP_DAYS:
                cutoff = Retention(tasks_before=ends[day - KEEP_DAYS], workflows_before=None)
                await engine.gc(retention=cutoff)
        kept = sum((await engine.counts()).values())
    finally:
        await engine.close()
    return kept


def _size(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


def database_size(directory: str, days: int, per_day: int = PER_DAY) -> dict[str, float]:
    """The database's size after ``days`` simulated days of ``per_day`` runs, with and
    without retention."""
    kept, dropped = os.path.join(directory, "r1.db"), os.path.join(directory, "r0.db")
    with_kept = asyncio.run(_simulate(kept, days, True, per_day))
    without_kept = asyncio.run(_simulate(dropped, days, False, per_day))
    with_size = os.path.getsize(kept) + _size(f"{kept}-wal")
    without_size = os.path.getsize(dropped) + _size(f"{dropped}-wal")
    return {
        "with_mb": with_size / 2**20,
        "with_kept": with_kept,
        "without_mb": without_size / 2**20,
        "without_kept": without_kept,
    }
