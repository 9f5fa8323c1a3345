"""The table of held slots that the nodes of a cluster share (README "Limits on shared resources").

One row per slot of a step's request: the limit and key, the process and step, the node that
runs it, and whether it holds the slot or waits for it; a request's number (from a sequence)
is its place in every queue it stands in. A transaction holds one advisory lock, so the engine
(``orchd.engine.limits``) reads the rows it needs, decides who goes with the same rule as a
node alone, and writes the grants before anyone else decides. SQLite needs none of this: one
node's limits live in its memory, and a SIGKILL frees them by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

import msgspec

__all__ = ["HasSlots", "SlotRow", "SlotTable", "SlotTx"]

Slot = tuple[str, str]


class SlotRow(msgspec.Struct, kw_only=True):
    """One slot of a request, held or waited for."""

    request: int
    resource: str
    key: str
    held: bool
    process_id: str
    step: str
    node: str | None
    #: When it began to wait, or to hold (the database's clock, epoch seconds).
    since: float
    #: Which life of its node wrote it (a node restarted with the same id is another life).
    incarnation: str | None = None


class SlotTx(Protocol):
    """One transaction on the table, under its lock."""

    #: The database's time when the transaction began (epoch seconds).
    now: float

    async def insert(self, requests: Sequence[tuple[str, str, tuple[Slot, ...]]]) -> list[int]:
        """Write new requests ``(process id, step, slots)``, waiting; answers their numbers."""
        ...

    async def delete(self, requests: Sequence[int]) -> list[Slot]:
        """Remove requests (released or abandoned); answers the slots they had."""
        ...

    async def delete_own(self) -> list[Slot]:
        """Remove every request of this node; answers their slots."""
        ...

    async def delete_dead(self) -> list[Slot]:
        """Remove the requests of nodes whose lease lapsed (and of this node id's previous
        lives); answers their slots."""
        ...

    async def held(self, requests: Sequence[int]) -> list[int]:
        """Which of these requests hold their slots."""
        ...

    async def rows(self, keys: Sequence[Slot]) -> list[SlotRow]:
        """Every row of these keys, in request order."""
        ...

    async def rows_of(self, requests: Sequence[int]) -> list[SlotRow]:
        """Every row of these requests."""
        ...

    async def rates(self, keys: Sequence[Slot]) -> dict[Slot, float]:
        """When the next start of each rated key may happen (only keys that have a time)."""
        ...

    async def grant(self, requests: Sequence[int]) -> None:
        """These requests hold their slots from now on."""
        ...

    async def set_rates(self, rates: dict[Slot, float]) -> None: ...

    async def notify(self, node: str, incarnation: str, requests: Sequence[int]) -> None:
        """Tell ``node`` in that life (at commit) that these requests of its were granted."""
        ...


class SlotTable(Protocol):
    """The table of slots of one node's store."""

    node_id: str
    #: This life of the node (its rows carry it).
    incarnation: str

    def transaction(self) -> AbstractAsyncContextManager[SlotTx]: ...

    def on_granted(self, callback: Callable[[list[int]], None]) -> None:
        """Call ``callback`` with the numbers another node granted of this node's requests."""
        ...

    async def blocked(self, pids: Sequence[str]) -> dict[str, tuple[str, str, float]]:
        """What each of these processes waits for, by any node: ``(limit, key, since)``."""
        ...

    async def rows(self) -> list[SlotRow]:
        """Every row (held or waiting) of the cluster."""
        ...


@runtime_checkable
class HasSlots(Protocol):
    """A store with a table of slots (several nodes share it)."""

    slots: SlotTable
