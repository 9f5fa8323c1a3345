"""The SQLite writer: one thread owns the only writing connection and commits every queued
operation of every process together (group commit).

While one transaction is being made durable, the next batch gathers, so many actors share one
fsync and every actor still waits for its own commit. The statements of each operation are its
plan (``orchd.store.plans``, shared with PostgreSQL); this module runs them (``run``) and
stores the events they collect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from orchd import _faults as faults
from orchd.errors import StoreError
from orchd.model import Event
from orchd.store import plans
from orchd.store.base import CommitCounters, Op
from orchd.store.plans import Fetch, Plan, Stmt

T = TypeVar("T")

log = logging.getLogger("orchd.store")

_encode = msgspec.json.Encoder().encode

#: SQLite is the plans' base dialect: one writer owns every row, no fence, no row locks.
DIALECT = plans.Dialect()


def _execute(conn: sqlite3.Connection, stmt: Stmt) -> Any:
    fetch = stmt.fetch
    if fetch is Fetch.MANY:
        conn.executemany(stmt.sql, stmt.params)
        return None
    cur = conn.execute(stmt.sql, stmt.params)
    if fetch is Fetch.NONE:
        return None
    if fetch is Fetch.COUNT:
        return cur.rowcount
    # Every row, even for one: a statement left unfinished (RETURNING) would stay active.
    rows = cur.fetchall()
    if fetch is Fetch.ROWS:
        return rows
    if not rows:
        return None
    return rows[0] if fetch is Fetch.ROW else rows[0][0]


def run(conn: sqlite3.Connection, plan: Plan[T]) -> T:
    """Run a plan's statements on ``conn`` (inside the caller's transaction); its answer."""
    try:
        stmt = next(plan)
        while True:
            stmt = plan.send(_execute(conn, stmt))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


_INSERT_EVENT = "INSERT INTO events (process_id, data) VALUES (?, ?)"


def _insert_events(conn: sqlite3.Connection, events: list[Event]) -> None:
    """Store events; the ids the table gives them (consecutive: one connection writes, inside
    one transaction) are set on them for announcing after the commit."""
    conn.executemany(_INSERT_EVENT, [(e.process_id, _encode(e)) for e in events])
    last: int = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    first = last - len(events) + 1
    for i, e in enumerate(events):
        e.id = first + i  # the writer owns these until they are announced


_Item = tuple[Op, "asyncio.Future[Any] | None"]

#: Primary result codes that fail every operation alike (the lock, the disk, the file): a
#: batch failing so is not retried op by op, which would wait out the busy timeout per op.
_ENVIRONMENTAL = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CANTOPEN,
    }
)


class Writer(threading.Thread, CommitCounters):
    """Owns the only writing connection; commits batches of operations."""

    MAX_BATCH = plans.MAX_BATCH
    #: Seconds between looks at the files while no write comes.
    WATCH_EVERY = 1.0

    def __init__(
        self,
        conn: sqlite3.Connection,
        loop: asyncio.AbstractEventLoop,
        path: str,
        *,
        keep_events: int = 100_000,
        event_sink: Callable[[list[Event]], None] | None = None,
    ) -> None:
        threading.Thread.__init__(self, name="orchd-writer", daemon=True)
        CommitCounters.__init__(self)
        self.conn = conn
        #: Events kept in the table; older ones are deleted now and then, by count.
        self.keep_events = keep_events
        self.event_sink = event_sink
        self._events_since_prune = 0
        #: Events of the transactions committed since the last hand-over to the loop.
        self._announce: list[Event] = []
        #: Batches handed to the loop (counted by this thread, under ``lock``) and announced
        #: there (counted by the loop): an inline commit announces at once only when they are
        #: equal, else behind them. Each count has one writer, so neither loses an update.
        self._handed = 0
        self._announced = 0
        self.loop = loop
        self.path = path
        st = os.stat(path)
        #: (device, inode) of the file opened; another one at ``path`` means it was replaced.
        self.identity = (st.st_dev, st.st_ino)
        #: The same for the WAL, once it exists: committed pages live there until a
        #: checkpoint, so a deleted WAL loses them at the next start, silently.
        self.wal_identity: tuple[int, int] | None = None
        #: Whether the committed pages of a lost WAL were saved (done once).
        self.rescued = False
        #: Held while a batch commits, by this thread or by an inline commit (``commit_now``).
        self.lock = threading.Lock()
        #: How long this thread waits for another program's lock on the file (ms), and
        #: whether the connection is set so now: an inline commit on the loop's thread never
        #: waits (it leaves the write to this thread instead), so it sets 0 while it commits.
        self.busy_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
        self._patient = True
        self.queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()

    def run(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self.queue.get(timeout=self.WATCH_EVERY)
            except queue.Empty:
                with self.lock:  # an inline commit may be using the connection
                    self._be_patient(True)
                    self._watch()  # an idle daemon notices a lost file too
                continue
            if first is None:
                break
            batch = [first]
            while len(batch) < self.MAX_BATCH:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            with self.lock:
                self._be_patient(True)
                results = self._commit(batch)
                events, self._announce = self._announce, []
                # Handed to the loop under the lock, where an inline commit looks: the loop
                # announces every commit in the order it was made.
                self._handed += 1
                self.loop.call_soon_threadsafe(self._deliver, results, events, self.event_sink)
        self.conn.close()

    def moved(self) -> str | None:
        """Why the file at ``path`` (or its WAL) is no longer the one being written, if so."""
        problem = _identity_problem(self.path, self.identity, "database file")
        if problem is not None:
            return problem
        wal = f"{self.path}-wal"
        if self.wal_identity is None:
            # SQLite creates the WAL at the first transaction and keeps it while we are open.
            with contextlib.suppress(OSError):
                st = os.stat(wal)
                self.wal_identity = (st.st_dev, st.st_ino)
            return None
        return _identity_problem(wal, self.wal_identity, "WAL file")

    def _fail(
        self, batch: list[_Item], reason: str, exc: BaseException
    ) -> list[tuple[asyncio.Future[Any] | None, Any, bool]]:
        self.failed(reason)
        return [(fut, exc, False) for _, fut in batch]

    def _watch(self) -> str | None:
        """Check the files; when the WAL is gone, save what it held first."""
        moved = self.moved()
        if moved is not None and moved.startswith("WAL") and not self.rescued:
            self.rescued = True
            # The WAL is unlinked but still open here: a checkpoint copies its committed
            # pages into the database file, so no acknowledged step is lost at the next start.
            try:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.error("%s; saving its committed pages failed: %s", moved, exc)
            else:
                log.error("%s; its committed pages were saved into the database file", moved)
        return moved

    def commit_now(self, op: Op) -> tuple[bool, Any]:
        """Commit ``op`` on the calling thread when the writer is idle: ``(True, answer)``;
        ``(False, None)`` when it is busy or has work queued (group commit is the way then).
        The caller waits for the fsync itself: as durable as a queued write, without the two
        thread hand-offs that cost a lone process a third of each step."""
        if not self.queue.empty() or not self.lock.acquire(blocking=False):
            return False, None
        try:
            # Another program may hold the file's write lock: then this thread would wait
            # for it (the busy timeout), and the loop with it. Take the lock at once, or
            # leave the commit to the writer thread, which waits without holding the loop.
            self._be_patient(False)
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error:
                return False, None  # locked (or worse: the writer thread will say what)
            try:
                ((_, value, ok),) = self._commit([(op, None)])
            finally:
                if self.conn.in_transaction:  # the file moved: nothing was applied
                    self.conn.execute("ROLLBACK")
            events, self._announce = self._announce, []
            if events and self.event_sink is not None and self._handed != self._announced:
                # Behind the batches the writer thread committed before, whose events still
                # wait in the loop's queue: announced at once, these would overtake them, and
                # a listener's ids would go back.
                self.loop.call_soon(self.event_sink, events)
                events = []
        finally:
            self.lock.release()
        if events and self.event_sink is not None:
            self.event_sink(events)  # on the loop's thread already, nothing before it: at once
        if not ok:
            raise value
        return True, value

    def _deliver(
        self,
        results: list[tuple[asyncio.Future[Any] | None, Any, bool]],
        events: list[Event],
        sink: Callable[[list[Event]], None] | None,
    ) -> None:
        """On the loop: a batch's events announced, then its writers woken."""
        self._announced += 1
        _resolve(results, events, sink)

    def _be_patient(self, patient: bool) -> None:
        """Wait for another program's lock on the file (this thread), or not at all (an
        inline commit on the loop's thread); set only when it changes, so a lone process's
        inline commits pay nothing for it."""
        if self._patient is not patient:
            self.conn.execute(f"PRAGMA busy_timeout = {self.busy_ms if patient else 0}")
            self._patient = patient

    def _commit(self, batch: list[_Item]) -> list[tuple[asyncio.Future[Any] | None, Any, bool]]:
        started = time.perf_counter()
        moved = self._watch()
        if moved is not None:
            # Commits to an unlinked inode succeed and are lost at the next start: refuse.
            return self._fail(batch, moved, StoreError(f"{moved} while open; restart orchd"))
        try:
            results = self._apply(batch)
        except Exception as exc:
            # The writer thread must outlive any failure, or every later write would hang.
            database = isinstance(exc, sqlite3.Error)
            everyone = database and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _ENVIRONMENTAL
            match plans.after_failure(len(batch), database=database, everyone=everyone):
                case plans.Failure.SPLIT:
                    return [r for item in batch for r in self._commit([item])]
                case plans.Failure.BUG:
                    log.error("write operation failed: %r", exc)
                    return [(fut, exc, False) for _, fut in batch]
                case plans.Failure.DATABASE:
                    return self._fail(batch, str(exc), StoreError(f"database write failed: {exc}"))
        self.succeeded(len(batch), started)
        return results

    def _apply(self, batch: list[_Item]) -> list[tuple[asyncio.Future[Any] | None, Any, bool]]:
        conn = self.conn
        events: list[Event] = []
        if not conn.in_transaction:  # an inline commit has begun it (``commit_now``)
            conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes = run(conn, plans.batch([op for op, _ in batch], DIALECT, events))
            if events:
                _insert_events(conn, events)
                self._prune_events(events)
            if faults.ENABLED:
                faults.point("in_commit")
            conn.execute("COMMIT")
            self._announce.extend(events)
            if faults.ENABLED:
                faults.point("after_commit")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return [(fut, value, ok) for (_, fut), (ok, value) in zip(batch, outcomes, strict=True)]

    def _prune_events(self, staged: list[Event]) -> None:
        """Keep the events table near ``keep_events`` rows: a range delete on the key, now
        and then (every tenth of that many new events), inside the batch's transaction."""
        if not staged:
            return
        self._events_since_prune += len(staged)
        if self._events_since_prune < max(1, self.keep_events // 10):
            return
        self._events_since_prune = 0
        self.conn.execute("DELETE FROM events WHERE id <= ?", (staged[-1].id - self.keep_events,))


def _identity_problem(path: str, identity: tuple[int, int], what: str) -> str | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{what} {path} was deleted"
    except OSError:
        return None  # cannot tell; SQLite reports real I/O trouble itself
    if (st.st_dev, st.st_ino) != identity:
        return f"{what} {path} was replaced"
    return None


def _resolve(
    results: list[tuple[asyncio.Future[Any] | None, Any, bool]],
    events: list[Event],
    sink: Callable[[list[Event]], None] | None,
) -> None:
    # Announced before the writers wake, in commit order: ids only ever grow to a listener.
    if events and sink is not None:
        sink(events)
    _wake(results, 0)


#: Writers woken per turn of the event loop. A batch wakes up to MAX_BATCH actors, and each
#: runs its next step in the turn after it is woken: woken all at once they would make one
#: long turn, and a request to the API waits for the whole of it, at each of the three or so
#: turns it takes. Measured under load (``orchd bench``, P6 and P1): 32 gave a GET's p99 of
#: 5.5 ms, 16 gave 4.0-5.2 ms, 8 gave 3.2-3.9 ms; each halving cost about 3 % of P1's steps/s
#: (more turns of the loop, each a system call and a chance for the writer to take the GIL).
WAKE_PER_TURN = 8


def _wake(results: list[tuple[asyncio.Future[Any] | None, Any, bool]], start: int) -> None:
    end = start + WAKE_PER_TURN
    for fut, value, ok in results[start:end]:
        if fut is None or fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
    if end < len(results):
        asyncio.get_running_loop().call_soon(_wake, results, end)
