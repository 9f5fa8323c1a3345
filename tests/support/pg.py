"""A PostgreSQL server for the tests, found or started once per test run.

In order: ``$ORCHD_TEST_PG`` (a server URL), a server answering on 127.0.0.1:5432 as user
``postgres`` (trust auth), or a private cluster started in a temporary directory with the
server binaries of ``/usr/lib/postgresql/*/bin`` (``make tools`` installs them as root when they
are missing). The run gets a fresh database of its own, dropped at the end; under xdist each
worker gets its own (``orchd_test_<worker>_<random>``, e.g. ``orchd_test_gw2_1a2b3c4d``, or
``orchd_test_main_...`` without xdist), so workers and other runs on the same server never share
one. Each test gets fresh schemas in it. When none of that is possible the PostgreSQL tests skip
and say why.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import glob
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")
LOCAL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class PgServer:
    """A reachable server and the database of this test run (``url``)."""

    admin_url: str
    url: str
    database: str
    cluster_dir: str | None = None
    pg_ctl: str | None = None
    #: Schemas tests are done with (``give_back``), to be emptied and handed out again.
    spare: list[str] = field(default_factory=list)
    #: What a schema migrated by this orchd holds (``_shape``), once one was made.
    migrated_shape: str | None = None

    def schema_url(self, schema: str) -> str:
        return f"{self.url}?search_path={schema}"


async def _answers(url: str) -> str | None:
    try:
        conn = await asyncio.wait_for(asyncpg.connect(url), 5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end on a loop of its own (in a thread: a test's loop may run)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _private_cluster() -> tuple[str, str, str] | str:
    """Start a throw-away cluster: ``(admin url, data dir, pg_ctl)`` or why not."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        return "no PostgreSQL server on 127.0.0.1:5432 and no server binaries installed"
    bindir = os.path.dirname(found[-1])
    initdb, pg_ctl = os.path.join(bindir, "initdb"), os.path.join(bindir, "pg_ctl")
    folder = tempfile.mkdtemp(prefix="orchd-pg-")
    run_as = _as_server_user(folder)
    if isinstance(run_as, str):
        shutil.rmtree(folder)
        return run_as
    data = os.path.join(folder, "data")
    port = _free_port()
    subprocess.run(
        [*run_as, initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run_as, pg_ctl, "-D", data, "-l", os.path.join(folder, "log"), "-w", "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", folder, pg_ctl


def _as_server_user(folder: str) -> list[str] | str:
    """The command prefix that runs the server binaries: none, or (as root, which initdb
    refuses) ``runuser`` as the distribution's ``postgres`` user, who then owns ``folder``."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        user = pwd.getpwnam("postgres")
    except KeyError:
        return "running as root and there is no postgres user to run a private cluster as"
    if shutil.which("runuser") is None:
        return "running as root without runuser to start a private cluster as postgres"
    os.chown(folder, user.pw_uid, user.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


def start() -> PgServer | str:
    """Find or start a server and create this run's database; or say why not."""
    admin = os.environ.get("ORCHD_TEST_PG") or LOCAL
    why = _run(_answers(admin))
    cluster_dir = pg_ctl = None
    if why is not None:
        made = _private_cluster()
        if isinstance(made, str):
            return f"{made} ({admin}: {why})"
        admin, cluster_dir, pg_ctl = made
    worker = re.sub(r"[^a-z0-9]", "", os.environ.get("PYTEST_XDIST_WORKER", "main").lower())
    name = f"orchd_test_{worker or 'main'}_{secrets.token_hex(4)}"

    async def create() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    _run(create())
    url = admin.rsplit("/", 1)[0] + "/" + name
    return PgServer(admin, url, name, cluster_dir, pg_ctl)


def stop(server: PgServer) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(server.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{server.database}" WITH (FORCE)')
        finally:
            await conn.close()

    _run(drop())
    if server.cluster_dir is not None and server.pg_ctl is not None:
        data = os.path.join(server.cluster_dir, "data")
        run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*run_as, server.pg_ctl, "-D", data, "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(server.cluster_dir, ignore_errors=True)


async def create_schema(server: PgServer, hint: str = "") -> str:
    """A fresh schema for one test (or one database name of a test); answers its URL."""
    schema = f"t_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(server.url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    return server.schema_url(schema)


# -- schemas used again ------------------------------------------------------------------------
#
# An Engine opening a new schema migrates it (some sixty statements: 0.17 s of a test that takes
# a few hundredths on SQLite, and the engine tests open one per PostgreSQL test). So a test's
# schemas go back to the server when it ends, and the next test that asks (``empty_schema``)
# gets one of them emptied: every row deleted and every sequence restarted, which is what a
# schema this orchd has just migrated holds. A spare is used again only when its tables,
# columns, indexes, sequences, constraints, functions and version are still exactly a fresh
# migration's (a test may have altered or broken it) and no other connection is open on the
# database (a test may have left an engine running); otherwise the test gets a new schema.

_SHAPE = """WITH ns AS (SELECT $1::text AS name, to_regnamespace($1::text) AS id)
SELECT replace(string_agg(x, E'\\n' ORDER BY x), (SELECT name FROM ns) || '.', '') FROM (
    SELECT format('%s %s', relkind, relname) AS x FROM pg_class, ns WHERE relnamespace = ns.id
    UNION ALL SELECT format('column %s.%s %s %s %s %s', table_name, column_name, data_type,
                            is_nullable, is_identity, column_default)
        FROM information_schema.columns, ns WHERE table_schema = ns.name
    UNION ALL SELECT indexdef FROM pg_indexes, ns WHERE schemaname = ns.name
    UNION ALL SELECT format('constraint %s %s', conname, pg_get_constraintdef(c.oid))
        FROM pg_constraint AS c, ns WHERE connamespace = ns.id
    UNION ALL SELECT format('function %s %s', proname, md5(prosrc))
        FROM pg_proc, ns WHERE pronamespace = ns.id
    UNION ALL SELECT format('type %s', typname) FROM pg_type, ns WHERE typnamespace = ns.id
    UNION ALL SELECT format('trigger %s', tgname) FROM pg_trigger, pg_class AS c, ns
        WHERE tgrelid = c.oid AND c.relnamespace = ns.id
) AS parts"""
#: Deletes every row but the schema version's and restarts every sequence (identities too).
_EMPTY = """DO $$ DECLARE r record; BEGIN
    FOR r IN SELECT oid::regclass AS name, relkind FROM pg_class
            WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'S')
            AND relname <> 'orchd_schema' LOOP
        IF r.relkind = 'r' THEN EXECUTE format('DELETE FROM %s', r.name);
        ELSE EXECUTE format('ALTER SEQUENCE %s RESTART', r.name); END IF;
    END LOOP; END $$"""


async def _shape(conn: asyncpg.Connection, schema: str) -> str | None:
    """The schema's tables, columns, indexes, ... and version as one text; None when it holds
    nothing (it was never opened)."""
    shape = await conn.fetchval(_SHAPE, schema)
    if shape is None:
        return None
    if await conn.fetchval("SELECT to_regclass('orchd_schema')") is None:
        return str(shape)
    versions = await conn.fetch("SELECT version FROM orchd_schema")
    return f"{shape}\nversion {[row[0] for row in versions]}"


async def _migrated_shape(server: PgServer) -> str:
    """What a schema holds once this orchd's own migration made it (found once per run)."""
    if server.migrated_shape is None:
        from orchd.store.postgres.schema import migrate

        url = await create_schema(server)
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
            server.migrated_shape = await _shape(conn, url.rpartition("=")[2])
        finally:
            await conn.close()
        server.spare.append(url)
    assert server.migrated_shape is not None
    return server.migrated_shape


async def empty_schema(server: PgServer) -> str:
    """A schema for one test (or one database name of a test) holding no process: a spare
    one emptied when it may be (see above), else a new one. Answers its URL."""
    expected = await _migrated_shape(server)
    while server.spare:
        url = server.spare.pop()
        conn = await asyncpg.connect(url)
        try:
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            if others:
                server.spare.append(url)  # for a later test, once those are gone
                break
            shape = await _shape(conn, url.rpartition("=")[2])
            if shape is None:
                return url
            if shape == expected:
                await conn.execute(_EMPTY)
                return url
        finally:
            await conn.close()
    return await create_schema(server)


def give_back(server: PgServer, urls: list[str]) -> None:
    """The schemas of a test that has ended, for ``empty_schema`` to hand out again."""
    server.spare.extend(urls)


def fresh_schema(server: PgServer) -> str:
    """``create_schema`` for a test that is not a coroutine (daemon tests)."""
    return _run(create_schema(server))


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one query on ``url`` as an operator's client does: a connection of its own, with
    asyncpg's own types (no orchd codecs)."""
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """``fetch`` for a test that is not a coroutine (reading what the daemons committed)."""
    return _run(fetch(url, sql, *args))
