"""A database written by an older orchd is migrated forward at start, keeping what it held."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from orchd import Engine
from orchd.store.base import token_digest
from orchd.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION

pytestmark = pytest.mark.anyio


def version_1_database(path: Path, token: str) -> str:
    """A schema-1 database with one process waiting for a callback (its token kept as given,
    as schema 1 did), stopped at the wait of engine_flows' ``with_callback``."""
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[1]:
        assert isinstance(statement, str)
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    pid = "6f1c1a52-6a43-4b6e-9d43-5f0a5e1b2c3d"
    now = time.time()
    state = {"process_id": pid, "workflow_name": "with_callback", "asked_with": token}
    conn.execute(
        "INSERT INTO processes (id, workflow, target, status, pc, seq, state, current_step, "
        "callback_token, created_at, updated_at) "
        "VALUES (?, 'with_callback', 'SYSTEM', 'awaiting_callback', 2, 2, ?, 'wait for oss', "
        "?, ?, ?)",
        (pid, json.dumps(state).encode(), token, now, now),
    )
    conn.close()
    return pid


async def test_a_wait_from_schema_1_is_answered_after_the_migration(tmp_path: Path) -> None:
    db = tmp_path / "orchd.db"
    pid = version_1_database(db, "an-old-style-token")
    async with Engine(database=str(db), workflows=["engine_flows"]) as engine:
        with sqlite3.connect(db) as conn:
            kept = conn.execute("SELECT callback_token FROM processes").fetchall()
        assert kept == [(token_digest("an-old-style-token"),)]  # no longer the token itself
        assert await engine.callback("an-old-style-token", {"ok": True}) == pid
        process = await engine.wait(pid, timeout=10)
    assert process.status == "completed" and process.state["answer_ok"] is True
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        raw = conn.execute(
            "SELECT count(*) FROM processes WHERE callback_token = ?", ("an-old-style-token",)
        )
        assert raw.fetchone()[0] == 0


async def test_a_process_from_schema_1_gains_an_empty_action_list(tmp_path: Path) -> None:
    db = tmp_path / "orchd.db"
    pid = version_1_database(db, "t")
    async with Engine(database=str(db), workflows=["engine_flows"]) as engine:
        assert (await engine.get(pid)).actions == []
