"""Which store a database setting names: a ``postgresql://`` URL is PostgreSQL (several nodes
may share it); anything else is a SQLite file. The engine, ``orchd serve`` and the tools ask
here, so the rule is written once."""

from __future__ import annotations

from orchd.store.base import Store
from orchd.store.postgres import PgStore, is_postgres_url
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
    if is_postgres_url(database):
        return PgStore(
            database, node_id=node_id, lease_timeout=lease_timeout, keep_events=keep_events
        )
    return SqliteStore(sqlite_path(database), synchronous=synchronous, keep_events=keep_events)


def sqlite_path(database: str) -> str:
    """The file a SQLite database setting names (``sqlite:///path`` or the path itself)."""
    if database.startswith("sqlite://"):
        return database.removeprefix("sqlite://") or ":memory:"
    return database
