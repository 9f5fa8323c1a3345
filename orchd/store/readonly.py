"""Reading a database without writing to it: the store's read side (``orchd.store.sqlreads``)
over a connection that cannot write, for tools that run beside a live daemon or on a backup
(``orchd check --workflows``). Which database a setting names is ``orchd.dburl``'s rule.

Unlike a store's opening, this never creates, migrates or registers anything: a SQLite file is
opened as ``orchd check`` opens it (`orchd.store.maintenance.connect_readonly`), a PostgreSQL
database in read-only transactions, and without registering a node.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any

from orchd.dburl import driver_missing, is_postgres
from orchd.errors import StoreError
from orchd.store.maintenance import EXIT_USAGE, MaintenanceError, connect_readonly
from orchd.store.sqlreads import SqlReads

__all__ = ["open_readonly"]

#: The oldest SQLite schema the read side can read (its branches came with version 6); an
#: older file is one no daemon of this orchd has opened yet.
OLDEST_READABLE = 6


class _SqliteFile(SqlReads):
    """The shared reads over one read-only connection (a tool's: blocking is fine)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self.conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the database: {exc}") from None


@contextlib.asynccontextmanager
async def open_readonly(database: str) -> AsyncIterator[SqlReads]:
    """The read side of ``database`` (a path or a PostgreSQL URL), read-only, closed on exit.

    MaintenanceError when it cannot be opened (missing, not a database, unreachable)."""
    if is_postgres(database):
        async with _postgres(database) as reads:
            yield reads
        return
    conn = connect_readonly(database)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version < OLDEST_READABLE:
            raise MaintenanceError(
                f"{database} has orchd's schema version {version}, older than this orchd reads "
                f"({OLDEST_READABLE} and later): start this orchd's daemon on it once (it "
                "migrates the database), then check again",
                EXIT_USAGE,
            )
        yield _SqliteFile(conn)
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def _postgres(url: str) -> AsyncIterator[SqlReads]:
    if (missing := driver_missing()) is not None:
        raise MaintenanceError(missing, EXIT_USAGE)
    # Imported only for a PostgreSQL URL: a SQLite user needs no PostgreSQL driver.
    import asyncpg

    from orchd.store.postgres import codecs
    from orchd.store.postgres.reads import PgReads

    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=1,
            server_settings={"default_transaction_read_only": "on"},
            init=codecs.register,
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise MaintenanceError(f"cannot read the database: {exc}") from None
    reads = PgReads()
    reads._pool = pool  # the read side's own pool, made read-only above
    try:
        yield reads
    finally:
        await pool.close()
