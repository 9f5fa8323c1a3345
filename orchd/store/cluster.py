"""What a store shared by several daemons (nodes) offers beyond ``Store``: leases and mail.

A node holds a lease, renewed by its heartbeat; it owns the processes it runs for as long as
its lease lasts. When a node dies its lease lapses and the others claim its unfinished processes
(row locks, never a consensus of our own). A request for a process another live node owns is
mailed to that node, which answers it. SQLite, one daemon per file, has none of this.

The lease is renewed by a thread of the store's own (``Lease``), not by the event loop that runs
``async def`` steps: a step that blocks the loop cannot stop the renewal unnoticed. The keeper
renews on behalf of a loop that answers: a loop silent for ``lease_timeout`` lets the lease
lapse, and the node then knows it lost its lease (``Lease.lost``) before it starts anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import msgspec

from orchd.model import NodeInfo
from orchd.store.base import ProcessRow

__all__ = ["Claim", "ClusterStore", "Lease", "Mail", "NodeInfo", "Postman"]


class Lease(Protocol):
    """This node's lease as its keeper thread last renewed it (read on the loop, written by
    the thread: each attribute is one value, replaced whole)."""

    #: ``time.monotonic()`` by which the lease may have lapsed: measured from before the
    #: renewal was sent, so the database's lease lasts at least as long.
    held_until: float
    #: When it lapses on the database's clock (epoch seconds), for metrics and health.
    until: float
    #: Why the lease is lost (the database refused to renew it); None while it holds. A lost
    #: lease is never renewed: the node rejoins as a new incarnation (``ClusterStore.rejoin``).
    lost: str | None

    async def stop(self) -> None:
        """Renew no more (a clean stop gives the lease up; otherwise it lapses)."""
        ...


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

    def keep_lease(self, told: Callable[[], None]) -> Lease:
        """Renew this node's lease from now on, in a thread with a connection of its own;
        ``told`` is called on the event loop after each renewal and when the lease is lost."""
        ...

    async def rejoin(self) -> None:
        """Enter again as a new incarnation of this node id (after the lease was lost),
        waiting while another live incarnation holds it; the keeper renews the new lease.
        Writes of the old incarnation are refused from then on."""
        ...

    async def active_processes(self) -> list[ProcessRow]:
        """The created or running processes of this node id, and those of dead nodes (claimed
        now): what this node runs when it starts or rejoins."""
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
        """Stop renewing and give up this node's lease now (a clean stop): others take over
        at once."""
        ...
