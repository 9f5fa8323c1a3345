"""The TCP guard's counters, on a real aiohttp server in-process (what metrics will read)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from support.common import wait_until

from orchd.api.guard import ConnectionCounts, TcpGuard
from orchd.settings import TcpSettings

pytestmark = pytest.mark.anyio

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.fixture
async def guarded() -> AsyncIterator[tuple[TcpGuard, int]]:
    """A guard (3 per listener, 2 per peer, 300 ms for a head) in front of a tiny app."""
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    guard = TcpGuard(TcpSettings(max_connections=3, max_per_peer=2, header_timeout=0.3))
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    server = await loop.create_server(guard.protocol_factory(runner.server), "127.0.0.1", 0)
    try:
        yield guard, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await runner.cleanup()


async def connect(port: int, source: str) -> Stream:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def settled(guard: TcpGuard, expected: ConnectionCounts) -> None:
    await wait_until(lambda: guard.counts() == expected, f"the guard's counts {expected}")


async def test_the_guard_counts_refusals_timeouts_and_open_connections(
    guarded: tuple[TcpGuard, int],
) -> None:
    guard, port = guarded
    streams = [await connect(port, "127.0.0.1") for _ in range(3)]
    streams += [await connect(port, "127.0.0.2") for _ in range(2)]
    # Two from .1 admitted, its third refused; one from .2, then the listener is full.
    refused = {"refused_listener_total": 1, "refused_peer_total": 1}
    await settled(guard, ConnectionCounts(open=3, accepted_total=3, **refused))
    answered = streams[0]
    answered[1].write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await answered[0].readline()).startswith(b"HTTP/1.1 200")
    # The two that never sent a head time out; the one that did stays open.
    await settled(
        guard, ConnectionCounts(open=1, accepted_total=3, header_timeouts_total=2, **refused)
    )
    for _, writer in streams:
        writer.close()
    await settled(guard, ConnectionCounts(accepted_total=3, header_timeouts_total=2, **refused))
