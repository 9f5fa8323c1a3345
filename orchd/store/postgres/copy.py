"""``orchd migrate --to postgresql://...``: a stopped SQLite database into an empty PostgreSQL one.

Every row is copied (processes, step records, actions, subscriptions and their links,
schedules and their runs, the events kept) with its key, so process ids, cursors and SSE event
ids stay valid; then the keys' sequences are moved past what was copied. All of it is one
transaction on the target, committed only when every table's count equals the source's: a
refused or failed migration leaves the target as empty as it was.

Exit statuses, the CLI's: 0 copied and verified; 1 refused or failed (a daemon still runs on
the source, the target is not empty, the counts differ, the server refuses); 2 usage (no
``--to`` PostgreSQL URL, a source that is not a SQLite database orchd can read).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from orchd.state import NUL_ESCAPE, nul_at
from orchd.store.maintenance import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    MaintenanceError,
    connect_readonly,
    database_path,
)
from orchd.store.postgres import codecs, redact
from orchd.store.postgres.schema import migrate
from orchd.store.sqlite.schema import SCHEMA_VERSION as SQLITE_VERSION

#: Rows per COPY round trip.
CHUNK = 5000

Convert = Callable[[tuple[Any, ...]], tuple[Any, ...]]


def _same(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row


def _bool_at(*positions: int) -> Convert:
    def convert(row: tuple[Any, ...]) -> tuple[Any, ...]:
        values = list(row)
        for i in positions:
            values[i] = bool(values[i])
        return tuple(values)

    return convert


_PROCESS_COLUMNS = (
    "rowid", "id", "workflow", "target", "status", "pc", "seq", "state", "reporter",
    "subscription_id", "current_step", "error", "form", "callback_token", "attempts",
    "next_retry_at", "created_at", "updated_at", "step_key", "step_occurrence", "parent_id",
    "child_group", "child_index", "held", "children_group", "children_pending", "idempotency_key",
    "trace_id", "idempotency_digest", "abort_requested",
)  # fmt: skip

#: (table, its columns on both sides, how a SQLite row becomes a PostgreSQL one). Actions have
#: no key column on SQLite: their rowid (their order) becomes the key.
TABLES: list[tuple[str, tuple[str, ...], Convert]] = [
    ("processes", _PROCESS_COLUMNS, _bool_at(_PROCESS_COLUMNS.index("held"))),
    (
        "steps",
        (
            "process",
            "seq",
            "name",
            "status",
            "started_at",
            "finished_at",
            "error",
            "traceback",
            "delta",
            "key",
            "actor",
            "reason",
            "branch",
        ),
        _same,
    ),  # fmt: skip
    (
        "branches",
        (
            "process",
            "path",
            "status",
            "step_key",
            "step_occurrence",
            "changes",
            "error",
            "attempts",
            "next_retry_at",
            "callback_token",
        ),
        _same,
    ),  # fmt: skip
    ("actions", ("rowid", "process", "at", "action", "actor", "detail"), _same),
    (
        "subscriptions",
        (
            "rowid",
            "id",
            "product",
            "customer_id",
            "description",
            "status",
            "insync",
            "start_date",
            "end_date",
            "attributes",
            "created_at",
            "updated_at",
            "version",
            "note",
            "search",
        ),
        _bool_at(6),
    ),  # fmt: skip
    ("subscription_processes", ("subscription_id", "process_id"), _same),
    ("subscription_relations", ("subscription_id", "path", "depends_on"), _same),
    (
        "subscription_actions",
        ("rowid", "subscription_id", "at", "action", "actor", "detail"),
        _same,
    ),
    ("schedules", ("name", "last_process_id", "last_fire_at", "next_fire_at", "skipped"), _same),
    ("schedule_runs", ("name", "fire_at", "process_id"), _same),
    ("events", ("id", "process_id", "data"), _same),
]


def stopped(path: str) -> None:
    """Refuse a database a daemon still runs on (it holds the file's lock, orchd.daemon)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise MaintenanceError(
            f"{path} is in use by a running orchd; stop it first (migrate copies a stopped "
            "database, so nothing changes behind the copy)"
        ) from None
    finally:
        os.close(fd)


def read_source(path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables copied, as the target takes them."""
    conn = connect_readonly(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SQLITE_VERSION:
            raise MaintenanceError(
                f"{path} has schema version {version}; this orchd copies version "
                f"{SQLITE_VERSION}: start and stop the daemon of this version on it once first",
                EXIT_USAGE,
            )
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for table, columns, convert in TABLES:
            query = f"SELECT {', '.join(columns)} FROM {table}"
            rows[table] = [convert(tuple(r)) for r in conn.execute(query)]
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        rows["events_id_seq"] = [(seq[0] if seq else 0,)]
        refuse_nul(rows)
        return rows
    except sqlite3.Error as exc:
        raise MaintenanceError(f"cannot read {path}: {exc}") from None
    finally:
        conn.close()


#: The JSON columns PostgreSQL keeps as jsonb, by table: (column, what a row names: a
#: process's rowid or id, or a subscription's id).
_JSON = {
    "processes": [("state", "id")],
    "steps": [("delta", "process")],
    "branches": [("changes", "process")],
    "subscriptions": [("attributes", "id")],
}


def refuse_nul(rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """Refuse a source whose JSON holds the character U+0000 (an older orchd stored it on
    SQLite; jsonb cannot), naming the process or subscription, before anything is copied."""
    pids = {r[0]: r[1] for r in rows["processes"]}
    for table, columns in _JSON.items():
        names = next(t for t in TABLES if t[0] == table)[1]
        for column, owner in columns:
            at, by = names.index(column), names.index(owner)
            for row in rows[table]:
                value = row[at]
                if value is None or NUL_ESCAPE not in value:
                    continue
                where = nul_at(json.loads(value))
                if where is None:
                    continue  # a backslash's u0000 in text
                who = row[by] if owner == "id" else pids.get(row[by], row[by])
                kind = "subscription" if table == "subscriptions" else "process"
                raise MaintenanceError(
                    f"{kind} {who} holds the character U+0000 in its {table}.{column} "
                    f"({where}), which PostgreSQL's jsonb cannot store: nothing was copied"
                )


async def copy_into(url: str, rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, int]:
    """Create the schema on ``url``, copy ``rows`` in one transaction, verify the counts."""
    conn = await codecs.connect(url)
    try:
        await migrate(conn)
        async with conn.transaction():
            for table, _, _ in TABLES:
                if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
                    raise MaintenanceError(
                        f"the target database is not empty (table {table} has rows); "
                        "migrate copies into an empty database only"
                    )
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM nodes)"):
                raise MaintenanceError("the target database has nodes: a daemon runs on it")
            counts: dict[str, int] = {}
            for table, columns, _ in TABLES:
                records = rows[table]
                for start in range(0, len(records), CHUNK):
                    await conn.copy_records_to_table(
                        table, records=records[start : start + CHUNK], columns=list(columns)
                    )
                counts[table] = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
                if counts[table] != len(records):
                    raise MaintenanceError(
                        f"{table}: {counts[table]} rows on the target, {len(records)} copied"
                    )
            for table in ("processes", "actions", "subscriptions"):
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'rowid'), "
                    f"greatest((SELECT max(rowid) FROM {table}), 1))"
                )
            newest = max(
                rows["events_id_seq"][0][0], max((r[0] for r in rows["events"]), default=0)
            )
            if newest:
                await conn.execute("SELECT setval('events_id_seq', $1)", newest)
        return counts
    finally:
        await conn.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    target = args.to or ""
    started = time.monotonic()
    try:
        if not target.startswith(("postgresql://", "postgres://")):
            raise MaintenanceError(
                "--to takes a PostgreSQL URL: postgresql://user@host:5432/dbname", EXIT_USAGE
            )
        source = database_path(args.database, args.config)
        if source.startswith(("postgresql:", "postgres:")):
            raise MaintenanceError(
                "the source must be a SQLite database (--database PATH)", EXIT_USAGE
            )
        if os.path.isfile(source):
            stopped(source)
        rows = read_source(source)
        counts = asyncio.run(copy_into(target, rows))
    except MaintenanceError as exc:
        print(f"orchd: migrate: {exc}", file=sys.stderr)
        return exc.exit_status
    except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
        print(f"orchd: migrate: {redact(target)}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    seconds = round(time.monotonic() - started, 3)
    if args.json:
        print(json.dumps({"source": source, "target": redact(target), "counts": counts,
                          "seconds": seconds}, indent=2))  # fmt: skip
    else:
        for table, n in counts.items():
            print(f"{table}\t{n}")
        print(f"copied {source} to {redact(target)} and verified the counts ({seconds:g}s)")
    return EXIT_OK
