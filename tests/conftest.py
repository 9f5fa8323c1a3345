"""Shared fixtures. Workflow modules used by tests live in tests/wf/ and import by name.

In-process engines come from ``engine_factory``; steps are steered through the resources of
``step_resources`` (a Gate, a FailurePlan, a Calls counter, fresh for each test), never
through module globals.
"""

from __future__ import annotations

import compileall
import functools
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from support import pg
from support.common import ROOT, TESTS_DIR, WF_DIR, EngineFactory, Open
from support.daemons import DaemonFactory

from orchd.engine import Engine
from orchd.testing import Gate, workflow_engine

ApiClient = TestClient[web.Request, web.Application]


if str(WF_DIR) not in sys.path:
    sys.path.insert(0, str(WF_DIR))

from steering import Calls, FailurePlan  # noqa: E402  (tests/wf/ is on the path only now)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_configure(config: pytest.Config) -> None:
    """Compile orchd and the test workflows once, before any worker or daemon starts: with
    PYTHONDONTWRITEBYTECODE set (as on this project's machines) no interpreter writes its
    .pyc files, so each of the suite's thousand daemon and CLI subprocesses compiled orchd
    from source again (0.1 s of CPU each)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        for folder in (ROOT / "orchd", TESTS_DIR):
            compileall.compile_dir(folder, quiet=1)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Any:
    """Keep pytest's copies of the test modules with their asserts rewritten: with
    PYTHONDONTWRITEBYTECODE set, each xdist worker rewrote every test module again at each
    run (collecting took 4.3 s of CPU per worker, 1.8 s with the copies). Only while
    collecting: modules a test writes and imports keep to the setting."""
    was, sys.dont_write_bytecode = sys.dont_write_bytecode, False
    try:
        return (yield)
    finally:
        sys.dont_write_bytecode = was


# -- tiers and how xdist spreads them ----------------------------------------------------------
#
# Every test file is in one tier (a marker: ``pytest -m unit``): unit, engine, daemon, cluster,
# soak or browser. The files named below have theirs here; a file that names none (a
# ``pytestmark``) is judged by what it uses: a daemon or a subprocess makes it ``daemon``, an
# in-process Engine or a database ``engine``, nothing of that ``unit``. ``make check`` runs
# unit and engine; ``make test`` runs every tier on several xdist workers (``-n 4 --dist
# loadgroup``; ``TierScheduling`` below), where each test goes to the next free worker, but
#
# - the tests of a file with module-scoped fixtures (one daemon for the file, the fuzz
#   campaign) stay on one worker, so those are made once;
# - the tests that load the machine or measure timing are two groups, each on one worker, its
#   tests one after another, and first, so the longest chains start at once: ``bench`` (the
#   bench smoke tests) and ``nodes`` (the soak's kills, the cluster's takeovers). So no two
#   of those run at once but the bench beside one of the others; one group of all three was
#   the suite's longest chain by far (3 minutes of a run of 4).
#
# (xdist's own ``xdist_group`` marker does nothing with pytest 9.2, whose node ids xdist can
# no longer rename: the groups are made here, by file, in the controller.)

TIERS = ("unit", "engine", "daemon", "cluster", "soak", "browser")
TIER_OF_FILE = {
    "test_bench.py": "soak",
    "test_soak.py": "soak",
    "test_cluster.py": "cluster",
    "test_pg_nodes.py": "cluster",
    "test_console_browser.py": "browser",
}
HEAVY_GROUPS = {"test_bench.py": "bench", "test_soak.py": "nodes", "test_cluster.py": "nodes"}
#: Fixtures that mean an Engine or a database in the test process (tier ``engine``).
ENGINE_FIXTURES = frozenset(
    {"backend", "engine_factory", "database_factory", "open_engine", "api_engine", "pg_server"}
)
#: Names a module imports when it drives daemons or other programs (tier ``daemon``).
PROCESS_NAMES = ("DaemonProcess", "DaemonFactory", "subprocess")
_SHARED_FIXTURE = re.compile(r"""scope\s*=\s*["'](module|class|package)["']""")


def _tier_of(items: list[pytest.Item]) -> str:
    """The tier of one file's tests: its ``pytestmark``, the table, or what it uses."""
    first = items[0]
    for mark in first.iter_markers():
        if mark.name in TIERS and all(i.get_closest_marker(mark.name) for i in items):
            return mark.name
    if first.path.name in TIER_OF_FILE:
        return TIER_OF_FILE[first.path.name]
    module = getattr(first, "module", None)
    names = vars(module) if module is not None else {}
    used = {f for i in items for f in i.fixturenames}
    if "daemon_factory" in used or any(n in names for n in PROCESS_NAMES):
        return "daemon"
    return "engine" if ENGINE_FIXTURES & used else "unit"


@functools.cache
def group_of_file(path: str) -> str | None:
    """The xdist group of a test file's tests: a heavy group, the file itself when its
    fixtures are module-scoped (read from its source), or None (each test on its own)."""
    if Path(path).name in HEAVY_GROUPS:
        return HEAVY_GROUPS[Path(path).name]
    try:
        source = (Path(__file__).parent.parent / path).read_text()
    except OSError:
        return None
    return path if _SHARED_FIXTURE.search(source) else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    by_file: dict[Path, list[pytest.Item]] = {}
    for item in items:
        by_file.setdefault(item.path, []).append(item)
    for mine in by_file.values():
        tier = _tier_of(mine)
        for item in mine:
            if not item.get_closest_marker(tier):
                item.add_marker(getattr(pytest.mark, tier))

    # The heavy groups first, then the files kept whole, then the rest, each in collection
    # order (a stable sort: every worker collects the same order, as xdist requires).
    def rank(item: pytest.Item) -> int:
        if item.path.name in HEAVY_GROUPS:
            return 0
        return 2 if group_of_file(item.nodeid.split("::", 1)[0]) is None else 1

    items.sort(key=rank)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup``: each test a unit of its own, but a group's tests one unit (on one
    worker, in order), the units in collection order (heavy groups first), not largest
    first."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of_file(nodeid.split("::", 1)[0]) or nodeid

    config.option.loadscopereorder = False
    return TierScheduling(config, log)


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


# -- the database backends: every engine test runs on SQLite and on PostgreSQL -----------------

BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes ``backend`` (through ``engine_factory`` or ``database_factory``) runs
    once per backend; ``@pytest.mark.sqlite_only`` keeps one on SQLite (it opens the file)."""
    if "backend" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("sqlite_only")
        metafunc.parametrize("backend", BACKENDS[:1] if only else BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pg.PgServer]:
    """A PostgreSQL server and a fresh database for this test run (see tests/pg.py);
    the PostgreSQL tests skip, saying why, when there is none."""
    server = pg.start()
    if isinstance(server, str):
        pytest.skip(f"PostgreSQL tests skipped: {server}")
    try:
        yield server
    finally:
        pg.stop(server)


@pytest.fixture
def database_factory(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], Awaitable[str]]]:
    """``await database_factory(name)``: the ``database`` setting of a fresh database for this
    test and backend: ``tmp_path/name`` on SQLite, a schema of its own on PostgreSQL (one that
    holds nothing: new, or an earlier test's emptied, see ``pg.empty_schema``). The same name
    gives the same database again (a restart)."""
    made: dict[str, str] = {}
    server = request.getfixturevalue("pg_server") if backend == "postgresql" else None

    async def database(name: str = "orchd.db") -> str:
        if name not in made:
            if server is not None:
                made[name] = await pg.empty_schema(server)
            else:
                made[name] = str(tmp_path / name)
        return made[name]

    yield database
    if server is not None:
        pg.give_back(server, list(made.values()))


@pytest.fixture
async def open_engine(database_factory: Callable[[str], Awaitable[str]]) -> AsyncIterator[Open]:
    """``await open_engine("ident_v2")``: an Engine on the test's one database with that code;
    the one opened before is closed first (a deploy: stop, new code, start)."""
    current: list[Engine] = []

    async def make(module: str) -> Engine:
        if current:
            await current.pop().close()
        engine = Engine(database=await database_factory("orchd.db"), workflows=[module])
        await engine.open()
        current.append(engine)
        return engine

    yield make
    for engine in current:
        await engine.close()


@pytest.fixture
async def engine_factory(
    database_factory: Callable[[str], Awaitable[str]],
) -> AsyncIterator[EngineFactory]:
    """``await engine_factory(workflows, name="orchd.db", resources=None, **settings)``: an
    open Engine on the database ``name`` of this test's backend (a file in ``tmp_path`` or a
    PostgreSQL schema; settings are EngineSettings fields); every engine it opened is closed at
    teardown, its gates opened first."""
    async with AsyncExitStack() as stack:

        async def make(
            workflows: list[str],
            *,
            name: str = "orchd.db",
            resources: dict[type, object] | None = None,
            **settings: Any,
        ) -> Engine:
            database = await database_factory(name)
            return await stack.enter_async_context(
                workflow_engine(workflows, resources=resources, database=database, **settings)
            )

        yield make


# -- control API (tests/test_api.py) ----------------------------------------------------------


@pytest.fixture
async def api_engine(engine_factory: EngineFactory, gate: Gate) -> Engine:
    """A real Engine on a temporary SQLite file with the workflows of tests/wf/api_flows.py;
    ``api_gated`` holds at ``gate``."""
    return await engine_factory(
        ["api_flows"], name="api.db", resources={Gate: gate}, grace_period=2.0
    )


@pytest.fixture
async def app_client() -> AsyncIterator[Callable[..., Awaitable[ApiClient]]]:
    """``await app_client(engine, **create_app_options)``: a TestClient over TCP of the
    control API and console in front of ``engine``, closed at teardown (before the engine,
    which a fixture asking for both sets up first)."""
    from orchd.api.app import create_app

    clients: list[ApiClient] = []

    async def serve(engine: Engine, **options: Any) -> ApiClient:
        client: ApiClient = TestClient(TestServer(create_app(engine, **options)))
        await client.start_server()
        clients.append(client)
        return client

    try:
        yield serve
    finally:
        for client in clients:
            await client.close()


@pytest.fixture
async def api_serve(
    api_engine: Engine, app_client: Callable[..., Awaitable[ApiClient]]
) -> Callable[..., Awaitable[ApiClient]]:
    """A factory: ``await api_serve(**create_app_options)`` gives a TestClient over TCP."""

    async def serve(**options: Any) -> ApiClient:
        options.setdefault("heartbeat", 0.2)
        return await app_client(api_engine, **options)

    return serve


@pytest.fixture
async def api_client(api_serve: Callable[..., Awaitable[ApiClient]]) -> ApiClient:
    """A TestClient for ``create_app(api_engine)`` with the default options."""
    return await api_serve()


# -- a real daemon subprocess (tests/test_daemon.py) -------------------------------------------


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    """``daemon_factory(config, name=..., start=True, env=..., raw_config=...)`` -> DaemonProcess.

    Each daemon runs ``orchd serve`` in ``tmp_path/name`` with its own config, database and
    socket; see tests/support/daemons.py. Daemons still running at the end are killed.
    """
    factory = DaemonFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()
