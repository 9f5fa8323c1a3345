"""Nodes of one PostgreSQL database inside one test process: leases, fencing, reconnects.

The daemon-level cluster tests are in tests/test_cluster.py; these drive two Engines directly,
so a lease can be made to lapse at a chosen moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from branch_flows import Ledger
from steering import Calls, FailurePlan
from support import pg
from support.common import wait_until

from orchd import Engine
from orchd.errors import LeaseLost, StoreError, SubscriptionLocked
from orchd.testing import Gate

Open = Callable[..., Awaitable[Engine]]


@pytest.fixture
async def nodes(pg_server: pg.PgServer) -> AsyncIterator[tuple[str, Open]]:
    url = await pg.create_schema(pg_server)
    opened: list[Engine] = []

    async def open_node(node: str, gate: Gate, calls: Calls, **settings: Any) -> Engine:
        resources = {Gate: gate, Calls: calls, FailurePlan: FailurePlan()}
        engine = Engine(
            database=url,
            workflows=["engine_flows", "branch_flows"],
            node_id=node,
            lease_timeout=settings.pop("lease_timeout", 1.0),
            resources={**resources, **settings.pop("resources", {})},
            grace_period=0.5,
            **settings,
        )
        await engine.open()
        opened.append(engine)
        return engine

    try:
        yield url, open_node
    finally:
        for engine in opened:
            for resource in engine.resources.values():
                if isinstance(resource, Gate):
                    resource.open()
            await engine.close()


async def freeze(engine: Engine) -> None:
    """The node stalls as a whole (a long GC pause, a partition, SIGSTOP): its lease is no
    longer renewed, and the node does not notice."""
    assert engine.node is not None and engine.node.gate is not None
    await engine.node.gate.lease.stop()


async def test_a_node_that_lost_its_lease_cannot_overwrite_its_successor(
    nodes: tuple[str, Open],
) -> None:
    url, open_node = nodes
    held, free = Gate(), Gate(open=True)
    calls_a, calls_b = Calls(), Calls()
    a = await open_node("a", held, calls_a)
    pid = await a.start("slow_task")
    await held.reached(1)
    b = await open_node("b", free, calls_b)
    # a stalls: its lease lapses and b takes the process over from its last committed step.
    await freeze(a)
    await pg.fetch(url, "UPDATE nodes SET lease_until = to_timestamp(0) WHERE node_id = 'a'")
    done = await b.wait(pid, timeout=10)
    assert done.status == "completed" and calls_b["slow"] == 1
    # a wakes up and finishes its step: its checkpoint is refused (its actor ends with
    # nothing written), and nothing is recorded twice.
    held.open()
    assert a.node is not None
    node = a.node
    await wait_until(lambda: not node.engine.runs(pid), "a's actor ended")
    again = await b.get(pid)
    assert [s.name for s in again.steps] == ["init", "slow", "always", "done"]
    assert again.status == "completed" and calls_a["always"] == 0


async def test_no_step_starts_while_the_lease_is_within_its_margin_of_lapsing(
    nodes: tuple[str, Open],
) -> None:
    url, open_node = nodes
    calls = Calls()
    a = await open_node("a", Gate(open=True), calls, lease_timeout=6.0)
    assert a.node is not None and a.node.gate is not None
    gate = a.node.gate
    # The database holds the node's row: the keeper's renewals wait and time out, and the
    # lease runs towards its end (1.5 s of its 6 s are the margin).
    conn = await asyncpg.connect(url)
    try:
        hold = conn.transaction()
        await hold.start()
        await conn.execute("SELECT 1 FROM nodes WHERE node_id = 'a' FOR UPDATE")
        await wait_until(lambda: not gate.open, "the lease within its margin")
        pid = await a.start("slow_task")
        await wait_until(lambda: gate.waiting >= 1, "the process waits at the gate")
        assert calls["slow"] == 0 and (await a.get(pid)).steps == []
        await hold.rollback()  # the next renewal goes through, before the lease lapsed
    finally:
        await conn.close()
    done = await a.wait(pid, timeout=10)
    assert [s.name for s in done.steps] == ["init", "slow", "always", "done"]
    assert done.status == "completed" and calls["slow"] == 1
    assert a.node.rejoined == 0  # renewed in time: the same incarnation goes on


async def test_a_branch_step_waits_at_the_gate_while_the_lease_is_within_its_margin(
    nodes: tuple[str, Open],
) -> None:
    url, open_node = nodes
    held, ledger = Gate(), Ledger()
    a = await open_node("a", held, Calls(), lease_timeout=6.0, resources={Ledger: ledger})
    assert a.node is not None and a.node.gate is not None
    gate = a.node.gate
    # One branch of the fork is in its "hold" step, which began while the lease held.
    pid = await a.start("held", {})
    await held.reached(1)
    conn = await asyncpg.connect(url)
    try:
        hold = conn.transaction()
        await hold.start()
        await conn.execute("SELECT 1 FROM nodes WHERE node_id = 'a' FOR UPDATE")
        await wait_until(lambda: not gate.open, "the lease within its margin")
        held.open()  # "hold" returns; the branch's next step meets the gate
        await wait_until(lambda: gate.waiting >= 1, "the branch's next step waits at the gate")
        assert ledger.count("after hold") == 0
        await hold.rollback()  # the next renewal goes through, before the lease lapsed
    finally:
        await conn.close()
    done = await a.wait(pid, timeout=10)
    assert done.status == "completed" and ledger.count("after hold") == 1
    assert [s.name for s in done.steps if s.branch] == ["quick", "hold", "after hold"]
    assert a.node.rejoined == 0  # renewed in time: the same incarnation goes on


async def test_a_stale_incarnation_with_the_same_node_id_commits_nothing(
    nodes: tuple[str, Open],
) -> None:
    url, open_node = nodes
    stale_gate, fresh_gate = Gate(), Gate()
    stale_calls, calls = Calls(), Calls()
    stale = await open_node("a", stale_gate, stale_calls)
    pid = await stale.start("slow_task")
    await stale_gate.reached(1)
    # The daemon stalls past its lease; a new daemon is started with the same node_id. It is a
    # new incarnation: it continues the process from its last commit.
    await freeze(stale)
    await pg.fetch(url, "UPDATE nodes SET lease_until = to_timestamp(0) WHERE node_id = 'a'")
    fresh = await open_node("a", fresh_gate, calls)
    await fresh_gate.reached(1)
    # The stale one wakes up and finishes its step first. The row still names node a, but
    # the fence is on the incarnation: its checkpoint is refused, its actor ends.
    stale_gate.open()
    assert stale.node is not None
    node = stale.node
    await wait_until(lambda: not node.engine.runs(pid), "the stale actor ended")
    assert [s.name for s in (await fresh.get(pid)).steps] == ["init"]
    fresh_gate.open()
    done = await fresh.wait(pid, timeout=10)
    assert [s.name for s in done.steps] == ["init", "slow", "always", "done"]
    assert done.status == "completed" and calls["slow"] == 1 and stale_calls["always"] == 0


async def test_a_node_that_lost_its_lease_knows_it_and_rejoins_as_a_new_incarnation(
    nodes: tuple[str, Open],
) -> None:
    url, open_node = nodes
    held = Gate()
    calls = Calls()
    a = await open_node("a", held, calls)
    pid = await a.start("slow_task")
    await held.reached(1)
    before = await pg.fetch(url, "SELECT incarnation FROM nodes WHERE node_id = 'a'")
    # The lease lapses under a live node (as when its loop or its database connection
    # stalled for a whole lease_timeout): the keeper's next renewal is refused.
    await pg.fetch(url, "UPDATE nodes SET lease_until = to_timestamp(0) WHERE node_id = 'a'")
    assert a.node is not None
    node = a.node
    await wait_until(lambda: node.gate is not None and node.gate.lost, "the lease is lost")
    with pytest.raises(LeaseLost):
        await a.live_nodes()  # /api/health says so (503)
    # It drops the step that ran (it did not commit) and rejoins as a new incarnation, then
    # continues its process from its last commit: the step runs again, as after a restart.
    await wait_until(lambda: node.rejoined == 1, "a rejoined")
    after = await pg.fetch(url, "SELECT incarnation FROM nodes WHERE node_id = 'a'")
    assert after[0][0] != before[0][0]
    await held.reached(2)
    held.open()
    done = await a.wait(pid, timeout=10)
    assert done.status == "completed" and calls["slow"] == 2
    assert [s.name for s in done.steps] == ["init", "slow", "always", "done"]
    assert [n.node_id for n in (await a.live_nodes()) or []] == ["a"]


async def test_requests_reach_the_owner_and_a_clean_stop_hands_processes_over(
    nodes: tuple[str, Open],
) -> None:
    url, open_node = nodes
    gate = Gate()
    a = await open_node("a", gate, Calls())
    b = await open_node("b", Gate(open=True), Calls())
    pid = await a.start("slow_task")
    await gate.reached(1)
    # b cannot run it (a owns it): abort through b is a's to carry out between steps.
    assert await b.abort(pid) == "running"
    gate.open()
    assert (await b.wait(pid, timeout=10)).status == "aborted"

    held = Gate()
    c = await open_node("c", held, Calls())
    second = await c.start("slow_task")
    await held.reached(1)
    await c.close()  # grace period passes; the step is interrupted, the process handed back
    assert (await b.wait(second, timeout=10)).status == "completed"
    owner = await pg.fetch(url, "SELECT owner FROM processes WHERE id = $1", second)
    assert owner[0][0] in ("a", "b")  # whichever swept first


async def test_the_engine_reconnects_when_the_server_drops_its_connections(
    nodes: tuple[str, Open],
) -> None:
    url, open_node = nodes
    a = await open_node("a", Gate(open=True), Calls())
    first = await a.start("slow_task")
    assert (await a.wait(first, timeout=10)).status == "completed"
    await pg.fetch(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )

    async def started() -> str | None:
        # The first write after the drop may be refused; then it reconnects.
        try:
            return await a.start("slow_task")
        except StoreError:
            return None

    pid = await wait_until(started, "a start after the connections were dropped")
    assert (await a.wait(pid, timeout=10)).status == "completed"


async def test_a_subscription_lock_holds_across_nodes(pg_server: pg.PgServer) -> None:
    url = await pg.create_schema(pg_server)
    a = Engine(database=url, workflows=["e2e_flows"], node_id="a")
    b = Engine(database=url, workflows=["e2e_flows"], node_id="b")
    async with a, b:
        created = await a.wait(await a.start("e2e_create", {"name": "w", "customer_id": "c"}))
        sid = created.state["subscription_id"]
        change = {"subscription_id": sid, "description": "x"}
        for _ in range(5):  # two nodes, one subscription, at the same moment: one start wins
            outcomes = await asyncio.gather(
                a.start("e2e_modify", change), b.start("e2e_modify", change),
                return_exceptions=True,
            )  # fmt: skip
            won = [o for o in outcomes if isinstance(o, str)]
            lost = [o for o in outcomes if isinstance(o, SubscriptionLocked)]
            assert len(won) == 1 and len(lost) == 1, outcomes
            assert (await b.wait(won[0], timeout=10)).status == "suspended"
            await b.resume(won[0], {"ok": True})  # answered on b, whoever owns it
            assert (await a.wait(won[0], timeout=10)).status == "completed"
        sub = await b.get_subscription(sid)
        assert sub.insync and sub.description == "x"
