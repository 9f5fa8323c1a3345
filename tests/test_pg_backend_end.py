"""PostgreSQL ends or cancels what the daemon's connections run (a restart, a failover, an
operator's pg_cancel_backend or pg_terminate_backend): the request gets a clear StoreError
(503) that carries none of the driver's text, and the next ones work again (issue 26 item 8)."""

from __future__ import annotations

import asyncio

import asyncpg
from support import pg
from support.common import wait_until

from orchd.errors import StoreError
from orchd.testing import workflow_engine


async def stop_backends(url: str, how: str, running: str) -> int:
    """``pg_cancel_backend`` or ``pg_terminate_backend`` the other backends of this database
    whose query contains ``running``."""
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                f"SELECT count({how}(pid)) FROM pg_stat_activity WHERE datname = "
                "current_database() AND pid <> pg_backend_pid() AND query LIKE $1",
                f"%{running}%",
            )
        )
    finally:
        await conn.close()


async def test_a_read_the_server_cancels_is_a_store_error_without_the_drivers_text(
    pg_server: pg.PgServer,
) -> None:
    database = await pg.create_schema(pg_server)
    async with workflow_engine(["engine_flows"], database=database) as engine:
        read = asyncio.create_task(engine.store.fetchall("SELECT pg_sleep(30), 'marker-42'"))
        # The read is under way once the server shows it.
        await wait_until(
            lambda: stop_backends(database, "pg_cancel_backend", "marker-42"),
            "the read cancelled on the server",
        )
        try:
            await read
        except StoreError as exc:
            refused = exc.detail
        else:
            raise AssertionError("the cancelled read answered")
        assert "canceling statement" not in refused and "read failed" in refused
        pid = await engine.start("typed")  # the pool goes on with usable connections
        assert (await engine.wait(pid, timeout=10)).status == "completed"
        assert len((await engine.list_processes()).items) == 1


async def test_reads_and_writes_go_on_after_the_server_ends_the_backends(
    pg_server: pg.PgServer,
) -> None:
    database = await pg.create_schema(pg_server)
    async with workflow_engine(["engine_flows"], database=database) as engine:
        first = await engine.start("typed")
        assert (await engine.wait(first)).status == "completed"
        assert await stop_backends(database, "pg_terminate_backend", "") > 0
        refused: list[str] = []
        for _ in range(5):  # the first tries may meet a dead connection; each fails cleanly
            try:
                pid = await engine.start("typed")
                done = await engine.wait(pid, timeout=10)
                listed = await engine.list_processes()
                break
            except StoreError as exc:
                refused.append(exc.detail)
        else:
            raise AssertionError(f"the store never recovered: {refused}")
    assert done.status == "completed" and len(listed.items) == 2
    assert not any("terminat" in detail for detail in refused), refused
