"""The durable store: one SQLite file in WAL mode.

Writes go through one writer thread that drains a queue of operations from every actor and
commits them together (group commit): while one transaction is being made durable, the next
batch gathers, so many actors share one fsync and every actor still waits for its own commit.
Reads use a separate aiosqlite connection, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiosqlite
import msgspec
from msgspec.structs import astuple

from orchd import _faults as faults
from orchd.errors import StoreError, SubscriptionLocked, SubscriptionNotFound

log = logging.getLogger("orchd.store")

SCHEMA_VERSION = 1

#: Forward migrations: MIGRATIONS[n] takes a database from version n to n + 1.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE processes (
            rowid INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            workflow TEXT NOT NULL,
            target TEXT NOT NULL,
            status TEXT NOT NULL,
            pc INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            state BLOB NOT NULL,
            reporter TEXT,
            subscription_id TEXT,
            current_step TEXT,
            error TEXT,
            form BLOB,
            callback_token TEXT UNIQUE,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_retry_at REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX processes_by_status ON processes (status)",
        "CREATE INDEX processes_by_workflow ON processes (workflow)",
        """CREATE TABLE steps (
            process INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL NOT NULL,
            error TEXT,
            traceback TEXT,
            delta BLOB,
            PRIMARY KEY (process, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE subscriptions (
            rowid INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            product TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL,
            insync INTEGER NOT NULL,
            start_date TEXT,
            end_date TEXT,
            attributes BLOB NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX subscriptions_by_customer ON subscriptions (customer_id)",
        "CREATE INDEX subscriptions_by_status ON subscriptions (status)",
        """CREATE TABLE subscription_processes (
            subscription_id TEXT NOT NULL,
            process_id TEXT NOT NULL,
            PRIMARY KEY (subscription_id, process_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE schedules (
            name TEXT PRIMARY KEY,
            last_process_id TEXT,
            last_fire_at REAL,
            next_fire_at REAL,
            skipped INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE schedule_runs (
            name TEXT NOT NULL,
            fire_at REAL NOT NULL,
            process_id TEXT,
            PRIMARY KEY (name, fire_at)
        ) WITHOUT ROWID""",
    ],
]

_encode = msgspec.json.Encoder().encode

SUBSCRIPTION_FIELDS = (
    "id",
    "product",
    "customer_id",
    "description",
    "status",
    "insync",
    "start_date",
    "end_date",
    "attributes",
)


class ProcessWrite(msgspec.Struct, kw_only=True, array_like=True):
    """The whole mutable part of a process row, as a checkpoint sets it.

    Fields are in the order of ``_UPDATE_PROCESS``'s parameters: the writer binds
    ``msgspec.structs.astuple(write)`` directly.
    """

    status: str
    pc: int
    seq: int
    state: bytes
    current_step: str | None
    error: str | None = None
    form: bytes | None = None
    callback_token: str | None = None
    attempts: int = 0
    next_retry_at: float | None = None
    subscription_id: str | None = None
    updated_at: float
    #: The row's integer key (processes.rowid), which the steps table uses too.
    pk: int


class StepWrite(msgspec.Struct, kw_only=True, array_like=True):
    """One step record, fields in the order of ``_INSERT_STEP``'s parameters."""

    pk: int
    seq: int
    name: str
    status: str
    started_at: float
    finished_at: float
    error: str | None = None
    traceback: str | None = None
    delta: bytes | None = None


class Checkpoint(msgspec.Struct, kw_only=True):
    """Everything one step changes, committed in one transaction."""

    process_id: str
    process: ProcessWrite
    steps: list[StepWrite] = []
    #: ``state["subscription"]`` to save (insert or update), when the step changed it.
    subscription: dict[str, Any] | None = None
    #: A subscription to mark insync again without touching State (abort of MODIFY/TERMINATE).
    release: str | None = None


class NewProcess(msgspec.Struct, kw_only=True):
    """A process to create; for MODIFY/TERMINATE it locks ``lock`` in the same transaction."""

    id: str
    workflow: str
    target: str
    reporter: str | None
    state: dict[str, Any]
    lock: str | None = None
    created_at: float


class ScheduleRun(msgspec.Struct, kw_only=True):
    """A scheduler's record that one fire time ran (unique per schedule and time)."""

    name: str
    fire_at: float
    process_id: str | None
    next_fire_at: float | None
    skipped: bool = False


Op = Checkpoint | NewProcess | ScheduleRun | Callable[[sqlite3.Connection], Any]


class _Batch:
    """Rows of plain checkpoints gathered for executemany."""

    def __init__(self) -> None:
        self.processes: list[tuple[Any, ...]] = []
        self.steps: list[tuple[Any, ...]] = []
        self.subscriptions: list[tuple[Any, ...]] = []
        self.links: list[tuple[str, str]] = []
        self.releases: list[tuple[float, str]] = []

    def flush(self, conn: sqlite3.Connection) -> None:
        if self.subscriptions:
            if faults.ENABLED:
                faults.point("subscription_save")
            conn.executemany(_UPSERT_SUBSCRIPTION, self.subscriptions)
        if self.processes:
            conn.executemany(_UPDATE_PROCESS, self.processes)
        if self.steps:
            conn.executemany(_INSERT_STEP, self.steps)
        if self.links:
            conn.executemany(_LINK, self.links)
        if self.releases:
            conn.executemany(_RELEASE, self.releases)
        self.__init__()  # type: ignore[misc]


_UPDATE_PROCESS = """UPDATE processes SET status = ?, pc = ?, seq = ?, state = ?, current_step = ?,
    error = ?, form = ?, callback_token = ?, attempts = ?, next_retry_at = ?,
    subscription_id = ?, updated_at = ? WHERE rowid = ?"""
_INSERT_STEP = """INSERT INTO steps (process, seq, name, status, started_at, finished_at,
    error, traceback, delta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_UPSERT_SUBSCRIPTION = """INSERT INTO subscriptions (id, product, customer_id, description,
    status, insync, start_date, end_date, attributes, created_at, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET product = excluded.product,
    customer_id = excluded.customer_id, description = excluded.description,
    status = excluded.status, insync = excluded.insync, start_date = excluded.start_date,
    end_date = excluded.end_date, attributes = excluded.attributes,
    updated_at = excluded.updated_at"""
_LINK = "INSERT OR IGNORE INTO subscription_processes (subscription_id, process_id) VALUES (?, ?)"
_RELEASE = "UPDATE subscriptions SET insync = 1, updated_at = ? WHERE id = ?"


def _subscription_row(sub: dict[str, Any], now: float) -> tuple[Any, ...]:
    return (
        sub["id"],
        sub["product"],
        sub["customer_id"],
        sub.get("description") or "",
        sub.get("status") or "initial",
        1 if sub.get("insync") else 0,
        sub.get("start_date"),
        sub.get("end_date"),
        _encode(sub.get("attributes") or {}),
        now,
        now,
    )


def _add_checkpoint(batch: _Batch, cp: Checkpoint, process_id: str) -> None:
    p = cp.process
    batch.processes.append(astuple(p))
    for s in cp.steps:
        batch.steps.append(astuple(s))
    if cp.subscription is not None:
        batch.subscriptions.append(_subscription_row(cp.subscription, p.updated_at))
        batch.links.append((cp.subscription["id"], process_id))
    if cp.release is not None:
        batch.releases.append((p.updated_at, cp.release))


def subscription_from_row(row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    """A subscriptions row (columns in SUBSCRIPTION_FIELDS order) as State holds it."""
    sub = dict(zip(SUBSCRIPTION_FIELDS, row, strict=True))
    sub["insync"] = bool(sub["insync"])
    sub["attributes"] = msgspec.json.decode(sub["attributes"])
    return sub


_SELECT_SUBSCRIPTION = f"SELECT {', '.join(SUBSCRIPTION_FIELDS)} FROM subscriptions WHERE id = ?"


def _create_process(conn: sqlite3.Connection, op: NewProcess) -> tuple[int, dict[str, Any]]:
    state = op.state
    if op.lock is not None:
        row = conn.execute(_SELECT_SUBSCRIPTION, (op.lock,)).fetchone()
        if row is None:
            raise SubscriptionNotFound(f"subscription {op.lock} does not exist")
        sub = subscription_from_row(row)
        if sub["status"] == "terminated":
            raise SubscriptionLocked(f"subscription {op.lock} is terminated")
        if not sub["insync"]:
            raise SubscriptionLocked(
                f"subscription {op.lock} is not insync: another process holds it"
            )
        conn.execute(
            "UPDATE subscriptions SET insync = 0, updated_at = ? WHERE id = ?",
            (op.created_at, op.lock),
        )
        conn.execute(_LINK, (op.lock, op.id))
        sub["insync"] = False
        state = {**state, "subscription": sub}
    cur = conn.execute(
        """INSERT INTO processes (id, workflow, target, status, pc, seq, state, reporter,
        subscription_id, current_step, created_at, updated_at)
        VALUES (?, ?, ?, 'created', 0, 0, ?, ?, ?, 'init', ?, ?)""",
        (
            op.id,
            op.workflow,
            op.target,
            _encode(state),
            op.reporter,
            op.lock,
            op.created_at,
            op.created_at,
        ),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid, state


def _record_schedule_run(conn: sqlite3.Connection, op: ScheduleRun) -> bool:
    """Return False when this fire time was already recorded (a replay after a crash)."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO schedule_runs (name, fire_at, process_id) VALUES (?, ?, ?)",
        (op.name, op.fire_at, op.process_id),
    )
    if cur.rowcount == 0:
        return False
    conn.execute(
        """INSERT INTO schedules (name, last_process_id, last_fire_at, next_fire_at, skipped)
        VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET
        last_process_id = coalesce(excluded.last_process_id, last_process_id),
        last_fire_at = CASE WHEN excluded.last_process_id IS NULL THEN last_fire_at
                            ELSE excluded.last_fire_at END,
        next_fire_at = excluded.next_fire_at, skipped = skipped + excluded.skipped""",
        (op.name, op.process_id, op.fire_at, op.next_fire_at, int(op.skipped)),
    )
    return True


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


class _Writer(threading.Thread):
    """Owns the only writing connection; commits batches of operations."""

    #: A batch's actors all wake in one event-loop iteration: a bound keeps that iteration
    #: short (API latency) while still sharing each fsync among hundreds of checkpoints.
    MAX_BATCH = 256

    def __init__(
        self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop, path: str
    ) -> None:
        super().__init__(name="orchd-writer", daemon=True)
        self.conn = conn
        self.loop = loop
        self.path = path
        st = os.stat(path)
        #: (device, inode) of the file opened; another one at ``path`` means it was replaced.
        self.identity = (st.st_dev, st.st_ino)
        self.queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self.batches = 0
        self.committed = 0
        self.last_batch = 0
        self.commit_seconds = 0.0
        self.failing: str | None = None

    def run(self) -> None:
        stopping = False
        while not stopping:
            first = self.queue.get()
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
            results = self._commit(batch)
            self.loop.call_soon_threadsafe(_resolve, results)
        self.conn.close()

    def moved(self) -> str | None:
        """Why the file at ``path`` is no longer the one being written, if it is not."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"database file {self.path} was deleted"
        except OSError:
            return None  # cannot tell; SQLite reports real I/O trouble itself
        if (st.st_dev, st.st_ino) != self.identity:
            return f"database file {self.path} was replaced"
        return None

    def _fail(
        self, batch: list[_Item], reason: str, exc: BaseException
    ) -> list[tuple[asyncio.Future[Any] | None, Any, bool]]:
        if reason != self.failing:
            log.error("checkpoint commit failed: %s", reason)  # once per new reason
        self.failing = reason
        return [(fut, exc, False) for _, fut in batch]

    def _commit(self, batch: list[_Item]) -> list[tuple[asyncio.Future[Any] | None, Any, bool]]:
        started = time.perf_counter()
        moved = self.moved()
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
        if self.failing is not None:
            log.info("checkpoint commits succeed again after: %s", self.failing)
        self.failing = None
        self.batches += 1
        self.committed += len(batch)
        self.last_batch = len(batch)
        self.commit_seconds += time.perf_counter() - started
        return results

    def _apply(self, batch: list[_Item]) -> list[tuple[asyncio.Future[Any] | None, Any, bool]]:
        conn = self.conn
        results: list[tuple[asyncio.Future[Any] | None, Any, bool]] = []
        rows = _Batch()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op, fut in batch:
                if isinstance(op, Checkpoint):
                    _add_checkpoint(rows, op, op.process_id)
                    results.append((fut, None, True))
                    continue
                rows.flush(conn)  # keep the order of operations that read what others wrote
                if isinstance(op, NewProcess) and op.lock is None:
                    # A plain insert is never refused; a failure fails the batch, which is
                    # then retried one operation at a time.
                    results.append((fut, _create_process(conn, op), True))
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    if isinstance(op, NewProcess):
                        value: Any = _create_process(conn, op)
                    elif isinstance(op, ScheduleRun):
                        value = _record_schedule_run(conn, op)
                    else:
                        value = op(conn)
                except sqlite3.Error:
                    raise
                except Exception as exc:  # refused (locked, not found) or a bug in the op
                    conn.execute("ROLLBACK TO op")
                    results.append((fut, exc, False))
                else:
                    results.append((fut, value, True))
                conn.execute("RELEASE op")
            rows.flush(conn)
            if faults.ENABLED:
                faults.point("in_commit")
            conn.execute("COMMIT")
            if faults.ENABLED:
                faults.point("after_commit")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results


def _resolve(results: list[tuple[asyncio.Future[Any] | None, Any, bool]]) -> None:
    for fut, value, ok in results:
        if fut is None or fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = OFF")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; refuse a database from a newer orchd."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema version {version}, newer than this orchd ({SCHEMA_VERSION})"
        )
    for target in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        for statement in MIGRATIONS[target]:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {target + 1}")
        conn.execute("COMMIT")
        log.info("migrated database schema to version %d", target + 1)
    return SCHEMA_VERSION


class Store:
    """The database, opened once per engine."""

    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self._tmpdir: str | None = None
        if path == ":memory:":
            # The reader and the writer need one database between them, and the engine should
            # behave as it does on a file (WAL, group commit): use a private temporary file.
            self._tmpdir = tempfile.mkdtemp(prefix="orchd-")
            path = os.path.join(self._tmpdir, "orchd.db")
            synchronous = "OFF" if synchronous == "FULL" else synchronous
        self.path = path
        self.synchronous = synchronous
        self._writer: _Writer | None = None
        self._reader: aiosqlite.Connection | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn = await asyncio.to_thread(self._open_writer)
            self._writer = _Writer(conn, loop, self.path)
            self._writer.start()
            self._reader = await aiosqlite.connect(self.path)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        await self._reader.execute("PRAGMA query_only = 1")

    def _open_writer(self) -> sqlite3.Connection:
        conn = _connect(self.path, self.synchronous)
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.queue.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # -- writes ---------------------------------------------------------------------------

    def submit(self, op: Op) -> asyncio.Future[Any]:
        """Queue a write; the future resolves once its transaction has committed.

        The commit happens in the writer thread whatever becomes of the future, so cancelling
        the caller never cancels a commit that has begun.
        """
        if self._writer is None:
            raise StoreError("the store is closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._writer.queue.put((op, fut))
        return fut

    async def write(self, op: Op) -> Any:
        """Submit and wait for the commit. No shield is needed: the commit happens in the
        writer thread whether or not anyone still waits for it."""
        return await self.submit(op)

    @property
    def stats(self) -> dict[str, Any]:
        w = self._writer
        if w is None:
            return {}
        return {
            "batches": w.batches,
            "committed": w.committed,
            "last_batch": w.last_batch,
            "commit_seconds": w.commit_seconds,
            "queue": w.queue.qsize(),
            # An idle writer notices nothing: look at the file whenever asked (health, metrics).
            "failing": w.failing or w.moved(),
        }

    # -- reads ----------------------------------------------------------------------------

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        # One trip to the reader thread per query (execute and fetch together): under load
        # every trip waits for the event loop, so fewer trips mean a faster API.
        rows = await self._require_reader().execute_fetchall(sql, tuple(params))
        return list(rows)

    def _require_reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("the store is closed")
        return self._reader
