"""Abort in every status; subscriptions through create, modify and terminate (README
"Guarantees")."""

from __future__ import annotations

import asyncio

import pytest
from steering import Calls, FailurePlan
from support.common import engine_fixture

from orchd import Engine
from orchd.errors import (
    CallbackNotFound,
    FormValidationError,
    InvalidTransition,
    SubscriptionLocked,
    SubscriptionNotFound,
)
from orchd.testing import Gate

pytestmark = pytest.mark.anyio


engine = engine_fixture("engine_flows", retry_delay=60.0, grace_period=0.2)


async def created_subscription(engine: Engine) -> str:
    p = await engine.wait(await engine.start("create_node", {"name": "n1"}))
    assert p.status == "completed"
    return str(p.subscription_id)


# -- abort ------------------------------------------------------------------------------


async def test_abort_of_a_suspended_process(engine: Engine) -> None:
    pid = await engine.start("needs_approval", {"name": "n1"})
    await engine.wait(pid)
    await engine.abort(pid)
    p = await engine.get(pid)
    assert p.status == "aborted"
    assert p.steps[-1].name == "abort" and p.steps[-1].status == "aborted"


async def test_abort_of_a_failed_process(
    engine: Engine, failures: FailurePlan, calls: Calls
) -> None:
    failures["flaky"] = 1
    pid = await engine.start("flaky_task")
    await engine.wait(pid)
    await engine.abort(pid)
    assert (await engine.get(pid)).status == "aborted"
    assert calls["flaky"] == 1


async def test_abort_of_a_waiting_process_cancels_its_retry(
    engine: Engine, failures: FailurePlan
) -> None:
    failures["call oss"] = 1
    pid = await engine.start("retrying")
    assert (await engine.wait(pid)).status == "waiting"
    await engine.abort(pid)
    assert (await engine.get(pid)).status == "aborted"
    with pytest.raises(InvalidTransition):
        await engine.retry(pid)


async def test_abort_of_a_process_awaiting_callback(engine: Engine) -> None:
    pid = await engine.start("with_callback")
    token = (await engine.wait(pid)).state["asked_with"]
    await engine.abort(pid)
    assert (await engine.get(pid)).status == "aborted"
    with pytest.raises(CallbackNotFound):
        await engine.callback(token, {"ok": True})


async def test_abort_of_a_running_process_takes_effect_between_steps(
    engine: Engine, gate: Gate
) -> None:
    pid = await engine.start("slow_task")
    await gate.reached()
    await engine.abort(pid)  # requested: the slow step is still running
    gate.open()
    p = await engine.wait(pid)
    assert p.status == "aborted"
    assert [(s.name, s.status) for s in p.steps][-2:] == [("slow", "success"), ("abort", "aborted")]
    assert "always" not in p.state


async def test_abort_of_a_just_created_process(engine: Engine) -> None:
    pid = await engine.start("conditional_task")
    await engine.abort(pid)
    p = await engine.wait(pid)
    assert p.status == "aborted"
    assert p.steps[-1].name == "abort"


@pytest.mark.parametrize("workflow", ["create_node", "self_abort"])
async def test_abort_of_a_finished_process_is_refused(engine: Engine, workflow: str) -> None:
    pid = await engine.start(workflow, {"name": "n1"} if workflow == "create_node" else {})
    before = await engine.wait(pid)
    with pytest.raises(InvalidTransition):
        await engine.abort(pid)
    after = await engine.get(pid)
    assert after.status == before.status and len(after.steps) == len(before.steps)


async def test_retry_of_a_completed_process_is_refused(engine: Engine) -> None:
    pid = await engine.start("conditional_task")
    await engine.wait(pid)
    with pytest.raises(InvalidTransition):
        await engine.retry(pid)


# -- subscriptions ----------------------------------------------------------------------


async def test_create_workflow_creates_the_subscription_and_done_marks_it_insync(
    engine: Engine,
) -> None:
    sid = await created_subscription(engine)
    sub = await engine.get_subscription(sid)
    assert sub.product == "node" and sub.customer_id == "c1"
    assert sub.status == "active" and sub.insync is True
    assert sub.attributes == {"name": "n1"}
    assert [p.workflow for p in sub.processes] == ["create_node"]


async def test_subscription_is_saved_with_each_step(engine: Engine, failures: FailurePlan) -> None:
    failures["activate"] = 1
    pid = await engine.start("create_node", {"name": "n1"})
    p = await engine.wait(pid)
    assert p.status == "failed"
    sub = await engine.get_subscription(p.subscription_id)  # type: ignore[arg-type]
    assert sub.status == "initial" and sub.insync is False


async def test_modify_locks_the_subscription_until_done(engine: Engine) -> None:
    sid = await created_subscription(engine)
    pid = await engine.start("modify_node_paused", {"subscription_id": sid})
    p = await engine.wait(pid)
    assert p.status == "suspended"
    assert p.state["subscription"]["id"] == sid
    assert (await engine.get_subscription(sid)).insync is False
    with pytest.raises(SubscriptionLocked):
        await engine.start("modify_node", {"subscription_id": sid})
    await engine.resume(pid, {"approved": True})
    await engine.wait(pid)
    sub = await engine.get_subscription(sid)
    assert sub.insync is True and sub.description == "changed"
    assert [p.workflow for p in sub.processes] == ["create_node", "modify_node_paused"]


async def test_a_refused_start_names_the_process_that_holds_the_subscription(
    engine: Engine,
) -> None:
    sid = await created_subscription(engine)
    holder = await engine.start("modify_node_paused", {"subscription_id": sid})
    await engine.wait(holder)
    with pytest.raises(SubscriptionLocked, match=f"process {holder} holds it"):
        await engine.start("modify_node", {"subscription_id": sid})


async def test_of_two_concurrent_modify_starts_one_is_refused(engine: Engine) -> None:
    sid = await created_subscription(engine)
    results = await asyncio.gather(
        engine.start("modify_node_paused", {"subscription_id": sid}),
        engine.start("modify_node_paused", {"subscription_id": sid}),
        return_exceptions=True,
    )
    assert sum(isinstance(r, SubscriptionLocked) for r in results) == 1
    assert sum(isinstance(r, str) for r in results) == 1


async def test_aborting_a_modify_releases_the_lock_and_keeps_its_state(engine: Engine) -> None:
    sid = await created_subscription(engine)
    pid = await engine.start("modify_node_paused", {"subscription_id": sid})
    before = await engine.wait(pid)
    await engine.abort(pid)
    after = await engine.get(pid)
    assert after.state == before.state
    assert (await engine.get_subscription(sid)).insync is True
    assert await engine.start("modify_node", {"subscription_id": sid})


async def test_terminate_sets_terminated_and_end_date(engine: Engine) -> None:
    sid = await created_subscription(engine)
    p = await engine.wait(await engine.start("terminate_node", {"subscription_id": sid}))
    assert p.status == "completed"
    sub = await engine.get_subscription(sid)
    assert sub.status == "terminated" and sub.end_date is not None and sub.insync is True


async def test_a_terminated_subscription_cannot_be_modified(engine: Engine) -> None:
    sid = await created_subscription(engine)
    await engine.wait(await engine.start("terminate_node", {"subscription_id": sid}))
    with pytest.raises(SubscriptionLocked):
        await engine.start("modify_node", {"subscription_id": sid})


async def test_modify_of_an_unknown_subscription_is_not_found(engine: Engine) -> None:
    with pytest.raises(SubscriptionNotFound):
        await engine.start(
            "modify_node", {"subscription_id": "00000000-0000-0000-0000-000000000001"}
        )
    assert (await engine.list_processes()).items == []


async def test_modify_without_a_subscription_id_is_a_validation_error(engine: Engine) -> None:
    with pytest.raises(FormValidationError) as err:
        await engine.start("modify_node", {})
    assert err.value.errors[0]["loc"] == ["subscription_id"]


async def test_subscription_list_filters_by_status_and_customer(engine: Engine) -> None:
    sid = await created_subscription(engine)
    await created_subscription(engine)
    await engine.wait(await engine.start("terminate_node", {"subscription_id": sid}))
    assert [s.id for s in (await engine.list_subscriptions(status="terminated")).items] == [sid]
    assert len((await engine.list_subscriptions(customer_id="c1")).items) == 2
    assert (await engine.list_subscriptions(product="other")).items == []


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("unknown_field", "unknown field(s) colour"),
        ("no_product", "needs 'product'"),
        ("bad_status", "status 'sleeping' is not one of"),
        ("list_id", "id ['x'] is not a UUID"),
        ("text_id", "id 'node-1' is not a UUID"),
        ("object_date", "start_date must be text"),
    ],
)
async def test_an_invalid_subscription_fails_the_step_and_saves_nothing(
    engine: Engine, kind: str, message: str
) -> None:
    p = await engine.wait(await engine.start("invalid_subscription", {"kind": kind}), timeout=10)
    assert p.status == "failed" and message in p.error
    assert p.subscription_id is None
    assert (await engine.list_subscriptions()).items == []
