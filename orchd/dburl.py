"""Which database a ``database`` setting names: a ``postgresql://`` (or ``postgres://``) URL is
a PostgreSQL server, which several nodes may share; anything else is SQLite: ``sqlite:///path``,
a path, ``:memory:`` or a ``file:`` URI. The daemon, the engine, the CLI's file tools and the
deploy check all ask here (standard library only: the CLI imports it), so the rule is written
once.
"""

from __future__ import annotations

import importlib.util

#: The package the PostgreSQL store needs, and the extra that installs it.
DRIVER = "asyncpg"
EXTRA = "orchd[postgresql]"


def is_postgres(database: str) -> bool:
    """Whether the setting names a PostgreSQL server."""
    return database.startswith(("postgresql://", "postgres://"))


def sqlite_path(database: str) -> str:
    """The file a SQLite setting names: ``sqlite:///path`` or the path itself."""
    if database.startswith("sqlite://"):
        return database.removeprefix("sqlite://") or ":memory:"
    return database


def driver_missing() -> str | None:
    """Why PostgreSQL cannot be used here (its driver is not installed), or None."""
    try:
        found = importlib.util.find_spec(DRIVER) is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as none
        found = False
    if not found:
        return (
            f"a PostgreSQL database needs the {DRIVER} driver, which is not installed: "
            f"pip install '{EXTRA}' (into the environment orchd runs from)"
        )
    return None
