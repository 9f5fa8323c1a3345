"""The keeper of a node's lease: a thread with its own event loop and its own connection.

The node's event loop also runs ``async def`` steps, and a step may block it (a ``time.sleep``,
a long computation). A heartbeat on that loop would then stop unnoticed, another node would take
the processes over while the blocked step still runs, and the node would learn it only when a
commit came back refused. Here the renewal runs beside the loop, and asks the loop for a sign of
life first (a callback the loop runs): it extends the lease to at most ``lease_timeout`` after the
loop last answered. A loop that is merely busy keeps the lease; one blocked for a whole
``lease_timeout`` lets it lapse, as a dead node's does, so its processes go on elsewhere.

A lease is renewed only while it holds on the database's clock (``lease_until > now``): one that
lapsed, even for a moment, is never revived, since others may have taken processes over
meanwhile. The keeper then says the lease is lost and stops; the node drops what it runs and
rejoins as a new incarnation (README "Scaling out").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

import asyncpg

from orchd.store.postgres import codecs
from orchd.store.postgres.nodes import NOW, seconds, seconds_until

log = logging.getLogger("orchd.store.nodes")

#: Renew a lease still held by this incarnation; never one that lapsed, never shorten it.
_RENEW = f"""UPDATE nodes SET heartbeat_at = {NOW},
        lease_until = GREATEST(lease_until, {NOW} + {seconds("$3")})
    WHERE node_id = $1 AND incarnation = $2 AND lease_until > {NOW}
    RETURNING lease_until"""
#: Why a renewal was refused.
_WHY = f"SELECT incarnation, {seconds_until('lease_until')} FROM nodes WHERE node_id = $1"

_TROUBLE = (asyncpg.PostgresError, OSError, asyncpg.InterfaceError, TimeoutError)


class LeaseKeeper:
    """Renews one incarnation's lease every ``lease_timeout / 3`` (``orchd.store.cluster.Lease``).

    ``held_until``, ``until`` and ``lost`` are written by the thread and read on the loop;
    ``told`` runs on the loop after each change.
    """

    def __init__(
        self,
        url: str,
        node: str,
        incarnation: str,
        lease_timeout: float,
        *,
        held_until: float,
        until: float,
        told: Callable[[], None],
    ) -> None:
        self.url = url
        self.node = node
        self.incarnation = incarnation
        self.lease_timeout = lease_timeout
        self.held_until = held_until
        self.until = until
        self.lost: str | None = None
        self.renewals = 0
        self.failures = 0
        #: Called on the node's loop after each renewal and when the lease is lost.
        self.told = told
        self._loop = asyncio.get_running_loop()
        #: When the node's loop last ran a probe (``time.monotonic()``).
        self._seen = time.monotonic()
        self._answered = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"orchd lease {node}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        """Renew no more (the lease then lapses unless given up); returns once the thread
        has closed its connection."""
        self._stopping.set()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    # -- on the node's loop ---------------------------------------------------------------

    def _answer(self) -> None:
        self._seen = time.monotonic()
        self._answered.set()

    def _tell(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody to tell
            self._loop.call_soon_threadsafe(self.told)

    # -- in the keeper's thread -----------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        conn: asyncpg.Connection | None = None
        every = self.lease_timeout / 3
        due = time.monotonic() + every
        try:
            while not self._stopping.wait(max(0.0, due - time.monotonic())):
                self._probe(every)
                began = time.monotonic()
                conn, renewed = loop.run_until_complete(self._renew(conn, every))
                if self.lost is not None:
                    return
                # A renewal that failed is tried again soon, not a whole period later: the
                # lease may still be saved before it lapses.
                due = began + every if renewed else time.monotonic() + min(0.5, every / 4)
        finally:
            if conn is not None:
                with contextlib.suppress(*_TROUBLE):
                    loop.run_until_complete(asyncio.wait_for(conn.close(), every))
            loop.close()

    def _probe(self, every: float) -> None:
        """Ask the loop for a sign of life, waiting a little for it."""
        self._answered.clear()
        try:
            self._loop.call_soon_threadsafe(self._answer)
        except RuntimeError:  # the loop closed under us
            self._stopping.set()
            return
        self._answered.wait(min(1.0, every / 4))

    async def _renew(
        self, conn: asyncpg.Connection | None, every: float
    ) -> tuple[asyncpg.Connection | None, bool]:
        """Renew once; answers the connection to use next and whether the attempt reached
        the database (False: try again soon)."""
        # At most lease_timeout past the loop's last sign of life: a loop blocked that long
        # loses the lease.
        sent = time.monotonic()
        left = self._seen + self.lease_timeout - sent
        if left <= every / 10:
            log.warning(
                "node %s: its event loop has not answered for %.1f s; the lease is not renewed",
                self.node,
                sent - self._seen,
            )
            return conn, True
        row = None
        try:
            async with asyncio.timeout(every):
                if conn is None or conn.is_closed():
                    conn = await codecs.connect(self.url)
                until = await conn.fetchval(_RENEW, self.node, self.incarnation, left)
                if until is None:
                    row = await conn.fetchrow(_WHY, self.node)
        except _TROUBLE as exc:
            self.failures += 1
            log.warning("node %s: lease not renewed: %s", self.node, str(exc) or type(exc).__name__)
            if conn is not None:
                conn.terminate()
            return None, False
        if until is None:
            if row is None:
                self.lost = "its row in nodes is gone"
            elif row[0] != self.incarnation:
                self.lost = "another daemon with the same node_id holds the lease"
            else:
                self.lost = f"it lapsed {max(0.0, -float(row[1])):.1f} s ago"
            self.held_until = 0.0
        else:
            self.renewals += 1
            self.until = float(until)
            self.held_until = max(self.held_until, sent + left)
        self._tell()
        return conn, True
