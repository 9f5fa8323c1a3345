"""Retention (README "Operations"): which finished processes may be deleted now, and deleting
them a batch at a time."""

from __future__ import annotations

import asyncio
import logging

from orchd.settings import RetentionSettings
from orchd.store.base import Prune, Pruned, Retention, Store

log = logging.getLogger("orchd.engine")
#: Processes deleted per write when pruning: each write stays a few milliseconds long.
PRUNE_BATCH = 200


def retention_at(kept: RetentionSettings, now: float) -> Retention:
    """Which finished processes ``kept`` lets go at ``now``."""
    return Retention(  # "0" keeps for ever
        tasks_before=now - kept.tasks if kept.tasks else None,
        workflows_before=now - kept.workflows if kept.workflows else None,
    )


async def prune(store: Store, retention: Retention, batch: int) -> Pruned:
    """Delete what ``retention`` lets go, ``batch`` processes per write (each its own short
    write, so checkpoints in between wait little)."""
    total = Pruned()
    while True:
        done = await store.write(Prune(retention=retention, limit=batch))
        total += done
        if done.processes < batch:
            break
        await asyncio.sleep(0)  # let what queued meanwhile go first
    if total.processes:
        log.info(
            "pruned processes=%d steps=%d actions=%d",
            total.processes,
            total.steps,
            total.actions,
        )
    return total
