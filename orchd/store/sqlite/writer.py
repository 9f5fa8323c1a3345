"""The SQLite writer: one thread owns the only writing connection and commits every queued
operation of every process together (group commit).

While one transaction is being made durable, the next batch gathers, so many actors share one
fsync and every actor still waits for its own commit. Each operation of ``orchd.store.base.Op``
has its statement(s) here and nowhere else.
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
from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec.structs import astuple

from orchd import _faults as faults
from orchd.errors import StoreError, SubscriptionLocked, SubscriptionNotFound
from orchd.model import START, Event, ProcessStatus
from orchd.store.base import (
    Checkpoint,
    ChildFinished,
    ChildRefused,
    CommitCounters,
    NewProcess,
    Op,
    Positions,
    ProcessRow,
    ProcessTouch,
    Prune,
    Pruned,
    ReplaceChildren,
    RequestAbort,
    ScheduleClaim,
    SchedulePlan,
    ScheduleRun,
    ScheduleStarted,
    SetNote,
    StartChildren,
)
from orchd.store.sqlreads import (
    DROP_RELATIONS,
    INSERT_RELATION,
    INSERT_SUBSCRIPTION_ACTION,
    REQUEST_ABORT,
    SELECT_HOLDER,
    SELECT_KEYED,
    SELECT_PROCESS,
    SELECT_SUBSCRIPTION,
    SELECT_USERS,
    UPSERT_SUBSCRIPTION,
    abort_request_action,
    astuple_note,
    keyed_process,
    process_row,
    prunable_where,
    refuse_start,
    subscription_from_row,
    subscription_values,
)

log = logging.getLogger("orchd.store")

_encode = msgspec.json.Encoder().encode


class _Batch:
    """Rows of plain checkpoints gathered for executemany."""

    def __init__(self) -> None:
        self.processes: list[tuple[Any, ...]] = []
        #: One touch per process: a batch may hold many steps of one process's branches.
        self.touches: dict[int, ProcessTouch] = {}
        self.branches: list[tuple[Any, ...]] = []
        self.drops: list[tuple[int, str]] = []
        self.steps: list[tuple[Any, ...]] = []
        self.subscriptions: list[tuple[Any, ...]] = []
        self.relations: dict[str, dict[str, str]] = {}
        self.links: list[tuple[str, str]] = []
        self.releases: list[tuple[float, str]] = []
        self.actions: list[tuple[Any, ...]] = []
        self.events: list[Event] = []

    def flush(self, conn: sqlite3.Connection, staged: list[Event]) -> None:
        if self.subscriptions:
            if faults.ENABLED:
                faults.point("subscription_save")
            conn.executemany(UPSERT_SUBSCRIPTION, self.subscriptions)
        if self.relations:
            conn.executemany(DROP_RELATIONS, [(sid,) for sid in self.relations])
            rows = [
                (sid, at, to) for sid, refs in self.relations.items() for at, to in refs.items()
            ]
            conn.executemany(INSERT_RELATION, rows)
        if self.processes:
            conn.executemany(_UPDATE_PROCESS, self.processes)
        if self.touches:
            conn.executemany(_TOUCH_PROCESS, [astuple(t) for t in self.touches.values()])
        if self.drops:
            # Before the upserts: a join drops its fork's branches, and the branch it returns
            # to (kept, a shorter path) is written after.
            conn.executemany(_DROP_BRANCHES, self.drops)
        if self.branches:
            conn.executemany(_UPSERT_BRANCH, self.branches)
        if self.steps:
            conn.executemany(_INSERT_STEP, self.steps)
        if self.links:
            conn.executemany(_LINK, self.links)
        if self.releases:
            conn.executemany(_RELEASE, self.releases)
        if self.actions:
            conn.executemany(_INSERT_ACTION, self.actions)
        if self.events:
            _insert_events(conn, self.events, staged)
        self.__init__()  # type: ignore[misc]


_INSERT_EVENT = "INSERT INTO events (process_id, data) VALUES (?, ?)"


def _insert_events(conn: sqlite3.Connection, events: list[Event], staged: list[Event]) -> None:
    """Store events; the ids the table gives them (consecutive: one connection writes, inside
    one transaction) are set on the copies staged for announcing after the commit."""
    conn.executemany(_INSERT_EVENT, [(e.process_id, _encode(e)) for e in events])
    last: int = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    first = last - len(events) + 1
    for i, e in enumerate(events):
        e.id = first + i  # the writer owns these until they are announced
    staged.extend(events)


_UPDATE_PROCESS = """UPDATE processes SET status = ?, pc = ?, seq = ?, state = ?, current_step = ?,
    error = ?, form = ?, callback_token = ?, attempts = ?, next_retry_at = ?,
    subscription_id = ?, step_key = ?, step_occurrence = ?, children_group = ?,
    children_pending = ?, updated_at = ? WHERE rowid = ?"""
_INSERT_STEP = """INSERT INTO steps (process, seq, name, status, started_at, finished_at,
    error, traceback, delta, key, actor, reason, branch)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
# The newest touch of a process in a batch is written (and the step count never goes down).
_TOUCH_PROCESS = """UPDATE processes SET status = ?, seq = max(seq, ?), error = ?,
    next_retry_at = ?, updated_at = ? WHERE rowid = ?"""
_UPSERT_BRANCH = """INSERT OR REPLACE INTO branches (process, path, status, step_key,
    step_occurrence, changes, error, attempts, next_retry_at, callback_token)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
# A prefix ends with "/" (or is "" for every branch): "A/1/" never matches "A/10".
_DROP_BRANCHES = """DELETE FROM branches WHERE process = ?1
    AND substr(path, 1, length(?2)) = ?2"""
_LINK = "INSERT OR IGNORE INTO subscription_processes (subscription_id, process_id) VALUES (?, ?)"
_RELEASE = "UPDATE subscriptions SET insync = 1, updated_at = ? WHERE id = ?"
_INSERT_ACTION = "INSERT INTO actions (process, at, action, actor, detail) VALUES (?, ?, ?, ?, ?)"


def _add_checkpoint(batch: _Batch, cp: Checkpoint) -> None:
    p = cp.process
    if isinstance(p, ProcessTouch):
        kept = batch.touches.get(p.pk)
        if kept is None or kept.seq <= p.seq:
            batch.touches[p.pk] = p
    else:
        batch.processes.append(astuple(p))
    for prefix in cp.drop_branches:
        batch.drops.append((p.pk, prefix))
    for b in cp.branches:
        batch.branches.append(astuple(b))
    for s in cp.steps:
        batch.steps.append(astuple(s))
    if cp.subscription is not None:
        batch.subscriptions.append(subscription_values(cp.subscription, p.updated_at))
        if cp.relations is not None:
            batch.relations[cp.subscription["id"]] = cp.relations
        batch.links.append((cp.subscription["id"], cp.process_id))
    if cp.release is not None:
        batch.releases.append((p.updated_at, cp.release))
    for a in cp.actions:
        batch.actions.append(astuple(a))
    batch.events.extend(cp.events)


_INSERT_PROCESS = """INSERT INTO processes (id, workflow, target, status, pc, seq, state, reporter,
    subscription_id, current_step, step_key, step_occurrence, created_at, updated_at, parent_id,
    child_group, child_index, held, idempotency_key, trace_id, idempotency_digest)
    VALUES (?, ?, ?, 'created', 0, 0, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""


def _create_process(conn: sqlite3.Connection, op: NewProcess) -> ProcessRow:
    if op.idempotency_key is not None:
        # Checked and inserted in one transaction of the only writer: two starts with one
        # key make one process (the UNIQUE index is the backstop).
        found = conn.execute(
            f"{SELECT_KEYED} WHERE idempotency_key = ?", (op.idempotency_key,)
        ).fetchone()
        if found is not None:
            return keyed_process(found, op)
    state = op.state
    if op.lock is not None:
        row = conn.execute(SELECT_SUBSCRIPTION, (op.lock,)).fetchone()
        if row is None:
            raise SubscriptionNotFound(f"subscription {op.lock} does not exist")
        sub = subscription_from_row(row)
        lock = op.lock

        def holder() -> str | None:
            found = conn.execute(SELECT_HOLDER, (lock,)).fetchone()
            return found[0] if found else None

        def users() -> list[str]:
            return [r[0] for r in conn.execute(SELECT_USERS, (lock,))]

        refuse_start(sub, op, holder, users)
        conn.execute(
            "UPDATE subscriptions SET insync = 0, updated_at = ? WHERE id = ?",
            (op.created_at, op.lock),
        )
        conn.execute(_LINK, (op.lock, op.id))
        sub["insync"] = False
        state = {**state, "subscription": sub}
    cur = conn.execute(
        _INSERT_PROCESS,
        (
            op.id,
            op.workflow,
            op.target,
            _encode(state),
            op.reporter,
            op.lock,
            op.first_step,
            op.first_key,
            op.created_at,
            op.created_at,
            op.parent_id,
            op.child_group,
            op.child_index,
            int(op.held),
            op.idempotency_key,
            op.trace_id,
            op.idempotency_digest,
        ),
    )
    pk = cur.lastrowid
    assert pk is not None
    conn.execute(_INSERT_ACTION, (pk, op.created_at, START, op.actor, None))
    return op.created_row(pk, state)


_SET_NEXT = """INSERT INTO schedules (name, next_fire_at) VALUES (?, ?)
    ON CONFLICT (name) DO UPDATE SET next_fire_at = excluded.next_fire_at"""
_CLAIM = "INSERT OR IGNORE INTO schedule_runs (name, fire_at, process_id) VALUES (?, ?, NULL)"
_RUN = """INSERT INTO schedule_runs (name, fire_at, process_id) VALUES (?, ?, ?)
    ON CONFLICT (name, fire_at) DO UPDATE SET process_id = excluded.process_id"""
_LAST = """INSERT INTO schedules (name, last_process_id, last_fire_at) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET last_process_id = excluded.last_process_id,
    last_fire_at = excluded.last_fire_at"""
_SCHEDULE_RUN = """INSERT INTO schedules (name, last_process_id, last_fire_at, next_fire_at,
    skipped) VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET
    last_process_id = coalesce(excluded.last_process_id, last_process_id),
    last_fire_at = CASE WHEN excluded.last_process_id IS NULL THEN last_fire_at
                        ELSE excluded.last_fire_at END,
    next_fire_at = excluded.next_fire_at, skipped = skipped + excluded.skipped"""


def _record_schedule_run(conn: sqlite3.Connection, op: ScheduleRun) -> bool:
    cur = conn.execute(
        "INSERT OR IGNORE INTO schedule_runs (name, fire_at, process_id) VALUES (?, ?, ?)",
        (op.name, op.fire_at, op.process_id),
    )
    if cur.rowcount == 0:
        return False
    conn.execute(
        _SCHEDULE_RUN,
        (op.name, op.process_id, op.fire_at, op.next_fire_at, int(op.skipped)),
    )
    return True


def _claim(conn: sqlite3.Connection, op: ScheduleClaim) -> bool:
    fresh = conn.execute(_CLAIM, (op.name, op.fire_at)).rowcount == 1
    conn.execute(_SET_NEXT, (op.name, op.next_fire_at))
    return fresh


def _started(conn: sqlite3.Connection, op: ScheduleStarted) -> None:
    conn.execute(_RUN, (op.name, op.fire_at, op.process_id))
    conn.execute(_LAST, (op.name, op.process_id, op.fire_at))


def _request_abort(conn: sqlite3.Connection, op: RequestAbort) -> bool:
    if conn.execute(REQUEST_ABORT, (op.by, op.pk)).rowcount == 0:
        return False
    conn.execute(_INSERT_ACTION, abort_request_action(op))
    return True


def _set_note(conn: sqlite3.Connection, op: SetNote) -> bool:
    cur = conn.execute(
        "UPDATE subscriptions SET note = ? WHERE id = ?", (op.note, op.subscription_id)
    )
    if cur.rowcount == 0:
        return False
    conn.execute(INSERT_SUBSCRIPTION_ACTION, astuple_note(op))
    return True


def _checkpoint_now(conn: sqlite3.Connection, cp: Checkpoint, staged: list[Event]) -> None:
    rows = _Batch()
    _add_checkpoint(rows, cp)
    rows.flush(conn, staged)


def _create_children(
    conn: sqlite3.Connection, children: list[NewProcess], staged: list[Event]
) -> list[ProcessRow]:
    created = []
    for child in children:
        try:
            created.append(_create_process(conn, child))
        except (SubscriptionLocked, SubscriptionNotFound) as exc:
            raise ChildRefused(child.child_index, exc.detail) from None
        _insert_events(conn, child.events, staged)
    return created


def _start_children(
    conn: sqlite3.Connection, op: StartChildren, staged: list[Event]
) -> list[ProcessRow]:
    created = _create_children(conn, op.children, staged)
    _checkpoint_now(conn, op.parent, staged)
    return created


def _replace_children(
    conn: sqlite3.Connection, op: ReplaceChildren, staged: list[Event]
) -> list[ProcessRow]:
    conn.executemany(
        "UPDATE processes SET child_group = NULL WHERE id = ?", [(pid,) for pid in op.detach]
    )
    return _start_children(conn, StartChildren(parent=op.parent, children=op.children), staged)


_COUNT_DOWN = """UPDATE processes SET children_pending = children_pending - 1
    WHERE id = ? AND children_group = ? AND children_pending > 0"""
_NEXT_HELD = """SELECT id FROM processes WHERE parent_id = ? AND child_group = ? AND held = 1
    ORDER BY child_index LIMIT 1"""


def _finish_child(conn: sqlite3.Connection, cp: Checkpoint, staged: list[Event]) -> ChildFinished:
    """A child's last checkpoint, and its parent's count of unfinished children with it."""
    _checkpoint_now(conn, cp, staged)
    link = cp.child_of
    assert link is not None
    conn.execute(_COUNT_DOWN, (link.parent_id, link.group))
    row = conn.execute(
        "SELECT status, children_pending, children_group, workflow, parent_id FROM processes "
        "WHERE id = ?",
        (link.parent_id,),
    ).fetchone()
    if row is None or row[0] != "awaiting_children" or row[2] != link.group:
        return ChildFinished()  # aborted, or moved on: nothing to wake, nothing to start
    answer = ChildFinished()
    if row[1] == 0:
        conn.execute(
            "UPDATE processes SET status = 'running', updated_at = ? WHERE id = ?",
            (cp.process.updated_at, link.parent_id),
        )
        answer.woke = link.parent_id
        woke = Event(
            id=0,
            kind="process",
            process_id=link.parent_id,
            workflow=row[3],
            parent_id=row[4],
            status=ProcessStatus.RUNNING,
            at=datetime.now(UTC),
        )
        _insert_events(conn, [woke], staged)
    held = conn.execute(_NEXT_HELD, (link.parent_id, link.group)).fetchone()
    if held is not None:
        conn.execute("UPDATE processes SET held = 0 WHERE id = ?", (held[0],))
        answer.started = held[0]
        row = conn.execute(f"{SELECT_PROCESS} WHERE id = ?", (held[0],)).fetchone()
        answer.started_row = process_row(row) if row is not None else None
    return answer


def _plan(conn: sqlite3.Connection, op: SchedulePlan) -> None:
    conn.executemany(_SET_NEXT, list(op.next_fire_at.items()))


def _place(conn: sqlite3.Connection, op: Positions) -> None:
    conn.executemany(
        "UPDATE processes SET step_key = ?, step_occurrence = ? WHERE rowid = ?",
        [(key, occurrence, pk) for pk, key, occurrence in op.rows],
    )


def _prune(conn: sqlite3.Connection, op: Prune) -> Pruned:
    where, params = prunable_where(op.retention)
    if where is None:
        return Pruned()
    rows = conn.execute(
        f"SELECT rowid, id FROM processes WHERE {where} LIMIT ?", (*params, op.limit)
    ).fetchall()
    if not rows:
        return Pruned()
    pks = [pk for pk, _ in rows]
    ids = [pid for _, pid in rows]
    marks = ", ".join("?" * len(rows))
    steps = conn.execute(f"DELETE FROM steps WHERE process IN ({marks})", pks).rowcount
    actions = conn.execute(f"DELETE FROM actions WHERE process IN ({marks})", pks).rowcount
    # Subscriptions stay; their links to the processes go. A schedule keeps its row (its
    # last run may be one of these); the runs' dedupe rows of the processes go.
    conn.execute(f"DELETE FROM subscription_processes WHERE process_id IN ({marks})", ids)
    conn.execute(f"DELETE FROM schedule_runs WHERE process_id IN ({marks})", ids)
    conn.execute(f"DELETE FROM branches WHERE process IN ({marks})", pks)
    conn.execute(f"DELETE FROM processes WHERE rowid IN ({marks})", pks)
    if op.retention.tasks_before is not None:
        # Fire times skipped because the previous run was still going start no process.
        conn.execute(
            "DELETE FROM schedule_runs WHERE process_id IS NULL AND fire_at < ?",
            (op.retention.tasks_before,),
        )
    return Pruned(processes=len(rows), steps=steps, actions=actions)


#: How each operation other than a plain checkpoint is applied, inside the batch's transaction.
_APPLY: dict[type[Any], Callable[[sqlite3.Connection, Any], Any]] = {
    Prune: _prune,
    NewProcess: _create_process,
    ScheduleRun: _record_schedule_run,
    ScheduleClaim: _claim,
    ScheduleStarted: _started,
    SchedulePlan: _plan,
    Positions: _place,
    SetNote: _set_note,
    RequestAbort: _request_abort,
}

#: Operations that store events of their own (``staged`` for announcing after the commit).
_APPLY_STAGED: dict[type[Any], Callable[[sqlite3.Connection, Any, list[Event]], Any]] = {
    StartChildren: _start_children,
    ReplaceChildren: _replace_children,
    Checkpoint: _finish_child,  # only a child's last one comes here (see _apply)
}


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

    #: A batch's actors all wake in one event-loop iteration: a bound keeps that iteration
    #: short (API latency) while still sharing each fsync among hundreds of checkpoints.
    MAX_BATCH = 256
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
            self.loop.call_soon_threadsafe(_resolve, results, events, self.event_sink)
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
        finally:
            self.lock.release()
        if events and self.event_sink is not None:
            self.event_sink(events)  # on the loop's thread already: announce at once
        if not ok:
            raise value
        return True, value

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
            environmental = isinstance(exc, sqlite3.Error) and (
                (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _ENVIRONMENTAL
            )
            if len(batch) > 1 and not environmental:
                # One bad operation must not sink the others: commit each on its own.
                return [r for item in batch for r in self._commit([item])]
            if not isinstance(exc, sqlite3.Error):
                # A bug in one operation, not trouble with the database.
                log.error("write operation failed: %r", exc)
                return [(fut, exc, False) for _, fut in batch]
            return self._fail(batch, str(exc), StoreError(f"database write failed: {exc}"))
        self.succeeded(len(batch), started)
        return results

    def _apply(self, batch: list[_Item]) -> list[tuple[asyncio.Future[Any] | None, Any, bool]]:
        conn = self.conn
        results: list[tuple[asyncio.Future[Any] | None, Any, bool]] = []
        rows = _Batch()
        staged: list[Event] = []
        if not conn.in_transaction:  # an inline commit has begun it (``commit_now``)
            conn.execute("BEGIN IMMEDIATE")
        try:
            for op, fut in batch:
                if isinstance(op, Checkpoint) and op.child_of is None:
                    _add_checkpoint(rows, op)
                    results.append((fut, None, True))
                    continue
                rows.flush(conn, staged)  # keep the order of operations that read others'
                if isinstance(op, NewProcess) and op.lock is None and op.idempotency_key is None:
                    # A plain insert is never refused; a failure fails the batch, which is
                    # then retried one operation at a time.
                    results.append((fut, _create_process(conn, op), True))
                    if op.events:
                        _insert_events(conn, op.events, staged)
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    if type(op) in _APPLY_STAGED:
                        value = _APPLY_STAGED[type(op)](conn, op, staged)
                    else:
                        value = _APPLY[type(op)](conn, op)
                    if isinstance(op, NewProcess) and op.events and value.id == op.id:
                        _insert_events(conn, op.events, staged)
                except sqlite3.Error:
                    raise
                except Exception as exc:  # refused (locked, not found), or a bug
                    conn.execute("ROLLBACK TO op")
                    results.append((fut, exc, False))
                else:
                    results.append((fut, value, True))
                conn.execute("RELEASE op")
            rows.flush(conn, staged)
            self._prune_events(staged)
            if faults.ENABLED:
                faults.point("in_commit")
            conn.execute("COMMIT")
            self._announce.extend(staged)
            if faults.ENABLED:
                faults.point("after_commit")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

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
