"""Opening the store a database setting names (the rule of which one is ``orchd.dburl``'s):
PostgreSQL's store, and its driver, are imported only for a PostgreSQL URL."""

from __future__ import annotations

from orchd.dburl import driver_missing, is_postgres, sqlite_path
from orchd.errors import ConfigError
from orchd.store.base import Store
from orchd.store.sqlite import SqliteStore


def open_store(
    database: str,
    *,
    synchronous: str = "FULL",
    keep_events: int = 100_000,
    node_id: str | None = None,
    lease_timeout: float = 10.0,
) -> Store:
    """The store for ``database``: a ``postgresql://`` URL is PostgreSQL (several nodes may
    share it); a path, ``sqlite:///path`` or ``:memory:`` is SQLite."""
    if is_postgres(database):
        if (missing := driver_missing()) is not None:
            raise ConfigError(f"database: {missing}")
        # Imported only for a PostgreSQL URL: a SQLite user needs no PostgreSQL driver.
        from orchd.store.postgres import PgStore

        return PgStore(
            database, node_id=node_id, lease_timeout=lease_timeout, keep_events=keep_events
        )
    return SqliteStore(sqlite_path(database), synchronous=synchronous, keep_events=keep_events)
