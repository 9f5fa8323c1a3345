"""The SQLite read side: the connection reads run on, and the queries that differ from
PostgreSQL's (the shared ones are ``orchd.store.sqlreads``).

Reads run on their own connection (WAL lets them run beside the writer) and see only what has
been committed. Rows leave this module as the typed records of ``orchd.store.base`` or the
models of ``orchd.model``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite

from orchd.errors import StoreError
from orchd.store.base import ProcessRow
from orchd.store.sqlreads import (
    SELECT_PROCESS,
    SqlReads,
    process_row,
)

__all__ = ["Reads"]


class Reads(SqlReads):
    """Queries over committed state, on read-only connections of their own.

    A lookup (a read by key on an index, see ``SqlReads``) runs right on the event loop's
    thread: it takes tens of microseconds, while a trip to a reader thread and back waits for
    that thread to be scheduled and then for a turn of a busy loop, twice (what made a
    ``GET /api/processes/{id}`` slow under load). Everything else runs on the reader thread.
    WAL lets both connections read beside the writer without waiting for it.
    """

    READS_OVERLAP = False

    def __init__(self) -> None:
        self._reader: aiosqlite.Connection | None = None
        self._inline: sqlite3.Connection | None = None

    async def open_reader(self, path: str) -> None:
        self._reader = await aiosqlite.connect(path)
        await self._reader.execute("PRAGMA query_only = 1")
        # Autocommit: each read's snapshot ends with its statement, so no read holds back
        # the WAL's checkpoints. A WAL reader waits for nobody in practice; should SQLite
        # still say busy (a WAL being recovered), the loop is not held for long.
        self._inline = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=0.5
        )
        self._inline.execute("PRAGMA query_only = 1")

    async def close_reader(self) -> None:
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a read-only query (also for tests and tools that inspect the database)."""
        if self._reader is None:
            raise StoreError("the store is closed")
        # One trip to the reader thread per query (execute and fetch together): under load
        # every trip waits for the event loop, so fewer trips mean a faster API.
        rows = await self._reader.execute_fetchall(sql, tuple(params))
        return list(rows)

    async def lookup(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._inline is None:
            raise StoreError("the store is closed")
        return self._inline.execute(sql, tuple(params)).fetchall()

    async def active_processes(self) -> list[ProcessRow]:
        # One query for all of them: thousands of processes may have been in flight.
        # Children held for a free slot wait: a restart must not start them all at once.
        rows = await self.fetchall(
            f"{SELECT_PROCESS} WHERE status IN ('created', 'running') AND held = 0"
        )
        return [process_row(row) for row in rows]

    async def statuses(self, pids: list[str]) -> dict[str, str]:
        if not pids:
            return {}
        rows = await self.fetchall(
            f"SELECT id, status FROM processes WHERE id IN ({', '.join('?' * len(pids))})",
            pids,
        )
        return {pid: status for pid, status in rows}

    async def processes_with_prefix(self, prefix: str, limit: int) -> list[str]:
        # Ids are lower-case text: a range on the UNIQUE index, not a scan.
        rows = await self.lookup(
            "SELECT id FROM processes WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
            (prefix, prefix + "\U0010ffff", limit),
        )
        return [r[0] for r in rows]

    # -- retention and events --

    async def event_bounds(self) -> tuple[int, int]:
        row = await self.fetchone(
            "SELECT (SELECT min(id) FROM events),"
            " (SELECT seq FROM sqlite_sequence WHERE name = 'events')"
        )
        newest = (row[1] if row else None) or 0
        oldest = row[0] if row and row[0] is not None else newest + 1
        return oldest, newest
