"""The P8 crash row of ``orchd bench``: one parent fanning out to children, its engine process
SIGKILLed once half of the children have completed, then a new engine on the same database.

It shows what the fan-out promises under a crash, not only how fast it is: the parent completes
after the restart, with exactly ``count`` children, every one completed, each once. The time
is counted from the start in the first engine process to the parent's completion in the
second (process start-up, the kill and the recovery included).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from orchd.engine import Engine

#: The module whose ``bench_fan_out`` and ``bench_child`` workflows both engines load.
WORKFLOWS = "orchd._bench.run"


async def _first_engine(db: str, count: int) -> None:
    """Start the fan-out, say ``half`` once half of the children have completed, then wait
    to be killed."""
    async with Engine(database=db, workflows=[WORKFLOWS]) as engine:
        pid = await engine.start("bench_fan_out", {"inputs": [{} for _ in range(count)]})
        print(pid, flush=True)
        # Polled: a listener of this many children's events would overflow its buffer. Only
        # children complete here (the parent waits for all of them).
        while (await engine.store.counts()).get("completed", 0) < count // 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        print("half", flush=True)
        await asyncio.sleep(3600)


async def until_completed(engine: Engine, pid: str) -> None:
    """Return once the process ``pid`` has completed. Polled, cheaply (one row's status): a
    fan-out's children announce more events than a listener is let to buffer."""
    while (await engine.store.statuses([pid]))[pid] != "completed":  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def _second_engine(db: str, pid: str) -> dict[str, float]:
    """Recover, and return once the parent has completed: how long that took, and what the
    children are."""
    started = time.perf_counter()
    async with Engine(database=db, workflows=[WORKFLOWS]) as engine:
        await until_completed(engine, pid)
        recovered = time.perf_counter() - started
        kids = await engine.store.children(pid)
    return {
        "recovered_s": recovered,
        "children": len(kids),
        "distinct": len({k.child_index for k in kids}),
        "completed": sum(k.status == "completed" for k in kids),
    }


def fan_out_with_a_kill(directory: str, count: int) -> dict[str, float]:
    """SIGKILL the engine halfway through a fan-out of ``count`` children; restart; measure."""
    db = os.path.join(directory, f"p8k-{count}.db")
    started = time.perf_counter()
    first = subprocess.Popen(
        [sys.executable, "-m", "orchd._bench.run", "--p8-child", db, str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert first.stdout is not None
    pid = first.stdout.readline().strip()
    half = first.stdout.readline().strip()
    first.send_signal(signal.SIGKILL)
    first.communicate()
    if not pid or half != "half":
        raise RuntimeError("P8k: the first engine did not get halfway through the fan-out")
    result = asyncio.run(_second_engine(db, pid))
    if not result["children"] == result["distinct"] == result["completed"] == count:
        raise RuntimeError(f"P8k: after the restart the children are {result}, not {count}")
    return {**result, "total_s": time.perf_counter() - started}


def child_main(argv: list[str]) -> int:
    asyncio.run(_first_engine(argv[0], int(argv[1])))
    return 0
