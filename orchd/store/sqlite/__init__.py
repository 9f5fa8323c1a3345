"""The SQLite store: one file in WAL mode, the embedded default.

Writes go through one writer thread (``writer``) that commits every queued operation together;
reads use a separate connection (``reads``), which WAL lets run beside the writer. The schema
and its migrations are in ``schema``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Light on purpose: ``orchd check`` reads SCHEMA_VERSION on the CLI's fast path, without the
# store's dependencies, which load with ``SqliteStore``.
from orchd.store.sqlite.schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from orchd.store.sqlite.store import SqliteStore

__all__ = ["SCHEMA_VERSION", "SqliteStore"]


def __getattr__(name: str) -> Any:
    if name == "SqliteStore":
        from orchd.store.sqlite.store import SqliteStore

        return SqliteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
