"""The PostgreSQL schemas the engine tests get (``database_factory``, ``pg.empty_schema``): an
earlier test's schema is handed out again only emptied, and only when it is still what this
orchd's migration makes and nothing else is connected; otherwise the test gets a new one."""

from __future__ import annotations

import asyncpg
from support import pg

from orchd.testing import workflow_engine


async def used_schema(server: pg.PgServer) -> str:
    """A schema an engine has run a process in, given back as a test's teardown does."""
    url = await pg.empty_schema(server)
    async with workflow_engine(["engine_flows"], database=url) as engine:
        pid = await engine.start("typed")
        assert (await engine.wait(pid, timeout=10)).status == "completed"
    pg.give_back(server, [url])
    return url


async def test_a_schema_given_back_comes_again_holding_nothing_its_ids_from_the_start(
    pg_server: pg.PgServer,
) -> None:
    url = await used_schema(pg_server)
    assert await pg.empty_schema(pg_server) == url
    async with workflow_engine(["engine_flows"], database=url) as engine:
        assert (await engine.list_processes()).items == []
        pid = await engine.start("typed")
        assert (await engine.wait(pid, timeout=10)).status == "completed"
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT min(rowid) FROM processes") == 1
        assert await conn.fetchval("SELECT min(id) FROM events") == 1
    finally:
        await conn.close()


async def test_a_schema_a_test_altered_is_not_handed_out_again(pg_server: pg.PgServer) -> None:
    url = await used_schema(pg_server)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ALTER TABLE processes ADD COLUMN left_behind TEXT")
    finally:
        await conn.close()
    assert await pg.empty_schema(pg_server) != url


async def test_no_schema_is_handed_out_again_while_another_connection_is_open(
    pg_server: pg.PgServer,
) -> None:
    url = await used_schema(pg_server)
    left_open = await asyncpg.connect(url)  # as an engine a test did not close would be
    try:
        assert await pg.empty_schema(pg_server) != url
    finally:
        await left_open.close()
