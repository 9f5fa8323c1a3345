"""Where a message for a process goes: to its actor on this node, or, in a cluster (README
"Scaling out"), to the node that owns the process.

Two small protocols keep the two sides apart: ``Local`` is what routing and a cluster's node
(``orchd.engine.cluster.Node``) need of this node's runtime (``orchd.engine.runtime``), and
``Remote`` is all that routing sees of the other nodes. Neither side knows the ``Engine``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from orchd.engine.messages import Message
from orchd.errors import OrchdError, ShuttingDown
from orchd.store.base import ProcessRow

log = logging.getLogger("orchd.engine.routing")


class Local(Protocol):
    """This node's runtime, as routing and a cluster's node see it."""

    @property
    def accepting(self) -> bool:
        """Whether it takes messages (False once the engine stops, or its actors did)."""
        ...

    def runs(self, pid: str) -> bool:
        """Whether an actor of the process runs on this node now."""
        ...

    async def ask_local(self, pid: str, message: Message) -> Any:
        """Hand ``message`` to this node's actor of ``pid`` and wait for its answer."""
        ...

    def post_local(self, pid: str, message: Message, row: ProcessRow | None = None) -> None:
        """Post to this node's actor of ``pid`` (nothing once it no longer accepts)."""
        ...

    def send(self, pid: str, message: Message) -> None:
        """Post without waiting for an answer, to whichever node owns the process."""
        ...

    def wake_waiters(self, pid: str) -> None:
        """The process is no longer active (seen in an event, maybe another node's)."""
        ...


class Remote(Protocol):
    """The other nodes of a cluster, as routing sees them."""

    async def owner(self, pid: str) -> str | None:
        """None when the process is ours now (or does not exist); else its live owner."""
        ...

    async def forward(self, owner: str, pid: str, message: Message) -> Any:
        """Mail ``message`` to the node that owns ``pid`` and answer (or raise) what it did."""
        ...


class Router:
    """Routes messages to processes; ``remote`` is None on a single node."""

    def __init__(self, local: Local, remote: Remote | None = None) -> None:
        self.local = local
        self.remote = remote
        self._sends: set[asyncio.Task[None]] = set()

    async def ask(self, pid: str, message: Message) -> Any:
        """Hand ``message`` to the process's actor, wherever it runs, and wait for its answer."""
        if not self.local.accepting:
            raise ShuttingDown("the engine is shutting down")
        if self.remote is not None and not self.local.runs(pid):
            # In a cluster the process may be another node's: claim it, or ask its owner.
            owner = await self.remote.owner(pid)
            if owner is not None:
                return await self.remote.forward(owner, pid, message)
        return await self.local.ask_local(pid, message)

    def send(self, pid: str, message: Message) -> None:
        """Post ``message`` without waiting for an answer; in a cluster, to whichever node
        owns the process (a timer, a cascade)."""
        if self.remote is None or self.local.runs(pid):
            self.local.post_local(pid, message)
            return

        async def route() -> None:
            try:
                await self.ask(pid, message)
            except OrchdError as exc:
                log.debug("process=%s %s not delivered: %s", pid, type(message).__name__, exc)

        task = asyncio.get_running_loop().create_task(route())
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def close(self) -> None:
        """Drop the messages still on their way to other nodes (the engine stops)."""
        for task in list(self._sends):
            task.cancel()
