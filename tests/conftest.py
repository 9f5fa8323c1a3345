"""Shared fixtures. Workflow modules used by tests live in tests/wf/ and import by name.

In-process engines come from ``engine_factory``; steps are steered through the resources of
``step_resources`` (a Gate, a FailurePlan, a Calls counter, fresh for each test), never
through module globals.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from daemon_util import DaemonFactory
from tests_support import WF_DIR, EngineFactory

from orchd.engine import Engine
from orchd.testing import Gate, workflow_engine

ApiClient = TestClient[web.Request, web.Application]


if str(WF_DIR) not in sys.path:
    sys.path.insert(0, str(WF_DIR))

from steering import Calls, FailurePlan  # noqa: E402  (tests/wf/ is on the path only now)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- in-process engines and what steers their steps -------------------------------------------


@pytest.fixture
def gate() -> Gate:
    """Holds the steps that ask for a ``Gate`` until the test opens it."""
    return Gate()


@pytest.fixture
def failures() -> FailurePlan:
    """Which steps raise, how many times: ``failures["flaky"] = 1``."""
    return FailurePlan()


@pytest.fixture
def calls() -> Calls:
    """How many times each step ran."""
    return Calls()


@pytest.fixture
def step_resources(gate: Gate, failures: FailurePlan, calls: Calls) -> dict[type, object]:
    """The resources of the test workflows' steps, for ``Engine(resources=...)``."""
    return {Gate: gate, FailurePlan: failures, Calls: calls}


@pytest.fixture
async def engine_factory(tmp_path: Path) -> AsyncIterator[EngineFactory]:
    """``await engine_factory(workflows, name="orchd.db", resources=None, **settings)``: an
    open Engine on ``tmp_path/name`` (settings are EngineSettings fields); every engine it
    opened is closed at teardown, its gates opened first."""
    async with AsyncExitStack() as stack:

        async def open_engine(
            workflows: list[str],
            *,
            name: str = "orchd.db",
            resources: dict[type, object] | None = None,
            **settings: Any,
        ) -> Engine:
            return await stack.enter_async_context(
                workflow_engine(
                    workflows, resources=resources, database=tmp_path / name, **settings
                )
            )

        yield open_engine


# -- control API (tests/test_api.py) ----------------------------------------------------------


@pytest.fixture
async def api_engine(engine_factory: EngineFactory, gate: Gate) -> Engine:
    """A real Engine on a temporary SQLite file with the workflows of tests/wf/api_flows.py;
    ``api_gated`` holds at ``gate``."""
    return await engine_factory(
        ["api_flows"], name="api.db", resources={Gate: gate}, grace_period=2.0
    )


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
