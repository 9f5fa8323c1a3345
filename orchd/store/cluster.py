"""What a store shared by several daemons (nodes) offers beyond ``Store``: leases and mail.

A node holds a lease, renewed by its heartbeat; it owns the processes it runs for as long as
its lease lasts. When a node dies its lease lapses and the others claim its unfinished processes
(row locks, never a consensus of our own). A request for a process another live node owns is
mailed to that node, which answers it. SQLite, one daemon per file, has none of this.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import msgspec

from orchd.model import NodeInfo
from orchd.store.base import ProcessRow

__all__ = ["Claim", "ClusterStore", "Mail", "NodeInfo", "Postman"]


class Claim(msgspec.Struct, kw_only=True):
    """Processes a node took: their rows, and how many came from a node whose lease lapsed."""

    rows: list[ProcessRow]
    taken_over: int = 0


class Mail(msgspec.Struct, kw_only=True):
    """A request mailed to this node for a process it owns."""

    id: int
    process_id: str
    body: bytes


#: Called with each request mailed to this node; answers the encoded reply.
Postman = Callable[[Mail], Awaitable[bytes]]


@runtime_checkable
class ClusterStore(Protocol):
    """The cluster operations of a store several nodes share."""

    node_id: str

    async def heartbeat(self, lease_timeout: float) -> float:
        """Renew this node's lease; answers the database time it lasts until."""
        ...

    async def live_nodes(self) -> list[NodeInfo]: ...

    async def claim_process(self, pid: str) -> str | None:
        """Make ``pid`` this node's if no other live node owns it (None: it is ours, or does
        not exist); else answer its owner."""
        ...

    async def owner_of(self, pid: str) -> str | None:
        """The node that owns ``pid`` now (None: no node, or no such process); claims nothing."""
        ...

    async def take_over(self, limit: int) -> Claim:
        """Claim created or running processes whose owner's lease lapsed (or that have none),
        skipping rows another node is claiming at the same moment."""
        ...

    async def overdue(self, grace: float) -> list[tuple[str, str, str | None]]:
        """Waiting processes whose retry, and callback waits whose deadline, passed ``grace``
        seconds ago and whose owner is not alive: ``(id, status, callback digest)``."""
        ...

    async def mail(self, to_node: str, pid: str, body: bytes, patience: float) -> bytes | None:
        """Send a request to ``to_node`` and wait for its answer (None: no answer in time)."""
        ...

    def on_mail(self, postman: Postman) -> None:
        """Serve requests mailed to this node with ``postman``."""
        ...

    def counters(self) -> dict[str, int]:
        """Lease and takeover counters, for metrics."""
        ...

    async def leave(self) -> None:
        """Give up this node's leases now (a clean stop): others take over at once."""
        ...
