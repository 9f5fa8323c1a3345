"""Shared fixtures. Workflow modules used by tests live in tests/wf/ and import by name."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from daemon_util import DaemonFactory

from orchd.engine import Engine

ApiClient = TestClient[web.Request, web.Application]

WF_DIR = Path(__file__).parent / "wf"
if str(WF_DIR) not in sys.path:
    sys.path.insert(0, str(WF_DIR))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- control API (tests/test_api.py) ----------------------------------------------------------


@pytest.fixture
async def api_engine(tmp_path: Path) -> AsyncIterator[Engine]:
    """A real Engine on a temporary SQLite file with the workflows of tests/wf/api_flows.py."""
    import api_flows

    api_flows.gate = asyncio.Event()
    async with Engine(
        database=str(tmp_path / "api.db"), workflows=["api_flows"], grace_period=2.0
    ) as engine:
        try:
            yield engine
        finally:
            api_flows.gate.set()


@pytest.fixture
async def api_serve(api_engine: Engine) -> AsyncIterator[Callable[..., Awaitable[ApiClient]]]:
    """A factory: ``await api_serve(**create_app_options)`` gives a TestClient over TCP."""
    from orchd.api.routes import create_app

    clients: list[ApiClient] = []

    async def serve(**options: Any) -> ApiClient:
        options.setdefault("heartbeat", 0.2)
        client: ApiClient = TestClient(TestServer(create_app(api_engine, **options)))
        await client.start_server()
        clients.append(client)
        return client

    try:
        yield serve
    finally:
        for client in clients:
            await client.close()


@pytest.fixture
async def api_client(api_serve: Callable[..., Awaitable[ApiClient]]) -> ApiClient:
    """A TestClient for ``create_app(api_engine)`` with the default options."""
    return await api_serve()


# -- a real daemon subprocess (tests/test_daemon.py) -------------------------------------------


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    """``daemon_factory(config, name=..., start=True, env=..., raw_config=...)`` -> DaemonProcess.

    Each daemon runs ``orchd serve`` in ``tmp_path/name`` with its own config, database and
    socket; see tests/daemon_util.py. Daemons still running at the end are killed.
    """
    factory = DaemonFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()
