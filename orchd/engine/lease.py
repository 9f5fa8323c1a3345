"""Whether this node may start work now: the gate in front of every step (README "Scaling out").

In a cluster a node starts a step only while its lease holds by a margin: a step started just
before the lease lapses could run beside the same step on the node that takes the process over.
Within the margin the actor waits for the next renewal; once the lease is lost it starts nothing
more (``LeaseLost``), and the node rejoins (``orchd.engine.cluster``).

When the lease is lost, the gate also drops the actors that passed it (``Gate.drop``): their
state may be stale by then (another node may have taken their processes over), so they are
cancelled, and one that outlives that is refused at the gate for good. What they still commit
is refused by the database anyway (the fence is on the node's incarnation). A single daemon
(SQLite) has no gate: ``gate`` answers None at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from typing import Any

from orchd.errors import LeaseLost
from orchd.store.cluster import Lease

log = logging.getLogger("orchd.engine.lease")

#: The gate of each engine that is a node of a cluster (by the engine, the actors' host).
_gates: weakref.WeakKeyDictionary[object, Gate] = weakref.WeakKeyDictionary()


def gate(host: object) -> Gate | None:
    """The gate of the engine ``host`` (None when it is no node of a cluster): a step, branch
    or children start once its ``admit`` returns (``orchd.engine.interpreter.begin``)."""
    # No cluster in this process: not even a look-up per step.
    return _gates.get(host) if _gates else None


class Gate:
    """Open while the lease holds by ``margin`` seconds, on this machine's monotonic clock."""

    def __init__(self, host: object, lease: Lease, margin: float) -> None:
        self.lease = lease
        self.margin = margin
        #: Why the node lost its lease, until it rejoined (None: not lost).
        self.lost: str | None = None
        #: Goes up each time the lease is lost: an actor's task that passed the gate in an
        #: earlier generation never passes again.
        self.generation = 0
        self._passed: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = (
            weakref.WeakKeyDictionary()
        )
        #: Actors waiting at the gate now (for the renewal, or to be told the lease is lost).
        self.waiting = 0
        self._changed = asyncio.Event()
        _gates[host] = self

    def close(self, host: object) -> None:
        if _gates.get(host) is self:
            del _gates[host]

    @property
    def open(self) -> bool:
        return self.lost is None and time.monotonic() < self.lease.held_until - self.margin

    def changed(self) -> None:
        """The lease was renewed or lost (or the node rejoined): waiters look again."""
        self._changed.set()

    async def admit(self) -> None:
        task = asyncio.current_task()
        if task is not None and self._passed.setdefault(task, self.generation) != self.generation:
            raise LeaseLost("this process's actor ran before this node lost its lease")
        while not self.open:
            if self.lost is not None:
                raise LeaseLost(f"this node lost its lease ({self.lost}); it starts nothing")
            self._changed.clear()
            self.waiting += 1
            try:
                # The keeper tells of each renewal; look again now and then regardless.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.margin):
                        await self._changed.wait()
            finally:
                self.waiting -= 1

    async def drop(self) -> None:
        """The lease is lost: cancel the actors that started work under it, and wait until
        they have stopped (their processes go on from their last commit)."""
        self.generation += 1
        tasks = [t for t in self._passed if not t.done() and t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            # A step that swallows its cancellation must not keep the node from rejoining; its
            # actor is refused at the gate when it comes back.
            _, left = await asyncio.wait(tasks, timeout=max(1.0, 4 * self.margin))
            if left:
                log.warning("%d actors did not stop when the lease was lost", len(left))
