"""The PostgreSQL store: several daemons (nodes) on one database.

``database = "postgresql://user@host:5432/db"`` selects it. Writes go through one writer task
per node that commits every queued operation together (``writer``); reads use a small pool
(``reads``); leases, claims and the mail between nodes are in ``nodes``. A third connection
listens: for other nodes' events (so every node's SSE shows every event, in id order) and for
requests mailed to this node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from orchd.errors import StoreError
from orchd.model import Event
from orchd.store.base import Op, ProcessRow, StoreStats
from orchd.store.cluster import Claim, NodeInfo, Postman
from orchd.store.postgres import codecs, nodes
from orchd.store.postgres.lease import LeaseKeeper
from orchd.store.postgres.reads import PgReads
from orchd.store.postgres.schema import SCHEMA_VERSION, migrate
from orchd.store.postgres.slots import PgSlots
from orchd.store.postgres.writer import EVENTS_CHANNEL, Writer
from orchd.store.sqlreads import SELECT_PROCESS, process_row

__all__ = ["SCHEMA_VERSION", "PgStore", "default_node_id"]

log = logging.getLogger("orchd.store")

_DEFAULT_IDS: set[str] = set()


def default_node_id() -> str:
    """``hostname:pid``; a second engine in one process (tests) gets a suffix."""
    base = f"{socket.gethostname()}:{os.getpid()}"
    node, n = base, 1
    while node in _DEFAULT_IDS:
        n += 1
        node = f"{base}/{n}"
    _DEFAULT_IDS.add(node)
    return node


def _retrieved(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


class PgStore(PgReads):
    """The database of one node (implements ``Store`` and ``ClusterStore``)."""

    #: Read connections per node.
    POOL_SIZE = 4

    def __init__(
        self,
        url: str,
        *,
        node_id: str | None = None,
        lease_timeout: float = 10.0,
        keep_events: int = 100_000,
    ) -> None:
        super().__init__()
        self.url = url
        self.path = redact(url)
        self.node_id = node_id or default_node_id()
        self._default_id = node_id is None
        self.lease_timeout = lease_timeout
        self.keep_events = keep_events
        self.incarnation = secrets.token_hex(8)
        self._event_sink: Callable[[list[Event]], None] | None = None
        self._writer: Writer | None = None
        self._listener: asyncpg.Connection | None = None
        self._mailbox: nodes.Mailbox | None = None
        #: The newest event id handed to the sink: events go out once each, in id order.
        self._published = 0
        self._publishing = asyncio.Lock()
        self._tail_task: asyncio.Task[None] | None = None
        self._announcing: set[asyncio.Task[None]] = set()
        self._tail_wake = asyncio.Event()
        self._postman: Postman | None = None
        self._counts = {"lease_renewals": 0, "lease_renewal_failures": 0, "takeovers": 0}
        #: ``time.monotonic()`` by which the lease of the latest registration may lapse.
        self._registered = 0.0
        self._registered_until = 0.0
        self._keeper: LeaseKeeper | None = None
        #: The cluster's table of resource slots (README "Limits on shared resources").
        self.slots = PgSlots(self.node_id, self.incarnation)

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.POOL_SIZE,
                command_timeout=60,
                init=codecs.register,
            )
            conn = await codecs.connect(self.url)
            try:
                await migrate(conn)
                await self._register(conn)
            except BaseException:
                await conn.close()
                raise
            self._published = int(
                await conn.fetchval("SELECT coalesce(max(id), 0) FROM events") or 0
            )
            self._writer = Writer(
                conn,
                self.node_id,
                self.incarnation,
                keep_events=self.keep_events,
                announce=self._announce,
                connect=self._connect,
            )
            self._writer.start()
            self._mailbox = nodes.Mailbox(self._pool, self.node_id)
            self._mailbox.postman = self._postman
            self._listener = await asyncpg.connect(self.url)
            await self._listener.add_listener(EVENTS_CHANNEL, self._on_events_notified)
            await self._listener.add_listener(nodes.channel(self.node_id), self._on_mail_notified)
            await self._listener.add_listener(self.slots.channel, self.slots.notified)
            self.slots.pool = self._pool
            self._tail_task = asyncio.create_task(self._tail(), name="orchd pg events")
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        except StoreError:  # a migration refused (it changed nothing)
            await self.close()
            raise

    async def _register(self, conn: nodes.Conn) -> None:
        """Enter as this incarnation, waiting while another live one holds the node id."""
        while True:
            sent = time.monotonic()
            wait = await nodes.register(conn, self.node_id, self.incarnation, self.lease_timeout)
            if wait <= 0:
                self._registered = sent + self.lease_timeout
                self._registered_until = float(
                    await conn.fetchval(
                        "SELECT lease_until FROM nodes WHERE node_id = $1", self.node_id
                    )
                )
                return
            log.warning(
                "node %s: a previous daemon with this node_id holds its lease for "
                "%.1f s more; waiting for it to lapse",
                self.node_id,
                wait,
            )
            await asyncio.sleep(wait)

    async def _connect(self) -> asyncpg.Connection:
        return await codecs.connect(self.url)

    async def close(self) -> None:
        await self._stop_keeper()
        if self._writer is not None:
            await self._writer.stop()
        for task in list(self._announcing):
            with contextlib.suppress(Exception):
                await task
        if self._tail_task is not None:
            self._tail_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tail_task
            self._tail_task = None
        if self._mailbox is not None:
            await self._mailbox.close()
            self._mailbox = None
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer.conn.close()
            self._writer = None
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.close()
            self._pool = None
        if self._default_id:
            _DEFAULT_IDS.discard(self.node_id)

    # -- writes ---------------------------------------------------------------------------

    async def write(self, op: Op) -> Any:
        if self._writer is None:
            raise StoreError("the store is closed")
        # Shielded: a cancelled caller does not cancel a commit that has begun (and what the
        # commit answers a caller that is gone is read here, not left to asyncio's log).
        pending = self._writer.submit(op)
        pending.add_done_callback(_retrieved)
        return await asyncio.shield(pending)

    def commit_now(self, op: Op) -> tuple[bool, Any]:
        return False, None

    def stats(self) -> StoreStats:
        w = self._writer
        if w is None:
            return StoreStats()
        return w.counted(len(w.queue))

    # -- events ---------------------------------------------------------------------------

    def on_events(self, sink: Callable[[list[Event]], None]) -> None:
        self._event_sink = sink

    async def _announce(self, committed: list[Event]) -> None:
        """Hand a commit's events to the sink, after any other node's committed before them
        (ids are committed in order, so everything below ours is in the table by now).

        Alone on the database (no gap before our ids) this happens before the writers of the
        commit wake, as on SQLite. When other nodes' events come first, reading them is left
        to a task of its own, so the writer goes on committing meanwhile."""
        if not self._publishing.locked() and committed[0].id == self._published + 1:
            self._publish(committed)
            return
        task = asyncio.create_task(self._announce_after_others(committed))
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def _announce_after_others(self, committed: list[Event]) -> None:
        try:
            async with self._publishing:
                if committed[0].id > self._published + 1:
                    await self._catch_up(committed[0].id - 1)
                self._publish(committed)
        except (StoreError, asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            log.warning("announcing events failed (the stream catches up): %s", exc)

    def _publish(self, events: list[Event]) -> None:
        fresh = [e for e in events if e.id > self._published]
        if fresh:
            self._published = fresh[-1].id
            if self._event_sink is not None:
                self._event_sink(fresh)

    async def _catch_up(self, upto: int | None = None) -> None:
        """Publish what other nodes committed after the newest id handed out (to ``upto``)."""
        while True:
            page = await self.events_after(self._published, 500)
            if upto is not None:
                page = [e for e in page if e.id <= upto]
            if not page:
                return
            self._published = page[-1].id
            if self._event_sink is not None:
                self._event_sink(page)
            if len(page) < 500:
                return

    def _on_events_notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        if isinstance(payload, str) and payload.isdigit() and int(payload) > self._published:
            self._tail_wake.set()

    async def _tail(self) -> None:
        """Follow other nodes' events: at once when notified, and every second regardless."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._tail_wake.wait()
            self._tail_wake.clear()
            try:
                async with self._publishing:
                    await self._catch_up()
                if self._mailbox is not None and self._postman is not None:
                    await self._mailbox.poll()
            except (StoreError, asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
                log.debug("following events failed: %s", exc)

    # -- the cluster (ClusterStore) -------------------------------------------------------

    def _ready(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("the store is closed")
        return self._pool

    def keep_lease(self, told: Callable[[], None]) -> LeaseKeeper:
        if self._keeper is None:
            self._keeper = LeaseKeeper(
                self.url,
                self.node_id,
                self.incarnation,
                self.lease_timeout,
                held_until=self._registered,
                until=self._registered_until,
                told=told,
            )
            self._keeper.start()
        return self._keeper

    async def _stop_keeper(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await keeper.stop()
            self._counts["lease_renewals"] += keeper.renewals
            self._counts["lease_renewal_failures"] += keeper.failures

    async def rejoin(self) -> None:
        keeper = self._keeper
        if keeper is None:
            raise StoreError("the lease is not kept")
        await self._stop_keeper()
        self.incarnation = secrets.token_hex(8)
        # From here on this store writes as the new incarnation: whatever the old one still
        # had queued is refused, since the database's row no longer names it.
        if self._writer is not None:
            self._writer.incarnation = self.incarnation
        self.slots.incarnation = self.incarnation
        try:
            async with self._ready().acquire() as conn:
                await self._register(conn)
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"rejoining failed: {exc}") from None
        self.keep_lease(keeper.told)

    async def live_nodes(self) -> list[NodeInfo]:
        return await nodes.live_nodes(self._ready())

    async def claim_process(self, pid: str) -> str | None:
        try:
            return await nodes.claim_process(self._ready(), self.node_id, pid)
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"claiming process {pid} failed: {exc}") from None

    async def owner_of(self, pid: str) -> str | None:
        try:
            owner = await self._ready().fetchval("SELECT owner FROM processes WHERE id = $1", pid)
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"reading the owner of process {pid} failed: {exc}") from None
        return None if owner is None else str(owner)

    async def take_over(self, limit: int) -> Claim:
        try:
            claim = await nodes.take_over(self._ready(), self.node_id, limit, mine=False)
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"taking over processes failed: {exc}") from None
        self._counts["takeovers"] += claim.taken_over
        return claim

    async def overdue(self, grace: float) -> list[tuple[str, str, str | None]]:
        return await nodes.overdue(self._ready(), self.node_id, grace)

    async def mail(self, to_node: str, pid: str, body: bytes, patience: float) -> bytes | None:
        if self._mailbox is None:
            raise StoreError("the store is closed")
        return await self._mailbox.send(to_node, pid, body, patience)

    def on_mail(self, postman: Postman) -> None:
        self._postman = postman
        if self._mailbox is not None:
            self._mailbox.postman = postman

    def _on_mail_notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        if self._mailbox is not None and isinstance(payload, str):
            self._mailbox.notified(payload)

    def counters(self) -> dict[str, int]:
        counts = dict(self._counts)
        if self._keeper is not None:
            counts["lease_renewals"] += self._keeper.renewals
            counts["lease_renewal_failures"] += self._keeper.failures
        return counts

    async def leave(self) -> None:
        await self._stop_keeper()
        with contextlib.suppress(asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
            await nodes.leave(self._ready(), self.node_id, self.incarnation)

    # -- processes a restart continues ----------------------------------------------------

    async def active_processes(self) -> list[ProcessRow]:
        """The created or running processes this node takes at start: those a previous
        incarnation of its node id left, those of dead nodes, and ownerless ones."""
        pool = self._ready()
        rows = await pool.fetch(
            f"{SELECT_PROCESS} WHERE owner = $1 AND status IN ('created', 'running') "
            "AND NOT held ORDER BY rowid",
            self.node_id,
        )
        mine = [process_row(r) for r in rows]
        while True:
            claim = await self.take_over(5000)
            mine.extend(claim.rows)
            if len(claim.rows) < 5000:
                return mine
