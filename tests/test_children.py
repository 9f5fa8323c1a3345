"""Child processes (README "Child processes"), in-process: a parent fans a workflow out and
waits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from support.common import engine_fixture, settle, wait_until

from orchd import Engine, StepList, Target, children, done, init, workflow
from orchd.errors import ConfigError, InvalidTransition
from orchd.store.base import Retention
from orchd.testing import Gate, workflow_engine

engine = engine_fixture("child_flows")


def inputs(*numbers: int, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"n": n, **extra} for n in numbers]}


async def running_children(engine: Engine, pid: str, count: int) -> bool:
    """Whether ``count`` of the parent's children are committed as running."""
    children = (await engine.get(pid)).children
    return [c.status for c in children].count("running") == count


async def test_a_parent_waits_for_its_children_and_collects_them_in_input_order(
    engine: Engine,
) -> None:
    pid = await engine.start("fan_out", inputs(3, 1, 2))
    parent = await settle(engine, pid, "completed")
    results = parent.state["results"]
    assert [r["state"]["doubled"] for r in results] == [6, 2, 4]
    assert all(r["status"] == "completed" for r in results)
    assert "process_id" not in results[0]["state"]  # reserved keys left out
    assert parent.state["total"] == 12
    assert [c.id for c in parent.children] == [r["id"] for r in results]
    child = await engine.get(results[0]["id"])
    assert child.parent_id == pid and child.status == "completed"
    page = await engine.list_processes(parent=pid)
    assert {p.id for p in page.items} == {r["id"] for r in results}
    assert [s.name for s in parent.steps] == ["init", "double them", "report", "done"]


async def test_the_parent_is_awaiting_children_meanwhile_and_holds_no_actor(
    engine: Engine, gate: Gate
) -> None:
    pid = await engine.start("fan_out", inputs(1, 2, mode="hold"))
    await gate.reached(2)
    assert (await engine.get(pid)).status == "awaiting_children"
    assert pid not in engine._runtime.actors
    gate.open()
    assert (await settle(engine, pid, "completed")).state["total"] == 6


async def test_no_inputs_joins_at_once(engine: Engine) -> None:
    parent = await settle(engine, await engine.start("fan_out", {"inputs": []}), "completed")
    assert parent.state["results"] == [] and parent.children == []


async def test_at_most_max_concurrency_children_run_at_once(engine: Engine) -> None:
    pid = await engine.start("fan_out_limited", inputs(*range(6), pause=0.05))
    parent = await settle(engine, pid, "completed")
    spans = []
    for child in parent.children:
        work = [s for s in (await engine.get(child.id)).steps if s.name == "work"][0]
        spans.append((work.started_at, work.finished_at))
    most = max(sum(1 for s in spans if s[0] <= t < s[1]) for t, _ in spans)
    assert most == 2


async def test_children_beyond_the_limit_wait_as_created(engine: Engine, gate: Gate) -> None:
    pid = await engine.start("fan_out_limited", inputs(1, 2, 3, 4, mode="hold"))
    await gate.reached(2)
    # The two at the gate were started with the others created: had the limit let more run,
    # they would have started with them and been committed running in the same commits.
    await wait_until(lambda: running_children(engine, pid, 2), "two children committed as running")
    statuses = [c.status for c in (await engine.get(pid)).children]
    assert statuses.count("created") == 2 and gate.arrivals == 2
    gate.open()
    await settle(engine, pid, "completed")


async def test_a_failed_child_keeps_its_slot_and_the_parent_waiting(
    engine: Engine,
) -> None:
    failing = [{"n": 1, "mode": "fail"}, {"n": 2, "mode": "fail"}, {"n": 3}]
    pid = await engine.start("fan_out_limited", {"inputs": failing})
    await settle(engine, pid, "awaiting_children")
    for child in (await engine.get(pid)).children[:2]:
        await settle(engine, child.id, "failed")
    parent = await engine.get(pid)
    assert parent.status == "awaiting_children"
    assert [c.status for c in parent.children] == ["failed", "failed", "created"]


async def test_an_invalid_element_fails_the_step_naming_it_and_creates_no_child(
    engine: Engine,
) -> None:
    pid = await engine.start("fan_out_to_a_form", {"inputs": [{"n": 1}, {"n": "x"}, {}]})
    parent = await settle(engine, pid, "failed")
    assert "element 1" in (parent.error or "") and "element 2" in (parent.error or "")
    assert parent.children == []
    assert (await engine.list_processes(workflow="child_with_form")).items == []


async def test_an_unknown_workflow_named_by_state_fails_the_step_naming_it(
    engine: Engine,
) -> None:
    given = inputs(1) | {"child": "no_such_workflow"}
    parent = await settle(engine, await engine.start("fan_out_to_nowhere", given), "failed")
    assert "no_such_workflow" in (parent.error or "") and "element 0" in (parent.error or "")


async def test_children_of_a_workflow_no_module_defines_are_refused_at_load() -> None:
    def pick() -> StepList:
        return init >> children("redeploy routers", workflow="redeploy_base", inputs="i") >> done

    fan = workflow("Redeploy a region", target=Target.SYSTEM)(pick)
    with pytest.raises(ConfigError) as refused:
        async with workflow_engine([fan]):
            pass
    message = str(refused.value)
    assert "workflow 'pick'" in message and "step 'redeploy routers'" in message
    assert "'redeploy_base', which no loaded module defines" in message
    assert f"({__file__}, line " in message  # the user's file, not orchd's


async def test_an_aborted_child_fails_the_parent_and_a_retry_restarts_only_it(
    engine: Engine, gate: Gate
) -> None:
    given = [{"n": 1}, {"n": 2, "mode": "fail_while_closed"}]
    pid = await engine.start("fan_out", {"inputs": given})
    await settle(engine, pid, "awaiting_children")
    first, second = [c.id for c in (await engine.get(pid)).children]
    await settle(engine, second, "failed")
    await engine.abort(second)
    parent = await settle(engine, pid, "failed")
    assert "element 1" in (parent.error or "") and second in (parent.error or "")
    gate.open()
    await engine.retry(pid)
    parent = await settle(engine, pid, "completed")
    assert parent.state["total"] == 6
    ids = [r["id"] for r in parent.state["results"]]
    assert ids[0] == first and ids[1] != second  # the completed one kept, a new second
    assert len(parent.children) == 3  # the aborted one is still listed


async def test_aborting_the_parent_aborts_every_unfinished_child(
    engine: Engine, gate: Gate
) -> None:
    pid = await engine.start("fan_out_limited", inputs(1, 2, 3, mode="hold"))
    await gate.reached(2)
    await engine.abort(pid, reporter="ops")
    gate.open()  # running children stop at their next step boundary
    children = (await engine.get(pid)).children
    assert len(children) == 3
    for child in children:
        done = await settle(engine, child.id, "aborted")
        assert done.steps[-1].error == f"aborted by parent {pid}"
    assert (await engine.get(pid)).status == "aborted"


async def test_abort_is_allowed_while_awaiting_children(engine: Engine, gate: Gate) -> None:
    pid = await engine.start("fan_out", inputs(1, mode="hold"))
    await gate.reached(1)
    assert await engine.abort(pid) == "aborted"
    with pytest.raises(InvalidTransition):
        await engine.resume(pid, {})


async def test_children_may_start_children(engine: Engine) -> None:
    groups = [inputs(1, 2), inputs(10)]
    pid = await engine.start("fan_out_twice", {"groups": groups})
    parent = await settle(engine, pid, "completed")
    assert [r["state"]["total"] for r in parent.state["results"]] == [6, 20]


async def test_events_of_children_name_their_parent(engine: Engine) -> None:
    seen: list[Any] = []
    after = engine.last_event_id

    async def listen() -> None:
        async for event in engine.listen(after):
            seen.append(event)
            if event.kind == "process" and event.status == "completed" and event.parent_id is None:
                return  # the parent's last event

    listener = asyncio.create_task(listen())
    pid = await engine.start("fan_out", inputs(1))
    parent = await settle(engine, pid, "completed")
    await asyncio.wait_for(listener, 10)
    child = parent.children[0].id
    mine = [e for e in seen if e.process_id == child]
    assert mine and all(e.parent_id == pid for e in mine)
    assert all(e.parent_id is None for e in seen if e.process_id == pid)
    statuses = [e.status for e in seen if e.process_id == pid and e.kind == "process"]
    assert statuses == ["created", "running", "awaiting_children", "running", "completed"]


async def test_retention_keeps_the_finished_children_of_a_parent_still_waiting(
    engine: Engine, gate: Gate
) -> None:
    pid = await engine.start("fan_out", {"inputs": [{"n": 1}, {"n": 2, "mode": "hold"}]})
    await gate.reached(1)
    first = (await engine.get(pid)).children[0].id
    await settle(engine, first, "completed")
    everything = Retention(tasks_before=time.time() + 60, workflows_before=time.time() + 60)
    assert (await engine.gc(retention=everything)).processes == 0
    gate.open()
    parent = await settle(engine, pid, "completed")
    assert [r["id"] for r in parent.state["results"]][0] == first
    # Once the parent has finished, the family may go (a dry run counts it first).
    assert (await engine.gc(retention=everything, dry_run=True)).processes == 3
    assert (await engine.gc(retention=everything)).processes == 3
