"""The PostgreSQL read side: the pool reads run on, and the queries that differ from SQLite's
(the shared ones, and the functions that turn rows into records, are ``orchd.store.sqlreads``:
the process columns are selected in the order ``SELECT_PROCESS`` names them, so a column added
to both schemas is read the same way on both backends).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg

from orchd.errors import StoreError
from orchd.model import SUBSCRIPTION_FIELDS
from orchd.store.sqlreads import SqlReads

#: For the writer, which runs its statements on the connection directly.
log = logging.getLogger("orchd.store")

SELECT_SUBSCRIPTION = f"SELECT {', '.join(SUBSCRIPTION_FIELDS)} FROM subscriptions WHERE id = $1"


@functools.lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """``?`` placeholders (SQLite's, which tests and tools write) as ``$1, $2, ...``."""
    out: list[str] = []
    n = 0
    quoted = False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
        if ch == "?" and not quoted:
            n += 1
            out.append(f"${n}")
        else:
            out.append(ch)
    return "".join(out)


#: What a read may meet when the server ends a backend, fails over or is unreachable.
_READ_TROUBLE = (
    asyncpg.PostgresError,
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    TimeoutError,
)


class PgReads(SqlReads):
    """Queries over committed state, each on a connection borrowed from the pool."""

    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[asyncpg.Record]:
        """Run a query (also for tests and tools that inspect the database)."""
        if self._pool is None:
            raise StoreError("the store is closed")
        if "?" in sql:
            sql = numbered(sql)
        try:
            return list(await self._pool.fetch(sql, *params))
        except _READ_TROUBLE as exc:
            # The pool discards a connection that an error left unusable; the driver's words
            # go to the log, not to API clients.
            log.warning("database read failed: %s: %s", type(exc).__name__, exc)
            raise StoreError(f"database read failed ({type(exc).__name__}; see the log)") from None

    async def statuses(self, pids: list[str]) -> dict[str, str]:
        if not pids:
            return {}
        rows = await self.fetchall(
            "SELECT id, status FROM processes WHERE id = ANY($1::text[])", (pids,)
        )
        return {pid: status for pid, status in rows}

    async def processes_with_prefix(self, prefix: str, limit: int) -> list[str]:
        rows = await self.fetchall(
            "SELECT id FROM processes WHERE id LIKE $1 ORDER BY id LIMIT $2",
            (prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%", limit),
        )
        return [r[0] for r in rows]

    # -- retention and events --

    async def event_bounds(self) -> tuple[int, int]:
        row = await self.fetchone(
            "SELECT (SELECT min(id) FROM events), (SELECT max(id) FROM events), "
            "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM events_id_seq)"
        )
        assert row is not None
        oldest, newest_kept, given = row
        # Ids taken by a transaction still open are not "given" yet: the newest committed
        # one counts, or the sequence when every event was pruned.
        newest = newest_kept if newest_kept is not None else given
        return (oldest if oldest is not None else newest + 1), newest
