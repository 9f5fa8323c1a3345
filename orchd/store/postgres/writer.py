"""The PostgreSQL writer: one task owns one connection and commits every queued operation of
every process together (group commit), as the SQLite writer thread does.

While one transaction is on its way to the server and its WAL flush, the next batch gathers:
many actors share one commit and each still waits for its own. Events are stored last, under
an advisory lock held until the commit, so event ids are committed in the order they are given,
across every node of a cluster; a ``NOTIFY`` in the same transaction wakes the other nodes'
event streams.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from orchd.errors import StoreError
from orchd.model import Event
from orchd.store import plans
from orchd.store.base import CommitCounters, Op
from orchd.store.plans import Fetch, Plan, Stmt
from orchd.store.postgres import nodes, ops
from orchd.store.postgres.reads import numbered
from orchd.store.postgres.schema import EVENTS_LOCK

log = logging.getLogger("orchd.store")

T = TypeVar("T")

#: The channel a commit with events notifies (payload: its newest event id).
EVENTS_CHANNEL = "orchd_events"

_Result = tuple["asyncio.Future[Any]", Any, bool]


#: A plain insert of one row (no ``ON CONFLICT``, no ``RETURNING``).
_ONE_ROW = re.compile(r"\s*INSERT INTO (\w+) \(([\w,\s]+)\)\s+VALUES \((\$\d+(?:, \$\d+)*)\)\s*")
#: Each plain insert seen, as one statement for all its rows (None: not one to rewrite).
_BULK: dict[str, str | None] = {}


async def _bulk(conn: asyncpg.Connection, sql: str) -> str | None:
    """``sql``, a plain insert of one row run for many, as one insert of all of them from
    arrays (``unnest``), with the columns' types as the server infers them: one statement to
    plan and execute instead of one per row (a batch's 256 step records), which on a server
    sharing the machine paid for parsing State into jsonb and more."""
    if sql in _BULK:
        return _BULK[sql]
    found = _ONE_ROW.fullmatch(sql)
    bulk = None
    if found is not None:
        types = (await conn.prepare(sql)).get_parameters()
        if all(t.kind == "scalar" for t in types):
            arrays = ", ".join(f"${n}::{t.schema}.{t.name}[]" for n, t in enumerate(types, 1))
            names = [f"c{n}" for n in range(len(types))]
            # In the rows' order, as one by one: an identity column (an action's rowid, the
            # order of a process's audit trail) numbers them so.
            bulk = (
                f"INSERT INTO {found[1]} ({found[2]}) SELECT {', '.join(names)} "
                f"FROM unnest({arrays}) WITH ORDINALITY AS u({', '.join(names)}, n) ORDER BY n"
            )
    _BULK[sql] = bulk
    return bulk


async def _execute(conn: asyncpg.Connection, stmt: Stmt) -> Any:
    sql = numbered(stmt.sql)
    fetch = stmt.fetch
    if fetch is Fetch.NONE:
        await conn.execute(sql, *stmt.params)
        return None
    if fetch is Fetch.MANY:
        bulk = await _bulk(conn, sql) if len(stmt.params) > 1 else None
        if bulk is None:
            await conn.executemany(sql, stmt.params)
        else:
            await conn.execute(bulk, *map(list, zip(*stmt.params, strict=True)))
        return None
    if fetch is Fetch.ROW:
        return await conn.fetchrow(sql, *stmt.params)
    if fetch is Fetch.ROWS:
        return await conn.fetch(sql, *stmt.params)
    if fetch is Fetch.VALUE:
        return await conn.fetchval(sql, *stmt.params)
    status = await conn.execute(sql, *stmt.params)  # "DELETE 3"
    return int(status.rsplit(" ", 1)[-1])


async def run(conn: asyncpg.Connection, plan: Plan[T]) -> T:
    """Run a plan's statements on ``conn`` (inside the caller's transaction); its answer."""
    try:
        stmt = next(plan)
        while True:
            stmt = plan.send(await _execute(conn, stmt))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


_CONNECTION_TROUBLE = (
    asyncpg.PostgresError,
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    TimeoutError,
)


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection is unusable (rather than one statement failed)."""
    if not isinstance(exc, asyncpg.PostgresError):
        return True
    return isinstance(
        exc,
        asyncpg.exceptions.OperatorInterventionError
        | asyncpg.exceptions.PostgresConnectionError
        | asyncpg.exceptions.InsufficientResourcesError,
    )


class Writer(CommitCounters):
    """Owns the writing connection; commits batches of operations."""

    MAX_BATCH = plans.MAX_BATCH

    def __init__(
        self,
        conn: asyncpg.Connection,
        node: str,
        incarnation: str,
        *,
        keep_events: int,
        announce: Callable[[list[Event]], Awaitable[None]],
        connect: Callable[[], Awaitable[asyncpg.Connection]],
    ) -> None:
        super().__init__()
        self.conn = conn
        #: A new connection when the server dropped ours (a restart, a failover).
        self.connect = connect
        self.node = node
        self.dialect = ops.PgDialect(node)
        #: The node's incarnation, which the ownership fence of every process write checks
        #: (``nodes.fence``); set on the connection before the first batch after each change.
        self.incarnation = incarnation
        self._fenced: tuple[asyncpg.Connection, str] | None = None
        self.keep_events = keep_events
        #: Called with each commit's events (ids set) before the writers waiting for it wake.
        self.announce = announce
        self.queue: list[tuple[Op, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._events_since_prune = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="orchd pg writer")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    def submit(self, op: Op) -> asyncio.Future[Any]:
        if self._closing:
            raise StoreError("the store is closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.append((op, fut))
        self._wake.set()
        return fut

    async def _run(self) -> None:
        while True:
            if not self.queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self.queue[: self.MAX_BATCH]
            del self.queue[: self.MAX_BATCH]
            staged: list[Event] = []
            results = await self._commit(batch, staged)
            if staged:
                try:
                    await self.announce(staged)
                except Exception:  # never let announcing stop the writer
                    log.exception("announcing committed events failed")
            for fut, value, ok in results:
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    async def _commit(
        self, batch: list[tuple[Op, asyncio.Future[Any]]], staged: list[Event]
    ) -> list[_Result]:
        started = time.perf_counter()
        try:
            results = await self._apply(batch, staged)
        except Exception as exc:
            staged.clear()
            database = isinstance(exc, _CONNECTION_TROUBLE)
            lost = database and _connection_lost(exc)
            if lost:
                # The next batch starts on a new connection (the server restarted, failed over
                # or dropped us); this one fails as a whole and its actors run again later.
                self.conn.terminate()
            match plans.after_failure(len(batch), database=database, everyone=lost):
                case plans.Failure.SPLIT:
                    results = []
                    for item in batch:
                        one: list[Event] = []
                        results.extend(await self._commit([item], one))
                        staged.extend(one)
                    return results
                case plans.Failure.BUG:
                    log.error("write operation failed: %r", exc)
                    return [(fut, exc, False) for _, fut in batch]
                case plans.Failure.DATABASE:
                    self.failed(str(exc) or type(exc).__name__)
                    # The driver's words go to the log (failed() logs them), not to clients.
                    error = StoreError(f"database write failed ({type(exc).__name__}; see the log)")
                    return [(fut, error, False) for _, fut in batch]
        self.succeeded(len(batch), started)
        return results

    async def _apply(
        self, batch: list[tuple[Op, asyncio.Future[Any]]], staged: list[Event]
    ) -> list[_Result]:
        if self.conn.is_closed():
            self.conn = await self.connect()
        conn = self.conn
        if self._fenced != (conn, self.incarnation):
            await conn.execute(nodes.SET_INCARNATION, self.incarnation)
            self._fenced = (conn, self.incarnation)
        events: list[Event] = []
        async with conn.transaction():
            outcomes = await run(conn, plans.batch([op for op, _ in batch], self.dialect, events))
            if events:
                # Stored last, under a lock held until the commit: ids commit in their order.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)
                await ops.store_events(conn, events)
                await self._prune_events(events)
                await conn.execute("SELECT pg_notify($1, $2)", EVENTS_CHANNEL, str(events[-1].id))
        staged.extend(events)
        return [(fut, value, ok) for (_, fut), (ok, value) in zip(batch, outcomes, strict=True)]

    async def _prune_events(self, events: list[Event]) -> None:
        """Keep the events table near ``keep_events`` rows (a range delete now and then)."""
        self._events_since_prune += len(events)
        if self._events_since_prune < max(1, self.keep_events // 10):
            return
        self._events_since_prune = 0
        await self.conn.execute(
            "DELETE FROM events WHERE id <= $1", events[-1].id - self.keep_events
        )
