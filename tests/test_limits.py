"""Limits on shared resources (README "Limits on shared resources") in the engine, on SQLite and on
PostgreSQL.

The steps of tests/wf/limit_flows.py record in a ``Journal`` when they enter and leave their
key, so each test checks what the steps saw: never two on one key at once (unless the limit
allows it), a rate's starts spaced out, waits served in order, a blocked process aborted
without its step ever running.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from limit_flows import Hold, Journal, audit_site
from support.common import EngineFactory, settle, wait_until

from orchd.engine import Engine
from orchd.errors import ConfigError
from orchd.settings import LimitSpec
from orchd.state import StepInputError
from orchd.testing import run_step, workflow_engine

pytestmark = pytest.mark.anyio

LIMITS = {
    "router": LimitSpec(concurrency=1),
    "device": LimitSpec(concurrency=1),
    "oss": LimitSpec(rate="20/s"),  # type: ignore[arg-type]  # as the file writes it
}


async def limited(
    engine_factory: EngineFactory, limits: dict[str, LimitSpec] | None = None
) -> tuple[Engine, Journal, Hold]:
    journal, hold = Journal(), Hold()
    engine = await engine_factory(
        ["limit_flows"],
        resources={Journal: journal, Hold: hold},
        limits=LIMITS if limits is None else limits,
        grace_period=2.0,
    )
    return engine, journal, hold


async def blocked(engine: Engine, pid: str) -> Any:
    """Wait until the process's step waits for a slot; answer its ``blocked_on``."""

    async def check() -> Any:
        return (await engine.get(pid)).blocked_on

    return await wait_until(check, f"{pid} blocked")


async def completed(engine: Engine, *pids: str) -> None:
    for pid in pids:
        process = await engine.wait(pid, timeout=30)
        assert process.status == "completed", (process.status, process.error)


def overlaps(journal: Journal) -> dict[str, int]:
    """The most steps inside each key at once, replaying the journal in order."""
    inside: dict[str, int] = {}
    most: dict[str, int] = {}
    for kind, key, _, _ in journal.events:
        inside[key] = inside.get(key, 0) + (1 if kind == "enter" else -1)
        most[key] = max(most.get(key, 0), inside[key])
    return most


async def test_one_step_at_a_time_per_router_and_routers_apart(
    engine_factory: EngineFactory,
) -> None:
    engine, journal, hold = await limited(engine_factory)
    pids = [
        await engine.start("configure_router", {"node_name": f"r{i % 4}", "hold": True})
        for i in range(12)
    ]
    # The routers do not wait for each other: one step of each is inside at once (held
    # there, however slow the machine), and the other eight wait for their router.
    await hold.reached(4)

    async def eight_wait() -> bool:
        return [bool((await engine.get(pid)).blocked_on) for pid in pids].count(True) == 8

    await wait_until(eight_wait, "eight waiting for their router")
    assert journal.inside == {f"router:r{i}": 1 for i in range(4)}
    hold.open()
    await completed(engine, *pids)
    assert overlaps(journal) == {f"router:r{i}": 1 for i in range(4)}


async def test_a_concurrency_of_two_lets_two_in_and_never_three(
    engine_factory: EngineFactory,
) -> None:
    engine, journal, hold = await limited(
        engine_factory, {**LIMITS, "router": LimitSpec(concurrency=2)}
    )
    pids = [
        await engine.start("configure_router", {"node_name": "r1", "hold": True}) for _ in range(5)
    ]
    # Two are let in (held inside, however slow the machine), the other three wait.
    await hold.reached(2)

    async def three_wait() -> bool:
        return [bool((await engine.get(pid)).blocked_on) for pid in pids].count(True) == 3

    await wait_until(three_wait, "three waiting for a slot")
    assert journal.inside["router:r1"] == 2
    hold.open()
    await completed(engine, *pids)
    assert overlaps(journal) == {"router:r1": 2}


async def test_plain_function_steps_take_their_slots_too(engine_factory: EngineFactory) -> None:
    engine, journal, _ = await limited(engine_factory)
    pids = [
        await engine.start("configure_router_sync", {"node_name": "r1", "pause": 0.02})
        for _ in range(6)
    ]
    await completed(engine, *pids)
    assert overlaps(journal) == {"router:r1": 1}
    assert len(journal.entered()) == 6


async def test_waits_are_served_first_come_first_served(engine_factory: EngineFactory) -> None:
    engine, journal, hold = await limited(engine_factory)
    first = await engine.start("configure_router", {"node_name": "r1", "hold": True})
    await hold.reached()
    waiting = []
    for _ in range(5):
        waiting.append(await engine.start("configure_router", {"node_name": "r1"}))
        await blocked(engine, waiting[-1])  # in this order
    hold.open()
    await completed(engine, first, *waiting)
    assert [pid for _, pid, _ in journal.entered()] == [first, *waiting]


async def test_a_blocked_process_is_running_and_shows_what_it_waits_for(
    engine_factory: EngineFactory,
) -> None:
    engine, journal, hold = await limited(engine_factory)
    holder = await engine.start("configure_router", {"node_name": "r1", "hold": True})
    await hold.reached()
    before = time.time()
    waiter = await engine.start("configure_router", {"node_name": "r1"})
    blocked_on = await blocked(engine, waiter)
    process = await engine.get(waiter)
    assert process.status == "running"
    assert (blocked_on.resource, blocked_on.key) == ("router", "r1")
    assert before - 1 <= blocked_on.since.timestamp() <= time.time()
    assert (await engine.get(holder)).blocked_on is None
    listed = {p.id: p.blocked_on for p in (await engine.list_processes()).items}
    assert listed[waiter] == blocked_on and listed[holder] is None

    report = {r.resource: r for r in await engine.resource_limits()}
    router = report["router"]
    assert (router.concurrency, router.in_use, router.waiting) == (1, 1, 1)
    assert [k.key for k in router.keys] == ["r1"]
    assert [h.process_id for h in router.keys[0].holders] == [holder]
    assert router.keys[0].holders[0].step == "configure"
    assert report["oss"].rate == "20/s" and report["oss"].keys == []
    assert engine.stats().resources["router"] == (1, 1)

    hold.open()
    await completed(engine, holder, waiter)
    assert (await engine.get(waiter)).blocked_on is None
    assert engine.stats().resources["router"] == (0, 0)
    assert all(r.in_use == 0 and not r.keys for r in await engine.resource_limits())


async def test_a_process_blocked_on_a_slot_can_be_aborted_and_its_step_never_runs(
    engine_factory: EngineFactory,
) -> None:
    engine, journal, hold = await limited(engine_factory)
    holder = await engine.start("configure_router", {"node_name": "r1", "hold": True})
    await hold.reached()
    waiter = await engine.start("configure_router", {"node_name": "r1"})
    behind = await engine.start("configure_router", {"node_name": "r1"})
    await blocked(engine, behind)
    await engine.abort(waiter)
    aborted = await engine.wait(waiter, timeout=10)
    assert aborted.status == "aborted"
    assert "configure" not in [s.name for s in aborted.steps]
    assert aborted.blocked_on is None
    assert (await engine.get(holder)).status == "running"  # the holder goes on, holding
    hold.open()
    await completed(engine, holder, behind)
    assert [pid for _, pid, _ in journal.entered()] == [holder, behind]


async def test_a_step_takes_all_its_resources_at_once_or_none(
    engine_factory: EngineFactory,
) -> None:
    engine, journal, hold = await limited(engine_factory)
    toucher = await engine.start("touch_device", {"first": "a", "hold": True})
    await hold.reached()
    linker = await engine.start("link_devices", {"first": "a", "second": "b"})
    blocked_on = await blocked(engine, linker)
    assert (blocked_on.resource, blocked_on.key) == ("device", "a")
    # While it waits for a, it holds nothing: not b either.
    device = next(r for r in await engine.resource_limits() if r.resource == "device")
    holders = {k.key: [h.process_id for h in k.holders] for k in device.keys}
    assert holders == {"a": [toucher], "b": []}
    hold.open()
    await completed(engine, toucher, linker)
    entered = [(k, p) for k, p, _ in journal.entered()]
    assert entered == [("device:a", toucher), ("device:a", linker), ("device:b", linker)]


async def test_two_steps_naming_two_resources_in_opposite_orders_never_deadlock(
    engine_factory: EngineFactory,
) -> None:
    engine, journal, _ = await limited(engine_factory)
    pairs = [("x", "y"), ("y", "x")] * 10
    pids = [
        await engine.start("link_devices", {"first": a, "second": b, "pause": 0.005})
        for a, b in pairs
    ]
    await completed(engine, *pids)
    assert overlaps(journal) == {"device:x": 1, "device:y": 1}


async def test_a_rate_spaces_starts_evenly_with_no_burst(engine_factory: EngineFactory) -> None:
    engine, journal, _ = await limited(engine_factory)
    pids = [await engine.start("rated_call") for _ in range(25)]
    await completed(engine, *pids)
    starts = sorted(t for key, _, t in journal.entered() if key == "oss")
    assert len(starts) == 25
    # 20/s: no one-second window holds more than the rate plus one...
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u < t + 1.0) <= 21, starts
    # ... because they are spaced out, not let through in bursts.
    assert starts[-1] - starts[0] >= 24 / 20 * 0.9
    assert starts[10] - starts[0] >= 10 / 20 * 0.9


async def test_branch_steps_take_their_slots_like_main_line_steps(
    engine_factory: EngineFactory,
) -> None:
    engine, journal, _ = await limited(engine_factory)
    routers = ["r1", "r2", "r1", "r1", "r2", "r3"]
    pid = await engine.start("configure_ports", {"routers": routers, "pause": 0.02})
    await completed(engine, pid)
    assert overlaps(journal) == {"router:r1": 1, "router:r2": 1, "router:r3": 1}
    assert len(journal.entered()) == len(routers)


async def test_a_branch_blocked_on_a_slot_is_aborted_with_its_process(
    engine_factory: EngineFactory,
) -> None:
    engine, journal, hold = await limited(engine_factory)
    holder = await engine.start("configure_router", {"node_name": "r1", "hold": True})
    await hold.reached()
    pid = await engine.start("configure_ports", {"routers": ["r1", "r1"]})
    await blocked(engine, pid)
    await engine.abort(pid)
    assert (await engine.wait(pid, timeout=10)).status == "aborted"
    hold.open()
    await completed(engine, holder)
    assert [p for _, p, _ in journal.entered()] == [holder]


async def test_slots_are_free_once_a_step_failed_went_waiting_or_awaits_a_callback(
    engine_factory: EngineFactory,
) -> None:
    engine, journal, _ = await limited(engine_factory)
    failed = await engine.start("failing_router", {"node_name": "r1"})
    assert (await engine.wait(failed, timeout=10)).status == "failed"
    flaky = [await engine.start("push_router", {"node_name": "r1", "fails": 1}) for _ in range(4)]
    for pid in flaky:
        await settle(engine, pid, "completed")
    assert len(journal.entered()) == 8  # each failed once, then went through
    assert overlaps(journal) == {"router:r1": 1}

    ordered = await engine.start("order_router_circuit", {"node_name": "r1"})
    await wait_until(lambda: ordered in journal.tokens, "the circuit ordered")
    assert (await engine.wait(ordered, timeout=10)).status == "awaiting_callback"
    # Its action's outcome is committed: the router is free while it awaits the callback.
    other = await engine.start("configure_router", {"node_name": "r1"})
    await completed(engine, other)
    await engine.callback(journal.tokens[ordered], {"circuit": "up"})
    await completed(engine, ordered)
    assert engine.stats().resources["router"] == (0, 0)


async def test_a_state_key_missing_from_a_resource_fails_the_step_saying_which(
    engine_factory: EngineFactory,
) -> None:
    engine, _, _ = await limited(engine_factory)
    pid = await engine.start("audit_router")
    process = await engine.wait(pid, timeout=10)
    assert process.status == "failed"
    assert process.error == (
        "step 'audit the site' uses 'router:{site}', but State has no key 'site' to fill it in"
    )
    bad = await engine.start("audit_router", {"site": {"not": "a key"}})
    process = await engine.wait(bad, timeout=10)
    assert process.status == "failed" and "'site' is a dict, not a string" in str(process.error)


async def test_a_limit_a_step_names_that_is_not_configured_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as refused:
        async with workflow_engine(["limit_flows"], limits={"router": LimitSpec(concurrency=1)}):
            pass
    assert refused.value.detail == (
        "limits: step 'link' of workflow 'link_devices' uses 'device:{first}', but [limits] "
        "sets no 'device' (add e.g. `device = 1` under [limits])"
    )


async def test_run_step_fills_in_a_resource_key_as_the_engine_does() -> None:
    with pytest.raises(StepInputError, match="State has no key 'site'"):
        await run_step(audit_site, {"process_id": "p1"})
    assert await run_step(audit_site, {"process_id": "p1", "site": "ams"}) == {"audited": True}
