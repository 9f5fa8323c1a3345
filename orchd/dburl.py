"""Which database a ``database`` setting names: a ``postgresql://`` (or ``postgres://``) URL is
a PostgreSQL server, which several nodes may share; anything else is SQLite: ``sqlite:///path``,
a path, ``:memory:`` or a ``file:`` URI. The config, the store's opening, the daemon's lock, the
CLI's file tools and the deploy check all ask here (standard library only: the CLI imports it),
so the rule is written once.
"""

from __future__ import annotations

import importlib.util
import os

#: The package the PostgreSQL store needs, and the extra that installs it.
DRIVER = "asyncpg"
EXTRA = "orchd[postgresql]"


def is_postgres(database: str) -> bool:
    """Whether the setting names a PostgreSQL server."""
    return database.startswith(("postgresql://", "postgres://"))


def sqlite_path(database: str) -> str:
    """What SQLite opens for a SQLite setting: ``sqlite:///path`` as the path, else as given."""
    if database.startswith("sqlite://"):
        return database.removeprefix("sqlite://") or ":memory:"
    return database


def database_file(database: str) -> str | None:
    """The file a setting names, or None: a PostgreSQL server, SQLite's in-memory database and
    a ``file:`` URI name none that could be checked, locked, copied or moved."""
    if is_postgres(database):
        return None
    path = sqlite_path(database)
    if path == ":memory:" or path.startswith("file:"):
        return None
    return path


def anchored(database: str, directory: str) -> str:
    """The setting with a relative file placed in ``directory`` (systemd's StateDirectory: a
    service's working directory is ``/``); anything else, or no directory, as it is."""
    path = database_file(database)
    if not directory or path is None or os.path.isabs(path):
        return database
    return os.path.normpath(os.path.join(directory, path))


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
