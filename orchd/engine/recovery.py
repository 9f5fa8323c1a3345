"""What an engine continues, as it opens, of what a previous run left: active processes, the
cascades of aborted parents, retry and callback timers, and the position of processes from
before step keys."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from orchd.dsl import Workflow
from orchd.engine import messages
from orchd.model import ProcessStatus
from orchd.store.base import Positions, Store

if TYPE_CHECKING:
    from orchd.engine.runtime import Runtime

log = logging.getLogger("orchd.engine")


async def recover(runtime: Runtime) -> None:
    """Continue what a previous run left: active processes, retry and callback timers."""
    store = runtime.store
    await _place_unkeyed(store, runtime.workflows)
    for child, parent in await store.unfinished_children_of_aborted():
        # The parent's abort committed, the cascade to its children did not finish.
        runtime.send(child, messages.Abort(by=f"parent {parent}"))
    rows = await store.active_processes()
    for row in rows:
        runtime.post(row.id, messages.Run(), None, row=row)
    if rows:
        log.info("recovered %d active processes", len(rows))
    for timed in await store.timed_processes():
        if timed.status == ProcessStatus.WAITING:
            runtime.later(timed.id, timed.at, messages.Retry(automatic=True))
        elif timed.callback_token:
            runtime.later(timed.id, timed.at, messages.Expire(digest=timed.callback_token))
        else:
            # A fork's branch waits for a callback with a deadline (README "Parallel branches").
            runtime.later(timed.id, timed.at, messages.Retry(automatic=True))


async def _place_unkeyed(store: Store, workflows: Mapping[str, Workflow]) -> None:
    """Give processes from before step keys their position, once: the key and occurrence of
    the step at their index, when that step still has the name they recorded."""
    placed: list[tuple[int, str, int]] = []
    stranded = []
    for row in await store.unplaced_processes():
        wf = workflows.get(row.workflow)
        steps = wf.steps if wf is not None else ()
        if wf is not None and row.pc < len(steps) and steps[row.pc].name == row.current_step:
            placed.append((row.pk, *wf.positions.at(row.pc)))
        else:
            stranded.append(row.id)
    if placed:
        await store.write(Positions(rows=placed))
        log.info("placed %d processes from before step keys by their step's key", len(placed))
    if stranded:
        log.warning(
            "%d processes from before step keys stand at a step that changed; they fail "
            "when they go on: %s",
            len(stranded),
            ", ".join(stranded[:20]),
        )
