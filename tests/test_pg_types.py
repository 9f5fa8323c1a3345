"""PostgreSQL's typed columns (issue 25): State and the other JSON are ``jsonb``, times
``timestamptz``, so an operator queries them with SQL; and the character U+0000, which ``jsonb``
cannot hold, is refused with a clear error wherever it would enter State.

A database of schema version 6 is written by the orchd of the last commit before version 7
(its source taken from git into a temporary directory, run in a subprocess), then opened by this
one, which migrates it: what the old orchd showed, this one shows.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from support import pg
from support.daemons import ROOT, WF_DIR

from orchd import Engine
from orchd.errors import FormValidationError, StoreError
from orchd.model import Process, ProcessStatus, SubscriptionDetail
from orchd.store.postgres.codecs import _time_in, _time_out
from orchd.store.postgres.schema import MIGRATIONS

EngineFactory = Callable[..., Awaitable[Engine]]

#: The last commit whose PostgreSQL schema is version 6 (before jsonb and timestamptz).
OLD_REVISION = "02abe06"

#: Run by the old orchd: a finished process with a subscription, one suspended at a form; what
#: it shows of them, as JSON, on stdout.
OLD_WRITER = """
import asyncio, sys
import msgspec
from orchd import Engine

async def main(url):
    engine = Engine(database=url, workflows=["engine_flows"])
    await engine.open()
    try:
        done = await engine.start("create_node", {"name": "n1", "customer_id": "c9"})
        finished = await engine.wait(done, 30)
        waiting = await engine.start("needs_approval", {"name": "n2"})
        suspended = await engine.wait(waiting, 30)
        sub = await engine.get_subscription(finished.subscription_id)
    finally:
        await engine.close()
    sys.stdout.buffer.write(msgspec.json.encode(
        {"finished": finished, "suspended": suspended, "subscription": sub}))

asyncio.run(main(sys.argv[1]))
"""


def old_orchd(tmp_path: Path) -> Path:
    """The source of ``OLD_REVISION``'s orchd, in a directory of its own."""
    where = tmp_path / "old"
    where.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", OLD_REVISION, "orchd"],
        capture_output=True,
        timeout=60,
    )
    if archive.returncode != 0:
        pytest.skip(f"no git history to take orchd {OLD_REVISION} from: {archive.stderr!r}")
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    return where


def run_old(tmp_path: Path, url: str) -> dict[str, Any]:
    """Write ``url``'s database with the old orchd; what it showed."""
    source = old_orchd(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), str(WF_DIR), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", OLD_WRITER, url],
        capture_output=True,
        env=env,
        cwd=source,  # not this checkout: ``-c`` puts the working directory first on the path
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    shown: dict[str, Any] = json.loads(done.stdout)
    return shown


async def test_a_version_6_database_is_migrated_and_reads_as_the_old_orchd_showed_it(
    pg_server: pg.PgServer, tmp_path: Path
) -> None:
    url = await pg.create_schema(pg_server)
    old = run_old(tmp_path, url)
    assert [r[0] for r in await pg.fetch(url, "SELECT version FROM orchd_schema")] == [6]
    assert [r[0] for r in await pg.fetch(url, "SELECT pg_typeof(state)::text FROM processes")] == [
        "bytea",
        "bytea",
    ]

    engine = Engine(database=url, workflows=["engine_flows"])
    await engine.open()
    try:
        for name in ("finished", "suspended"):
            before = msgspec.convert(old[name], Process)
            after = await engine.get(before.id)
            # Which node runs it is the moment's, not the record's (the old one has left).
            for field in Process.__struct_fields__:
                if field != "node":
                    assert getattr(after, field) == getattr(before, field), field
        sub = msgspec.convert(old["subscription"], SubscriptionDetail)
        assert await engine.get_subscription(sub.id) == sub
        # The suspended one goes on under the new orchd.
        suspended = old["suspended"]["id"]
        await engine.resume(suspended, {"approved": True, "comment": "fine"})
        resumed = await engine.wait(suspended, 30)
        assert resumed.status == ProcessStatus.COMPLETED
        assert resumed.state["echo"] == "fine"
    finally:
        await engine.close()
    assert [r[0] for r in await pg.fetch(url, "SELECT version FROM orchd_schema")] == [7]


def readme_sql() -> str:
    """The README's SQL example (Scaling out, "Querying with SQL"), as an operator pastes it."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```sql\n(.*?)^```$", text, flags=re.S | re.M)
    assert len(blocks) == 1, "the README has one SQL example"
    return str(blocks[0])


async def test_the_readmes_sql_finds_a_failed_process_by_a_state_value_and_its_time(
    pg_server: pg.PgServer,
) -> None:
    url = await pg.create_schema(pg_server)
    engine = Engine(database=url, workflows=["nul_flows", "engine_flows"])
    await engine.open()
    try:
        failed = await engine.wait(await engine.start("returns_nul", {"text": "t", "name": "n1"}))
        done = await engine.wait(await engine.start("create_node", {"name": "n1"}))
    finally:
        await engine.close()
    assert failed.status == ProcessStatus.FAILED and done.status == ProcessStatus.COMPLETED
    rows = await pg.fetch(url, readme_sql())
    assert [tuple(r) for r in rows] == [
        (failed.id, "returns_nul", "n1", failed.error, failed.created_at)
    ]


async def test_step_times_compare_with_process_times_in_sql(pg_server: pg.PgServer) -> None:
    url = await pg.create_schema(pg_server)
    engine = Engine(database=url, workflows=["engine_flows"])
    await engine.open()
    try:
        process = await engine.wait(await engine.start("create_node", {"name": "n1"}), 30)
    finally:
        await engine.close()
    steps = await pg.fetch(
        url,
        """SELECT count(*) FROM steps s JOIN processes p ON p.rowid = s.process
           WHERE p.id = $1 AND s.finished_at >= s.started_at AND s.started_at >= p.created_at
             AND s.finished_at <= p.updated_at""",
        process.id,
    )
    assert steps[0][0] == len(process.steps) > 0
    subs = await pg.fetch(url, "SELECT attributes->>'name' FROM subscriptions")
    assert [r[0] for r in subs] == ["n1"]


async def test_every_time_column_is_timestamptz_and_the_json_ones_jsonb(
    pg_server: pg.PgServer,
) -> None:
    url = await pg.create_schema(pg_server)
    engine = Engine(database=url, workflows=["engine_flows"])
    await engine.open()
    await engine.close()
    rows = await pg.fetch(
        url,
        """SELECT table_name || '.' || column_name, data_type FROM information_schema.columns
           WHERE table_schema = current_schema() AND data_type IN
             ('double precision', 'bytea', 'jsonb', 'timestamp with time zone')
           ORDER BY 1""",
    )
    typed = dict((r[0], r[1]) for r in rows)
    # Only what is no operator's to query stays bytea (the schema's docstring says why).
    assert {c for c, t in typed.items() if t == "bytea"} == {
        "processes.form",
        "events.data",
        "node_messages.answer",
        "node_messages.body",
    }
    assert [c for c, t in typed.items() if t == "double precision"] == []
    assert {c for c, t in typed.items() if t == "jsonb"} == {
        "branches.changes",
        "processes.state",
        "steps.delta",
        "subscriptions.attributes",
    }


async def _at_version_6(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("CREATE TABLE orchd_schema (version INTEGER NOT NULL)")
            await conn.execute("INSERT INTO orchd_schema (version) VALUES (6)")
            for version in range(1, 7):
                for statement in MIGRATIONS[version]:
                    await conn.execute(statement)
    finally:
        await conn.close()


async def test_a_version_6_database_holding_u0000_is_refused_naming_the_process_and_left_alone(
    pg_server: pg.PgServer,
) -> None:
    url = await pg.create_schema(pg_server)
    await _at_version_6(url)
    # As the old orchd wrote a step that returned the character (SQLite and bytea took it).
    await pg.fetch(
        url,
        """INSERT INTO processes (rowid, id, workflow, target, status, pc, seq, state,
               created_at, updated_at)
           VALUES (1, 'p-nul', 'wf', 'SYSTEM', 'completed', 1, 1, $1, 1.5, 2.5)""",
        msgspec.json.encode({"a": "x\x00y"}),
    )
    with pytest.raises(
        StoreError, match=r"process p-nul \(its State\) holds the character U\+0000"
    ):
        engine = Engine(database=url, workflows=["engine_flows"])
        await engine.open()
    assert [r[0] for r in await pg.fetch(url, "SELECT version FROM orchd_schema")] == [6]
    types = await pg.fetch(
        url, "SELECT pg_typeof(state)::text, pg_typeof(created_at)::text FROM processes"
    )
    assert [tuple(r) for r in types] == [("bytea", "double precision")]


async def _old_process(url: str, state: dict[str, Any], created_at: float = 1.5) -> str:
    """A finished process as the orchd of schema version 6 wrote it (JSON bytes, float
    seconds); its id."""
    pid = "6d1c3a52-0000-4000-8000-000000000001"
    await pg.fetch(
        url,
        """INSERT INTO processes (rowid, id, workflow, target, status, pc, seq, state,
               created_at, updated_at)
           VALUES (1, $1, 'wf', 'SYSTEM', 'completed', 1, 1, $2, $3, $3)""",
        pid,
        msgspec.json.encode(state),
        created_at,
    )
    return pid


async def _migrated(url: str, pid: str) -> Process:
    engine = Engine(database=url, workflows=["engine_flows"])
    await engine.open()
    try:
        return await engine.get(pid)
    finally:
        await engine.close()


async def test_a_backslash_followed_by_u0000_in_text_is_no_u0000_and_migrates(
    pg_server: pg.PgServer,
) -> None:
    url = await pg.create_schema(pg_server)
    await _at_version_6(url)
    text = "C:\\u0000\\x"  # a backslash, then the letters u0000: text, no NUL
    pid = await _old_process(url, {"path": text})
    assert (await _migrated(url, pid)).state == {"path": text}


async def test_a_time_migrates_to_the_microsecond_the_api_showed_before(
    pg_server: pg.PgServer,
) -> None:
    url = await pg.create_schema(pg_server)
    await _at_version_6(url)
    # A time PostgreSQL's to_timestamp alone rounds to the next microsecond.
    at = 1796508945.2706954
    pid = await _old_process(url, {}, created_at=at)
    assert (await _migrated(url, pid)).created_at == datetime.fromtimestamp(at, UTC)


# -- U+0000 on both backends ------------------------------------------------------------------


async def test_a_start_whose_input_holds_u0000_is_refused_naming_the_field(
    engine_factory: EngineFactory,
) -> None:
    engine = await engine_factory(["nul_flows"])
    with pytest.raises(FormValidationError, match=r"the input: text holds the character U\+0000"):
        await engine.start("returns_nul", {"text": "a\x00b"})
    assert (await engine.list_processes(limit=10)).items == []


async def test_the_api_answers_a_start_holding_u0000_with_a_422_problem_naming_the_field(
    engine_factory: EngineFactory, app_client: Callable[..., Awaitable[Any]]
) -> None:
    client = await app_client(await engine_factory(["nul_flows"]))
    resp = await client.post("/api/processes/returns_nul", json={"text": "a\x00b"})
    assert resp.status == 422 and resp.content_type == "application/problem+json"
    body = await resp.json(content_type=None)
    assert "the input: text holds the character U+0000" in body["detail"]
    assert body["errors"] == [{"loc": ["text"], "msg": "holds the character U+0000"}]
    listed = await client.get("/api/processes")
    assert (await listed.json())["items"] == []


async def test_a_step_returning_u0000_fails_the_process_naming_the_key(
    engine_factory: EngineFactory,
) -> None:
    engine = await engine_factory(["nul_flows"])
    pid = await engine.start("returns_nul", {"text": "fine"})
    process = await engine.wait(pid, 30)
    assert process.status == ProcessStatus.FAILED
    assert process.error is not None
    assert "step 'add a NUL' returned label.name, which holds the character U+0000" in process.error
    # The checkpoint before the step is kept: State is as the start left it.
    assert process.state["text"] == "fine" and "label" not in process.state


async def test_a_resume_whose_answer_holds_u0000_is_refused_and_the_process_stays_suspended(
    engine_factory: EngineFactory,
) -> None:
    engine = await engine_factory(["nul_flows"])
    pid = await engine.start("asks_for_note", {})
    assert (await engine.wait(pid, 30)).status == ProcessStatus.SUSPENDED
    with pytest.raises(FormValidationError, match=r"page 0: note holds the character U\+0000"):
        await engine.resume(pid, {"note": "n\x00"})
    assert (await engine.get(pid)).status == ProcessStatus.SUSPENDED
    await engine.resume(pid, {"note": "fine"})
    assert (await engine.wait(pid, 30)).state["note"] == "fine"


async def test_a_suspended_process_asks_its_form_fields_in_the_order_they_are_declared(
    engine_factory: EngineFactory,
) -> None:
    engine = await engine_factory(["engine_flows"])
    pid = await engine.start("needs_approval", {"name": "n1"})
    process = await engine.wait(pid, 30)
    assert process.form is not None
    # Approval declares approved, then comment (jsonb would sort comment, the shorter, first).
    assert list(process.form["properties"]) == ["approved", "comment"]


# -- the codecs -------------------------------------------------------------------------------


def test_a_time_read_back_shows_the_microsecond_it_was_written_with() -> None:
    for at in (1796508180.9084473, 1796508180.5851255, 0.0000005, 1.5, -1.25, 4102444800.999999):
        back = _time_out(_time_in(at))
        assert abs(back - at) < 1e-6
        assert datetime.fromtimestamp(back, UTC) == datetime.fromtimestamp(at, UTC)


def test_a_time_of_whole_microseconds_reads_back_as_the_same_float() -> None:
    for at in (1796508180.908447, 1796508180.585126, 1.5, 946684800.0, 4102444800.999999):
        assert _time_out(_time_in(at)) == at


def test_moving_a_sqlite_database_holding_u0000_is_refused_naming_the_process(
    tmp_path: Path, pg_server: pg.PgServer
) -> None:
    source = str(tmp_path / "orchd.db")

    async def fill() -> Process:
        async with Engine(database=source, workflows=["engine_flows"]) as engine:
            return await engine.wait(await engine.start("create_node", {"name": "n1"}))

    process = pg._run(fill())
    # As an older orchd wrote a step that returned the character (SQLite took it).
    with sqlite3.connect(source) as db:
        db.execute(
            "UPDATE steps SET delta = ? WHERE seq = (SELECT max(seq) FROM steps)",
            (msgspec.json.encode({"note": "a\x00"}),),
        )
    db.close()
    target = pg.fresh_schema(pg_server)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WF_DIR), str(ROOT)])}
    refused = subprocess.run(
        [sys.executable, "-m", "orchd", "migrate", "--database", source, "--to", target],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert refused.returncode == 1, refused.stderr
    assert f"process {process.id} holds the character U+0000 in its steps.delta (note)" in (
        refused.stderr
    )
    assert pg.query(target, "SELECT to_regclass('processes')")[0][0] is None  # untouched
