"""Workflows the daemon's end-to-end tests run in a real ``orchd serve`` subprocess.

The subprocess cannot share memory with the test, so steps report through files in
``$ORCHD_TEST_DIR``: ``<process id>.<step>.runs`` gets one line per run of a step.
"""

from __future__ import annotations

import asyncio
import logging
import time

from runfiles import record_run
from shared_steps import tick

from orchd import State, Target, done, init, step, workflow

log = logging.getLogger("daemon_flows")


@step("hello")
def hello(state: State) -> State:
    log.debug("saying hello process=%s", state["process_id"])
    return {"greeting": f"hello {state.get('name', 'world')}"}


@workflow("Say hello", target=Target.SYSTEM)
def quick():  # type: ignore[no-untyped-def]
    return init >> hello >> done


@step("nap")
async def nap(process_id: str, seconds: float = 1.0) -> State:
    # Only the first run sleeps, so a run interrupted by a crash finishes fast after a restart.
    if record_run(process_id, "nap") == 0:
        await asyncio.sleep(seconds)
    return {"napped": seconds}


@step("after nap")
def after_nap(napped: float) -> State:
    return {"awake": True}


@workflow("Sleep in a step", target=Target.SYSTEM)
def slow():  # type: ignore[no-untyped-def]
    return init >> nap >> after_nap >> done


@step("sync nap")
def sync_nap(process_id: str, seconds: float = 1.0) -> State:
    # A plain function runs in a worker thread, which nothing can interrupt.
    if record_run(process_id, "sync nap") == 0:
        time.sleep(seconds)
    return {"napped": seconds}


@workflow("Sleep in a thread", target=Target.SYSTEM)
def slow_sync():  # type: ignore[no-untyped-def]
    return init >> sync_nap >> done


@workflow("A task to schedule", target=Target.SYSTEM)
def nightly():  # type: ignore[no-untyped-def]
    return init >> tick >> done


@workflow("Not a task: cannot be scheduled")
def create_thing():  # type: ignore[no-untyped-def]
    return init >> hello >> done
