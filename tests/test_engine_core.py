"""The engine's core (issue 23): a runtime that does not die quietly, a sender who is always
answered (a branch's callback, envelopes queued at shutdown), a loop a locked database does not
block. In-process, on both backends unless a test needs the SQLite file."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from core_flows import Oss
from support.common import DatabaseFactory, EngineFactory, settle, wait_until

from orchd import Engine, Process
from orchd import _faults as faults
from orchd.api.app import create_app
from orchd.engine import messages
from orchd.errors import CallbackNotFound, InvalidTransition, ShuttingDown, StoreError
from orchd.http import HttpClient
from orchd.store.base import token_digest
from orchd.testing import Gate

#: How long a test waits for something that should happen at once (a hang fails the test).
#: The waits look at each turn of the loop (``every=0``): a state that lasts a turn or two
#: is seen.
PATIENCE = 10.0


@pytest.fixture
def oss() -> Oss:
    return Oss()


@pytest.fixture
async def engine(engine_factory: EngineFactory, oss: Oss, gate: Gate) -> Engine:
    return await engine_factory(["core_flows", "child_flows"], resources={Oss: oss, Gate: gate})


@pytest.fixture
def armed() -> Iterator[Callable[[str], None]]:
    """``armed("point@1!")``: fault points for this test (``$ORCHD_FAULTS``'s syntax)."""
    yield faults.arm
    faults.arm("")


def branch_steps(process: Process, branch: str) -> list[tuple[str, str]]:
    return [(s.name, s.status) for s in process.steps if s.branch == branch]


async def branch_failed(engine: Engine, pid: str, branch: str) -> Process:
    """The process once its branch's failure is committed (its sibling may still run)."""

    async def failed() -> Process | None:
        process = await engine.get(pid)
        return process if ("order circuit", "failed") in branch_steps(process, branch) else None

    found: Process = await wait_until(failed, f"{branch} failed", within=PATIENCE)
    return found


# -- 1. one failed read does not kill the engine; a dead supervisor is not healthy -------------


async def test_a_failed_read_of_an_aborted_parents_children_does_not_stop_the_engine(
    engine: Engine, gate: Gate, armed: Callable[[str], None]
) -> None:
    armed("cascade_read@1!")  # the first read of a parent's children raises, as a bug would
    inputs = {"inputs": [{"n": n, "mode": "hold"} for n in (1, 2, 3)]}
    parent = await engine.start("fan_out_limited", inputs)  # two run, the third is held
    await gate.reached(2)
    assert await engine.abort(parent) == "aborted"
    await wait_until(
        lambda: faults.hits("cascade_read") >= 1,
        "the cascade read its children",
        within=PATIENCE,
        every=0,
    )
    # The engine still runs processes ...
    quick = await engine.start("child_task", {"n": 4})
    assert (await engine.wait(quick, timeout=PATIENCE)).state["doubled"] == 8
    # ... and the held child, which only the read finds, is aborted once the read succeeds.
    children = (await engine.get(parent)).children
    assert len(children) == 3
    gate.open()
    for child in children:
        done = await settle(engine, child.id, "aborted")
        assert done.steps[-1].error == f"aborted by parent {parent}"
    assert faults.hits("cascade_read") == 2
    assert engine.failure is None


async def test_a_stopped_supervisor_makes_health_503_stops_pings_and_refuses_starts(
    engine: Engine,
) -> None:
    app = create_app(engine, heartbeat=0.2)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/api/health")).status == 200
        supervisor = engine._runtime.supervisor
        assert supervisor is not None
        supervisor.cancel()  # it stops, whatever the reason: nothing may go on as if well
        await asyncio.wait([supervisor])
        assert engine.failure is not None
        answer = await client.get("/api/health")
        assert answer.status == 503
        assert (await answer.json())["status"] == "degraded"
        with pytest.raises(ShuttingDown):
            await engine.ping()  # what the daemon's systemd watchdog asks before each ping
        with pytest.raises(ShuttingDown):
            await engine.start("child_task", {"n": 1})
        started = await client.post("/api/processes/child_task", json={"n": 1})
        assert started.status == 503


# -- 2. a branch's callback answer is always answered ------------------------------------------


async def test_an_answer_for_a_branch_whose_action_failed_is_refused_while_a_sibling_runs(
    engine: Engine, oss: Oss, gate: Gate
) -> None:
    pid = await engine.start("branch_order")
    await gate.reached(1)  # the sibling works on
    await branch_failed(engine, pid, "Provision/0")
    with pytest.raises(CallbackNotFound):
        async with asyncio.timeout(PATIENCE):
            await engine.callback(oss.tokens[0], {"circuit": "C-1"})
    assert token_digest(oss.tokens[0]) not in engine._runtime.waits
    gate.open()
    process = await settle(engine, pid, "failed")
    assert "the OSS refused the order" in (process.error or "")
    assert len(engine._runtime.waits) == 0


async def test_an_answer_taken_early_is_refused_when_the_action_then_fails(
    engine: Engine, oss: Oss, gate: Gate
) -> None:
    oss.hold = True  # the action hands its token out, then waits before it fails
    pid = await engine.start("branch_order")
    await gate.reached(1)
    await oss.handed.wait()
    sent = asyncio.ensure_future(engine.callback(oss.tokens[0], {"circuit": "C-1"}))
    await wait_until(
        lambda: engine.stats().mailbox_depth == 1,
        "the answer reached the actor",
        within=PATIENCE,
        every=0,
    )
    await wait_until(
        lambda: engine.stats().mailbox_depth == 0,
        "the fork took the answer",
        within=PATIENCE,
        every=0,
    )
    assert not sent.done()  # kept for the wait that would follow the action
    oss.go.set()
    with pytest.raises(CallbackNotFound):
        async with asyncio.timeout(PATIENCE):
            await sent
    gate.open()
    await settle(engine, pid, "failed")
    assert len(engine._runtime.waits) == 0
    # A retry asks again with a new token; the refused answer is not taken for it.
    oss.refuse, oss.hold = False, False
    oss.handed.clear()
    await engine.retry(pid)
    await wait_until(lambda: len(oss.tokens) == 2, "the action ran again", within=PATIENCE, every=0)
    process = await settle(engine, pid, "awaiting_callback")
    with pytest.raises(CallbackNotFound):
        await engine.callback(oss.tokens[0], {"circuit": "C-old"})
    await engine.callback(oss.tokens[1], {"circuit": "C-2"})
    process = await engine.wait(pid, timeout=PATIENCE)
    assert process.status == "completed", process.error
    assert process.state["circuit"] == "C-2"
    assert len(engine._runtime.waits) == 0


async def test_on_the_main_line_an_answer_for_a_failed_action_is_refused_too(
    engine: Engine, oss: Oss
) -> None:
    pid = await engine.start("main_order")
    await settle(engine, pid, "failed")
    with pytest.raises((CallbackNotFound, InvalidTransition)):
        async with asyncio.timeout(PATIENCE):
            await engine.callback(oss.tokens[0], {"circuit": "C-1"})
    assert len(engine._runtime.waits) == 0


# -- 3. envelopes queued at shutdown are answered ----------------------------------------------


async def test_an_envelope_queued_when_the_engine_stops_is_answered_shutting_down(
    engine_factory: EngineFactory, oss: Oss, gate: Gate
) -> None:
    engine = await engine_factory(
        ["core_flows"], resources={Oss: oss, Gate: gate}, grace_period=0.05
    )
    oss.hold = True  # the action holds while its own token's answer comes in
    pid = await engine.start("main_order")
    await oss.handed.wait()
    sent = asyncio.ensure_future(engine.callback(oss.tokens[0], {"circuit": "C-1"}))
    await wait_until(
        lambda: engine.stats().mailbox_depth == 1, "the answer is queued", within=PATIENCE, every=0
    )
    await engine.close()  # the grace period ends with the action still running
    with pytest.raises(ShuttingDown):
        async with asyncio.timeout(PATIENCE):
            await sent
    assert pid not in engine._runtime.actors


@pytest.mark.sqlite_only
async def test_a_message_being_handled_when_the_engine_stops_is_answered_shutting_down(
    engine_factory: EngineFactory,
    oss: Oss,
    gate: Gate,
    outside_lock: Callable[[], sqlite3.Connection],
) -> None:
    engine = await engine_factory(
        ["core_flows"], resources={Oss: oss, Gate: gate}, grace_period=0.05
    )
    oss.refuse = False
    pid = await engine.start("main_order")
    await settle(engine, pid, "awaiting_callback")
    lock = outside_lock()  # the answer's commit waits for another program's lock ...
    sent = asyncio.ensure_future(engine.answer_callback(pid, {"circuit": "C-1"}))
    actors = engine._runtime.actors
    await wait_until(
        lambda: pid in actors and actors[pid].committing, "it commits", within=PATIENCE, every=0
    )
    closing = asyncio.ensure_future(engine.close())  # ... when the engine stops
    with pytest.raises(ShuttingDown):
        async with asyncio.timeout(PATIENCE):
            await sent
    lock.execute("COMMIT")
    await closing


# -- 4. a locked database file does not block the loop -----------------------------------------


@pytest.fixture
async def outside_lock(
    database_factory: DatabaseFactory,
) -> AsyncIterator[Callable[[], sqlite3.Connection]]:
    """``lock()``: another program's connection to the test's database file, holding its write
    lock (BEGIN IMMEDIATE) until the test commits or closes it."""
    held: list[sqlite3.Connection] = []
    path = await database_factory("orchd.db")

    def take() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, timeout=0)
        conn.execute("BEGIN IMMEDIATE")
        held.append(conn)
        return conn

    yield take
    for conn in held:
        conn.close()


@pytest.mark.sqlite_only
async def test_a_commit_that_meets_an_outside_lock_waits_off_the_loop(
    engine: Engine, gate: Gate, outside_lock: Callable[[], sqlite3.Connection]
) -> None:
    loop = asyncio.get_running_loop()
    pid = await engine.start("held")
    await gate.reached(1)
    actor = engine._runtime.actors[pid]
    lock = outside_lock()
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(loop.time())
            await asyncio.sleep(0.01)

    ticker = asyncio.ensure_future(tick())
    try:
        gate.open()  # the step returns; its commit meets the lock
        await wait_until(
            lambda: actor.committing,
            "the step's commit waits for the lock",
            within=PATIENCE,
            every=0,
        )
        count = len(ticks)
        await wait_until(
            lambda: len(ticks) >= count + 10, "the loop goes on meanwhile", within=PATIENCE, every=0
        )
        assert (await engine.get(pid)).status == "running"  # and answers reads
        assert actor.committing  # still waiting: the lock is held
        lock.execute("COMMIT")
        process = await settle(engine, pid, "completed")
    finally:
        ticker.cancel()
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert max(gaps) < 0.5, f"the loop stood still for {max(gaps):.2f} s"
    assert [s.name for s in process.steps] == ["init", "inventory", "done"]


# -- 5. the façade is the user's API -----------------------------------------------------------

#: What ``Engine`` offers: the calls of an embedding program, the API, the CLI, the console and
#: the testing kit (README "Architecture"). The actors' runtime and the routing between nodes
#: are private (``orchd.engine.runtime``, ``orchd.engine.routing``): adding a name here is a
#: decision about the public API, not a place for plumbing.
ENGINE_API = frozenset(
    {
        # lifecycle and health
        "open", "close", "interrupt", "ping", "accepting", "failure", "settings", "stats",
        "live_nodes",
        # acting on processes
        "start", "start_once", "resume", "retry", "skip", "abort", "callback",
        "answer_callback", "wait",
        # reads
        "get", "list_processes", "resolve_id", "counts", "counts_by_workflow",
        "workflow_info", "resource_limits",
        # products, subscriptions and forms
        "products", "get_subscription", "list_subscriptions", "set_note", "form_page",
        "process_form_page",
        # events
        "listen", "stream", "last_event_id",
        # retention
        "retention", "gc",
    }
)  # fmt: skip
#: The parts an engine is made of that its users reach (the scheduler and the daemon too).
ENGINE_PARTS = frozenset(
    {
        "workflows", "catalog", "store", "limits", "resources", "tracing", "node", "loopwatch",
        "pruned", "started_at",
    }
)  # fmt: skip


async def test_the_engine_offers_its_users_api_and_no_plumbing(engine: Engine) -> None:
    assert {name for name in vars(Engine) if not name.startswith("_")} == ENGINE_API
    assert {name for name in vars(engine) if not name.startswith("_")} == ENGINE_PARTS


def test_a_message_names_who_acted_actor_in_the_mail_between_nodes() -> None:
    # ``by`` in the code; ``actor`` on the wire, which nodes of the version before read.
    mail = msgspec.json.encode(messages.Abort(by="uid:0 (ops)"))
    assert msgspec.json.decode(mail) == {"type": "Abort", "actor": "uid:0 (ops)"}
    assert msgspec.json.decode(mail, type=messages.Message) == messages.Abort(by="uid:0 (ops)")


async def test_an_engine_whose_store_refuses_to_open_leaves_no_http_session_open(
    tmp_path: Path,
) -> None:
    """A database from a newer orchd is refused at open(); the engine's own HTTP client, opened
    before the store, is closed again (a leaked aiohttp session warns when collected)."""
    path = tmp_path / "newer.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 999")
    engine = Engine(database=str(path), workflows=["engine_flows"])
    with pytest.raises(StoreError, match="newer than this orchd"):
        await engine.open()
    assert HttpClient not in engine.resources
    del engine
    gc.collect()  # an unclosed session's warning would fail this test here
