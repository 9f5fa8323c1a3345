"""The authoring kit, orchd.testing, against a real Engine and a real fake OSS."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import kit_flows
import pytest
from engine_flows import needs_key, returns_list, wrong_type

import orchd.testing
from orchd.errors import WorkflowNotFound
from orchd.http import HttpClient
from orchd.state import StepInputError, StepOutputError
from orchd.testing import FakeOss, Gate, assert_steps, run_step, run_to, workflow_engine

pytestmark = pytest.mark.anyio


@pytest.fixture
async def oss() -> AsyncIterator[FakeOss]:
    async with FakeOss(provision_time=0.05) as server:
        yield server


# -- the package --------------------------------------------------------------------------


def test_importing_the_kit_loads_neither_the_engine_nor_aiohttp() -> None:
    code = (
        "import sys, orchd.testing; "
        "print(sorted(m for m in ('orchd.engine', 'aiohttp', 'orchd.store') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_exported_name_resolves() -> None:
    for name in orchd.testing.__all__:
        assert getattr(orchd.testing, name) is not None
    assert orchd.testing.FakeOss is FakeOss


# -- run_step -----------------------------------------------------------------------------


async def test_run_step_converts_arguments_to_annotations_and_the_result_to_json() -> None:
    delta = await run_step(
        kit_flows.plan,
        {"node_id": "12345678-1234-5678-1234-567812345678", "due": "2026-11-28T10:00:00"},
    )
    assert delta == {
        "planned": {
            "node": "12345678-1234-5678-1234-567812345678",
            "weekday": "Saturday",
            "at": "2026-11-28T10:00:00",
        }
    }


async def test_run_step_runs_a_sync_step_in_a_worker_thread() -> None:
    assert (await run_step(kit_flows.where_am_i, {}))["thread"] != "MainThread"


async def test_run_step_awaits_an_async_step_on_the_loop() -> None:
    assert (await run_step(kit_flows.where_am_i_async, {}))["thread"] == "MainThread"


async def test_run_step_hands_resources_to_steps_by_annotation(oss: FakeOss) -> None:
    async with HttpClient() as http:
        delta = await run_step(
            kit_flows.order_node, {"name": "n1", "oss_url": oss.url}, resources={HttpClient: http}
        )
    assert delta["node_status"] == "provisioning"
    assert oss.nodes[delta["node_id"]]["name"] == "n1"


@pytest.mark.parametrize(
    ("step", "workflow", "given", "error"),
    [
        (needs_key, "missing_key", {}, StepInputError),
        (wrong_type, "bad_type", {"count": "many"}, StepInputError),
        (returns_list, "bad_return", {}, StepOutputError),
        (kit_flows.opaque, "kit_opaque", {}, StepOutputError),
    ],
    ids=["missing key", "wrong type", "not a dict", "not JSON"],
)
async def test_run_step_raises_the_error_the_engine_records(
    step: object, workflow: str, given: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error) as raised:
        await run_step(step, given)  # type: ignore[arg-type]
    async with workflow_engine(["engine_flows", "kit_flows"]) as engine:
        process = await run_to(engine, workflow, given, status="failed")
    assert str(raised.value) == process.error


async def test_run_step_refuses_a_step_it_cannot_run_alone() -> None:
    with pytest.raises(TypeError, match="input step"):
        await run_step(kit_flows.confirm, {})


# -- workflow_engine, run_to, assert_steps ------------------------------------------------


async def test_workflow_engine_runs_a_workflow_against_the_fake_oss(oss: FakeOss) -> None:
    async with workflow_engine(["kit_flows"]) as engine:
        process = await run_to(engine, "kit_order", {"name": "n1", "oss_url": oss.url})
    assert_steps(
        process,
        [
            ("init", "success"),
            ("order node", "success"),
            ("read node", "success"),
            ("done", "success"),
        ],
    )
    assert oss.nodes[process.state["node_id"]]["customer_id"] == "kit"


async def test_workflow_engine_applies_engine_settings() -> None:
    async with workflow_engine(["kit_flows"], retry_delay=0.5) as engine:
        assert engine.settings.retry_delay == 0.5


async def test_workflow_engine_on_a_given_database_lets_a_second_engine_continue(
    tmp_path: Path,
) -> None:
    db = tmp_path / "kept.db"
    async with workflow_engine(["engine_flows"], database=db) as engine:
        pid = (await run_to(engine, "needs_approval", {"name": "n1"}, status="suspended")).id
    async with workflow_engine(["engine_flows"], database=db) as engine:
        await engine.resume(pid, {"approved": True})
        assert (await engine.wait(pid)).status == "completed"


async def test_run_to_returns_the_process_when_it_ends_as_expected() -> None:
    async with workflow_engine(["kit_flows"]) as engine:
        process = await run_to(engine, "kit_count", {"amount": 21})
    assert process.status == "completed" and process.state["doubled"] == 42


async def test_run_to_names_the_error_and_the_step_log_when_the_status_differs() -> None:
    async with workflow_engine(["kit_flows"]) as engine:
        with pytest.raises(AssertionError) as failed:
            await run_to(engine, "kit_count", {"amount": "many"})
    message = str(failed.value)
    assert "ended failed, expected completed" in message
    assert "state key 'amount' is not a valid int" in message
    assert "init" in message and "count" in message
    assert "traceback of the last step" in message


async def test_run_to_says_the_process_still_runs_after_its_timeout() -> None:
    async with workflow_engine(["kit_flows"], resources={Gate: Gate()}) as engine:
        with pytest.raises(AssertionError, match=r"still running after 0.2 s"):
            await run_to(engine, "kit_gated", timeout=0.2)


async def test_run_to_lets_engine_errors_through() -> None:
    async with workflow_engine(["kit_flows"]) as engine:
        with pytest.raises(WorkflowNotFound):
            await run_to(engine, "no_such_workflow")


async def test_assert_steps_shows_a_diff_when_the_log_differs() -> None:
    async with workflow_engine(["kit_flows"]) as engine:
        process = await run_to(engine, "kit_count", {"amount": 1})
    with pytest.raises(AssertionError) as failed:
        assert_steps(process, [("init", "success"), ("count", "failed"), ("done", "success")])
    assert "-count: failed" in str(failed.value) and "+count: success" in str(failed.value)


# -- Gate ---------------------------------------------------------------------------------


async def test_a_gate_holds_a_step_until_the_test_opens_it() -> None:
    gate = Gate()
    async with workflow_engine(["kit_flows"], resources={Gate: gate}) as engine:
        pid = await engine.start("kit_gated")
        await gate.reached()
        held = await engine.get(pid)
        assert held.status == "running" and gate.waiting == 1
        gate.open()
        process = await engine.wait(pid)
    assert_steps(
        process,
        [("init", "success"), ("hold", "success"), ("after hold", "success"), ("done", "success")],
    )


async def test_a_held_step_lets_the_test_abort_between_steps() -> None:
    gate = Gate()
    async with workflow_engine(["kit_flows"], resources={Gate: gate}) as engine:
        pid = await engine.start("kit_gated")
        await gate.reached()
        await engine.abort(pid)
        gate.open()
        process = await engine.wait(pid)
    assert process.status == "aborted" and "after" not in process.state


async def test_an_open_gate_lets_steps_through_and_counts_them() -> None:
    gate = Gate(open=True)
    async with workflow_engine(["kit_flows"], resources={Gate: gate}) as engine:
        await run_to(engine, "kit_gated")
        await run_to(engine, "kit_gated")
    assert gate.arrivals == 2 and gate.waiting == 0


async def test_leaving_the_engine_opens_its_gates_so_held_steps_finish(tmp_path: Path) -> None:
    gate = Gate()
    db = tmp_path / "orchd.db"
    started = time.monotonic()
    async with workflow_engine(
        ["kit_flows"], resources={Gate: gate}, database=db, grace_period=5.0
    ) as engine:
        pid = await engine.start("kit_gated")
        await gate.reached()
    assert time.monotonic() - started < 2.0
    async with workflow_engine(["kit_flows"], database=db) as engine:
        assert (await engine.wait(pid)).status == "completed"


async def test_reached_times_out_when_no_step_gets_there() -> None:
    with pytest.raises(TimeoutError):
        await Gate().reached(timeout=0.05)


async def test_the_kit_saves_a_typed_subscription_for_a_test_with_its_relations() -> None:
    from product_flows import Node, NodeBlock, Port

    from orchd.testing import subscription

    async with workflow_engine(["product_flows"]) as engine:
        node = await subscription(
            engine,
            Node(customer_id="acme", status="active", node=NodeBlock(name="r1", ims_id=1)),
        )
        port = await subscription(
            engine, Port(customer_id="acme", status="active", name="p1", node=node.id)
        )
        assert (node.product, node.insync, node.status) == ("node", True, "active")
        assert [d.id for d in port.depends_on] == [node.id]
        with pytest.raises(AssertionError, match="node.ims_id"):
            await subscription(engine, Node(customer_id="acme", status="active", node=NodeBlock()))
