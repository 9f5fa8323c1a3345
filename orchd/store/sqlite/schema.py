"""The SQLite schema, created and migrated forward by orchd itself, and how a connection is set
up (WAL, the configured ``synchronous``)."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable

from orchd.errors import StoreError

log = logging.getLogger("orchd.store")


def _digest_callback_tokens(conn: sqlite3.Connection) -> None:
    """Version 1 kept callback tokens as given; they are kept as digests from version 2 on,
    so reading the database no longer hands out the capability to answer a wait."""
    # Imported here: ``orchd check`` reads SCHEMA_VERSION on the CLI's fast path.
    from orchd.store.base import token_digest

    rows = conn.execute(
        "SELECT rowid, callback_token FROM processes WHERE callback_token IS NOT NULL"
    ).fetchall()
    conn.executemany(
        "UPDATE processes SET callback_token = ? WHERE rowid = ?",
        [(token_digest(token), rowid) for rowid, token in rows],
    )


#: Forward migrations, keyed by the version each brings a database to (from the one before);
#: a step is a statement or a function of the connection, run inside the migration's
#: transaction. A new version is a new key here, and nothing else: ``SCHEMA_VERSION`` and the
#: checks of ``orchd check`` (``orchd.store.maintenance``) follow.
MIGRATIONS: dict[int, list[str | Callable[[sqlite3.Connection], None]]] = {
    1: [
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
    2: [
        # Who asked for what (README "The HTTP API"): every start, resume, retry, skip, abort,
        # callback.
        """CREATE TABLE actions (
            process INTEGER NOT NULL,
            at REAL NOT NULL,
            action TEXT NOT NULL,
            actor TEXT NOT NULL,
            detail TEXT
        )""",
        "CREATE INDEX actions_by_process ON actions (process)",
        _digest_callback_tokens,
    ],
    3: [
        # Step identity (README "Changing workflows safely"): a process's position is its next
        # step's key and that
        # key's occurrence; rows from before stay NULL until the engine translates them from
        # ``pc`` with the code it loads (``Engine.open``), once.
        "ALTER TABLE processes ADD COLUMN step_key TEXT",
        "ALTER TABLE processes ADD COLUMN step_occurrence INTEGER",
        "ALTER TABLE steps ADD COLUMN key TEXT",
        # Who skipped a step and why (operator remediation).
        "ALTER TABLE steps ADD COLUMN actor TEXT",
        "ALTER TABLE steps ADD COLUMN reason TEXT",
    ],
    4: [
        # Child processes (README "Child processes"). A child names its parent, the fan-out it
        # belongs to
        # (``child_group``: the parent's children step run) and its element; ``held`` children
        # wait as created for a free slot. A waiting parent counts its unfinished children.
        "ALTER TABLE processes ADD COLUMN parent_id TEXT",
        "ALTER TABLE processes ADD COLUMN child_group INTEGER",
        "ALTER TABLE processes ADD COLUMN child_index INTEGER",
        "ALTER TABLE processes ADD COLUMN held INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE processes ADD COLUMN children_group INTEGER",
        "ALTER TABLE processes ADD COLUMN children_pending INTEGER",
        "CREATE INDEX processes_by_parent ON processes (parent_id, child_group, held, child_index)",
    ],
    5: [
        # Idempotent starts (README "Operations"): a key names at most one process while it exists.
        "ALTER TABLE processes ADD COLUMN idempotency_key TEXT",
        "CREATE UNIQUE INDEX processes_by_idempotency_key ON processes (idempotency_key)",
        # Retention finds finished processes by status and age.
        "CREATE INDEX processes_by_age ON processes (status, updated_at)",
        # Durable events (README "The HTTP API"): the id is what SSE clients resume from, so it must
        # never be reused, even after every row was pruned (AUTOINCREMENT).
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            process_id TEXT NOT NULL,
            data BLOB NOT NULL
        )""",
    ],
    6: [
        # Parallel branches (README "Parallel branches"). A step record names its branch (NULL on
        # the main
        # line); a started branch keeps where it stands and what it changed until its fork
        # joins, so each branch goes on from its own last commit after a crash.
        "ALTER TABLE steps ADD COLUMN branch TEXT",
        """CREATE TABLE branches (
            process INTEGER NOT NULL,
            path TEXT NOT NULL,
            status TEXT NOT NULL,
            step_key TEXT,
            step_occurrence INTEGER NOT NULL DEFAULT 0,
            changes BLOB,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_retry_at REAL,
            callback_token TEXT,
            PRIMARY KEY (process, path)
        ) WITHOUT ROWID""",
        "CREATE INDEX branches_by_token ON branches (callback_token) "
        "WHERE callback_token IS NOT NULL",
    ],
    7: [
        # Traces: every process belongs to a W3C trace, kept across restarts.
        "ALTER TABLE processes ADD COLUMN trace_id TEXT",
        # Products: a subscription's version (one more with every saved change, against lost
        # updates), an operator's note, the text a search looks in, and who did what to it.
        "ALTER TABLE subscriptions ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE subscriptions ADD COLUMN note TEXT",
        "ALTER TABLE subscriptions ADD COLUMN search TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX subscriptions_by_product ON subscriptions (product, status)",
        # A subscription depends on each one its Refs name (``path``: where, e.g. saps[1].port).
        """CREATE TABLE subscription_relations (
            subscription_id TEXT NOT NULL,
            path TEXT NOT NULL,
            depends_on TEXT NOT NULL,
            PRIMARY KEY (subscription_id, path)
        ) WITHOUT ROWID""",
        "CREATE INDEX subscription_relations_by_target ON subscription_relations (depends_on)",
        """CREATE TABLE subscription_actions (
            subscription_id TEXT NOT NULL,
            at REAL NOT NULL,
            action TEXT NOT NULL,
            actor TEXT NOT NULL,
            detail TEXT
        )""",
        "CREATE INDEX subscription_actions_by_subscription ON subscription_actions "
        "(subscription_id)",
    ],
    8: [
        # An Idempotency-Key answers only the input it started its process with (README
        # "Operations"): the SHA-256 of that input's JSON (keys sorted). NULL for keys used
        # before.
        "ALTER TABLE processes ADD COLUMN idempotency_digest TEXT",
    ],
    9: [
        # An abort asked of a running process is committed with who asked (and an action
        # row), so it is applied after a restart too, never forgotten.
        "ALTER TABLE processes ADD COLUMN abort_requested TEXT",
    ],
}
#: The version this orchd writes: the newest migration's.
SCHEMA_VERSION = max(MIGRATIONS)
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))


#: A new database file's permission bits, whatever the umask (issue 26 item 9): its owner
#: reads and writes, its group (the CLI's users: ``orchd check``, ``orchd backup``) reads,
#: others nothing. SQLite gives the ``-wal`` and ``-shm`` it creates the database's own bits.
DATABASE_MODE = 0o640


def create_database_file(path: str) -> None:
    """Create ``path`` empty with `DATABASE_MODE` unless something is there already (an empty
    file is an empty database to SQLite); SQLite would create it ``0644`` less the umask."""
    if path == ":memory:" or path.startswith("file:"):
        return
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, DATABASE_MODE)
    except OSError:
        return  # there already, or not creatable: SQLite's own open says why
    os.close(fd)


def connect(path: str, synchronous: str) -> sqlite3.Connection:
    create_database_file(path)
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
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        for statement in MIGRATIONS[target]:
            if isinstance(statement, str):
                conn.execute(statement)
            else:
                statement(conn)
        conn.execute(f"PRAGMA user_version = {target}")
        conn.execute("COMMIT")
        log.info("migrated database schema to version %d", target)
    return SCHEMA_VERSION
