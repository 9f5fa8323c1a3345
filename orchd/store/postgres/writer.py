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
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from orchd.errors import OrchdError, StoreError
from orchd.model import Event
from orchd.store.base import (
    Checkpoint,
    ChildRefused,
    CommitCounters,
    NewProcess,
    Op,
    Positions,
    Prune,
    ReplaceChildren,
    RequestAbort,
    ScheduleClaim,
    SchedulePlan,
    ScheduleRun,
    ScheduleStarted,
    SetNote,
    StartChildren,
)
from orchd.store.cluster import LeaseLost
from orchd.store.postgres import nodes, ops
from orchd.store.postgres.schema import EVENTS_LOCK

log = logging.getLogger("orchd.store")

#: The channel a commit with events notifies (payload: its newest event id).
EVENTS_CHANNEL = "orchd_events"

_Apply = Callable[[asyncpg.Connection, Any], Awaitable[Any]]
#: Operations that neither create processes nor store events.
_APPLY: dict[type[Any], _Apply] = {
    Prune: ops.prune,
    ScheduleRun: ops.record_schedule_run,
    ScheduleClaim: ops.claim,
    ScheduleStarted: ops.started,
    SchedulePlan: ops.plan,
    Positions: ops.place,
    SetNote: ops.set_note,
    RequestAbort: ops.request_abort,
}
_Staged = Callable[[asyncpg.Connection, Any, str, list[Event]], Awaitable[Any]]
#: Operations that write process rows (fenced by this node) and collect events.
_APPLY_STAGED: dict[type[Any], _Staged] = {
    NewProcess: ops.create_process,
    StartChildren: ops.start_children,
    ReplaceChildren: ops.replace_children,
    Checkpoint: ops.finish_child,  # only a child's last one comes here
}

_Result = tuple["asyncio.Future[Any]", Any, bool]

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

    MAX_BATCH = 256

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
        except _CONNECTION_TROUBLE as exc:
            staged.clear()
            lost = _connection_lost(exc)
            if lost:
                # The next batch starts on a new connection (the server restarted, failed over
                # or dropped us); this one fails as a whole and its actors run again later.
                self.conn.terminate()
            elif len(batch) > 1:
                # One bad operation must not sink the others: commit each on its own.
                results = []
                for item in batch:
                    one: list[Event] = []
                    results.extend(await self._commit([item], one))
                    staged.extend(one)
                return results
            reason = str(exc) or type(exc).__name__
            self.failed(reason)
            # The driver's words go to the log (failed() logs them), not to API clients.
            error = StoreError(f"database write failed ({type(exc).__name__}; see the log)")
            return [(fut, error, False) for _, fut in batch]
        except Exception as exc:  # a bug in one operation, not trouble with the database
            staged.clear()
            if len(batch) > 1:
                results = []
                for item in batch:
                    one = []
                    results.extend(await self._commit([item], one))
                    staged.extend(one)
                return results
            log.error("write operation failed: %r", exc)
            return [(fut, exc, False) for _, fut in batch]
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
        node = self.node
        results: list[_Result] = []
        plain: list[tuple[Checkpoint, asyncio.Future[Any]]] = []
        rows = ops.Rows(node)
        events: list[Event] = []

        async def flush() -> None:
            lost = await rows.flush(conn, events)
            for cp, fut in plain:
                if cp.process_id in lost:
                    error = LeaseLost(
                        f"process {cp.process_id}: this node no longer holds its lease"
                    )
                    results.append((fut, error, False))
                else:
                    results.append((fut, None, True))
            plain.clear()

        async with conn.transaction():
            for op, fut in batch:
                if isinstance(op, Checkpoint) and op.child_of is None:
                    rows.add(op)
                    plain.append((op, fut))
                    continue
                await flush()  # keep the order of operations that read others'
                if isinstance(op, NewProcess) and op.lock is None and op.idempotency_key is None:
                    # A plain insert is never refused; a failure fails the batch, which is
                    # then retried one operation at a time.
                    results.append((fut, await ops.create_process(conn, op, node, events), True))
                    continue
                try:
                    async with conn.transaction():  # a savepoint: a refusal undoes only this
                        mark = len(events)
                        try:
                            if type(op) in _APPLY_STAGED:
                                value = await _APPLY_STAGED[type(op)](conn, op, node, events)
                            else:
                                value = await _APPLY[type(op)](conn, op)
                        except BaseException:
                            del events[mark:]
                            raise
                except (OrchdError, ChildRefused) as exc:  # refused (locked, not found, lease)
                    results.append((fut, exc, False))
                else:
                    results.append((fut, value, True))
            await flush()
            if events:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)
                await ops.store_events(conn, events)
                await self._prune_events(events)
                await conn.execute("SELECT pg_notify($1, $2)", EVENTS_CHANNEL, str(events[-1].id))
        staged.extend(events)
        return results

    async def _prune_events(self, events: list[Event]) -> None:
        """Keep the events table near ``keep_events`` rows (a range delete now and then)."""
        self._events_since_prune += len(events)
        if self._events_since_prune < max(1, self.keep_events // 10):
            return
        self._events_since_prune = 0
        await self.conn.execute(
            "DELETE FROM events WHERE id <= $1", events[-1].id - self.keep_events
        )
