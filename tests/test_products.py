"""Products: typed subscriptions, lifecycles and relations, through the embedded engine on
both backends (README "Products")."""

from __future__ import annotations

from typing import Any

import pytest
from steering import FailurePlan
from support.common import Open, engine_fixture, settle

from orchd.engine import Engine
from orchd.errors import (
    ConfigError,
    FormValidationError,
    SubscriptionLocked,
    SubscriptionNotFound,
)
from orchd.testing import workflow_engine

FLOWS = ["product_flows"]


engine = engine_fixture(*FLOWS)


async def run(engine: Engine, workflow: str, given: dict[str, Any]) -> Any:
    pid = await engine.start(workflow, given, reporter="test")
    return await engine.wait(pid)


async def make_node(engine: Engine, name: str = "r1", **extra: Any) -> str:
    given = {"customer_id": "acme", "name": name, "ims_id": 7, **extra}
    process = await run(engine, "create_node", given)
    assert process.status == "completed", process.error
    return str(process.state["subscription_id"])


async def make_port(engine: Engine, node: str, name: str = "xe-0/0/0") -> str:
    process = await run(
        engine, "create_port", {"customer_id": "acme", "name": name, "node_id": node}
    )
    assert process.status == "completed", process.error
    return str(process.state["subscription_id"])


async def test_a_typed_subscription_is_saved_with_its_product_fields(engine: Engine) -> None:
    sid = await make_node(engine)
    sub = await engine.get_subscription(sid)
    assert (sub.product, sub.status, sub.insync) == ("node", "active", True)
    assert sub.attributes == {"node": {"name": "r1", "ims_id": 7}}
    assert sub.version >= 1


async def test_a_field_required_at_the_status_fails_the_step_naming_it(engine: Engine) -> None:
    process = await run(engine, "create_node", {"customer_id": "acme", "name": "r1"})
    assert process.status == "failed"
    assert "node.ims_id" in (process.error or "")
    assert "'active'" in (process.error or "")


async def test_a_field_not_yet_required_may_stay_empty(engine: Engine) -> None:
    given = {"customer_id": "acme", "name": "r1", "status": "provisioning"}
    process = await run(engine, "create_node", given)
    assert process.status == "completed", process.error


async def test_a_step_takes_the_subscription_as_its_model(engine: Engine) -> None:
    sid = await make_node(engine)
    process = await run(engine, "modify_node", {"subscription_id": sid, "new_name": "r2"})
    assert process.status == "completed", process.error
    sub = await engine.get_subscription(sid)
    assert sub.attributes["node"]["name"] == "r2"


async def test_a_step_typed_for_another_product_fails_naming_both(engine: Engine) -> None:
    sid = await make_node(engine)
    process = await run(engine, "misread_node", {"subscription_id": sid})
    assert process.status == "failed"
    assert "'node'" in (process.error or "") and "'l2vpn'" in (process.error or "")


async def test_a_saved_change_makes_the_version_grow_by_one(engine: Engine) -> None:
    sid = await make_node(engine)
    before = (await engine.get_subscription(sid)).version
    await run(engine, "modify_node", {"subscription_id": sid, "new_name": "r2"})
    assert (await engine.get_subscription(sid)).version == before + 1


async def test_a_start_at_an_old_version_is_refused_as_stale(engine: Engine) -> None:
    sid = await make_node(engine)
    version = (await engine.get_subscription(sid)).version
    await run(engine, "modify_node", {"subscription_id": sid, "new_name": "r2"})
    with pytest.raises(SubscriptionLocked) as refused:
        await engine.start(
            "modify_node", {"subscription_id": sid, "new_name": "r3", "version": version}
        )
    assert refused.value.reason == "stale"
    current = (await engine.get_subscription(sid)).version
    process = await run(
        engine, "modify_node", {"subscription_id": sid, "new_name": "r3", "version": current}
    )
    assert process.status == "completed"


async def test_a_ref_records_both_ends_of_the_relation(engine: Engine) -> None:
    node = await make_node(engine)
    port = await make_port(engine, node)
    port_detail = await engine.get_subscription(port)
    assert [(r.id, r.product, r.path) for r in port_detail.depends_on] == [(node, "node", "node")]
    node_detail = await engine.get_subscription(node)
    assert [(r.id, r.product) for r in node_detail.in_use_by] == [(port, "port")]


async def test_a_ref_to_a_missing_subscription_fails_the_step_naming_the_field(
    engine: Engine,
) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    given = {"customer_id": "acme", "name": "p", "node_id": missing}
    process = await run(engine, "create_port", given)
    assert process.status == "failed"
    assert "subscription node" in (process.error or "") and "does not exist" in (
        process.error or ""
    )
    assert (await engine.list_subscriptions(product="port")).items == []


async def test_a_ref_to_a_subscription_of_another_product_fails_the_step(engine: Engine) -> None:
    node = await make_node(engine)
    port = await make_port(engine, node)
    process = await run(
        engine, "create_port", {"customer_id": "acme", "name": "p2", "node_id": port}
    )
    assert process.status == "failed"
    assert "'port' subscription, not 'node'" in (process.error or "")


async def test_a_ref_to_a_terminated_subscription_fails_the_step(engine: Engine) -> None:
    node = await make_node(engine)
    assert (await run(engine, "terminate_node", {"subscription_id": node})).status == "completed"
    process = await run(
        engine, "create_port", {"customer_id": "acme", "name": "p", "node_id": node}
    )
    assert process.status == "failed"
    assert "terminated" in (process.error or "")


async def test_terminating_a_subscription_in_use_is_refused_naming_its_users(
    engine: Engine,
) -> None:
    node = await make_node(engine)
    port = await make_port(engine, node)
    with pytest.raises(SubscriptionLocked) as refused:
        await engine.start("terminate_node", {"subscription_id": node})
    assert refused.value.reason == "in_use"
    assert port in refused.value.detail and refused.value.problem()["in_use_by"] == [port]
    assert (await engine.get_subscription(node)).insync is True  # nothing changed


async def test_once_its_users_are_terminated_a_subscription_may_be_terminated(
    engine: Engine,
) -> None:
    node = await make_node(engine)
    port = await make_port(engine, node)
    assert (await run(engine, "terminate_port", {"subscription_id": port})).status == "completed"
    assert (await run(engine, "terminate_node", {"subscription_id": node})).status == "completed"
    sub = await engine.get_subscription(node)
    assert sub.status == "terminated" and sub.end_date is not None


async def test_a_start_on_a_locked_subscription_is_refused_naming_the_holder(
    engine: Engine, failures: FailurePlan
) -> None:
    node = await make_node(engine)
    failures["compare_node"] = 1
    holder = await run(engine, "validate_node", {"subscription_id": node})
    assert holder.status == "failed"
    with pytest.raises(SubscriptionLocked) as refused:
        await engine.start("modify_node", {"subscription_id": node, "new_name": "x"})
    assert refused.value.reason == "locked"
    assert refused.value.problem()["process_id"] == holder.id


async def test_a_failed_validation_leaves_the_subscription_not_insync_until_retried(
    engine: Engine, failures: FailurePlan
) -> None:
    node = await make_node(engine)
    failures["compare_node"] = 1
    process = await run(engine, "validate_node", {"subscription_id": node})
    assert (await engine.get_subscription(node)).insync is False
    await engine.retry(process.id)
    assert (await engine.wait(process.id)).status == "completed"
    assert (await engine.get_subscription(node)).insync is True


async def test_a_workflow_outside_its_usable_statuses_is_refused_with_status(
    engine: Engine,
) -> None:
    node = await make_node(engine)
    with pytest.raises(SubscriptionLocked) as refused:
        await engine.start("enable_node", {"subscription_id": node})
    assert refused.value.reason == "status"
    assert "disabled" in refused.value.detail


async def test_a_subscription_of_another_product_is_refused_naming_subscription_id(
    engine: Engine,
) -> None:
    node = await make_node(engine)
    port = await make_port(engine, node)
    with pytest.raises(FormValidationError) as refused:
        await engine.start("modify_node", {"subscription_id": port, "new_name": "x"})
    assert refused.value.errors[0]["loc"] == ["subscription_id"]


async def test_a_start_on_a_missing_subscription_is_not_found(engine: Engine) -> None:
    with pytest.raises(SubscriptionNotFound):
        await engine.start(
            "modify_node", {"subscription_id": "00000000-0000-4000-8000-000000000001"}
        )


async def test_the_subscription_lists_its_workflows_with_why_not(engine: Engine) -> None:
    node = await make_node(engine)
    await make_port(engine, node)
    usable = {w.name: (w.usable, w.reason) for w in (await engine.get_subscription(node)).workflows}
    assert usable["modify_node"] == (True, None)
    assert usable["terminate_node"] == (False, "in_use")
    assert usable["enable_node"] == (False, "status")
    assert "create_node" not in usable


async def test_a_note_is_kept_apart_from_the_content_with_who_set_it(engine: Engine) -> None:
    node = await make_node(engine)
    version = (await engine.get_subscription(node)).version
    await engine.set_note(node, "maintenance window on Tuesday", by="uid:1000 (alice)")
    await run(engine, "modify_node", {"subscription_id": node, "new_name": "r9"})
    sub = await engine.get_subscription(node)
    assert sub.note == "maintenance window on Tuesday"
    assert sub.version == version + 1  # the modify counted, the note did not
    assert [(a.action, a.actor) for a in sub.actions] == [("note", "uid:1000 (alice)")]


async def test_a_note_on_a_missing_subscription_is_not_found(engine: Engine) -> None:
    with pytest.raises(SubscriptionNotFound):
        await engine.set_note("00000000-0000-4000-8000-000000000002", "x", by="me")


async def test_search_finds_text_in_the_description_and_any_text_value(engine: Engine) -> None:
    await make_node(engine, "core-AMS-1")
    await make_node(engine, "edge-LON-2")
    found = await engine.list_subscriptions(q="ams")
    assert [s.attributes["node"]["name"] for s in found.items] == ["core-AMS-1"]
    assert (await engine.list_subscriptions(q="node edge")).items  # the description
    assert (await engine.list_subscriptions(q="%")).items == []  # wildcards are literal


async def test_the_products_are_listed_with_their_schema_and_workflows(engine: Engine) -> None:
    products = {p.name: p for p in engine.products()}
    assert set(products) >= {"node", "port", "l2vpn"}
    assert "create_node" in products["node"].workflows
    assert products["port"].schema["x-orchd-refs"] == {"node": "node"}
    assert products["node"].schema["x-orchd-required"] == {
        "node.name": "provisioning",
        "node.ims_id": "active",
    }
    assert products["l2vpn"].schema["x-orchd-required"] == {"saps[].vlan": "provisioning"}


async def test_a_modify_of_an_l2vpn_keeps_its_relations(engine: Engine) -> None:
    node = await make_node(engine)
    ports = [await make_port(engine, node, f"xe-0/0/{i}") for i in range(3)]
    created = await run(engine, "create_l2vpn", {"customer_id": "acme", "ports": ports})
    assert created.status == "completed", created.error
    sid = created.state["subscription_id"]
    process = await run(engine, "modify_l2vpn", {"subscription_id": sid, "speed": 10000})
    assert process.status == "completed", process.error
    detail = await engine.get_subscription(sid)
    assert detail.attributes["speed"] == 10000
    assert sorted(r.id for r in detail.depends_on) == sorted(ports)
    assert [r.path for r in detail.depends_on] == ["saps[0].port", "saps[1].port", "saps[2].port"]


def test_a_workflow_naming_an_unknown_product_is_refused_at_load_naming_its_file() -> None:
    with pytest.raises(ConfigError) as refused:
        Engine(database=":memory:", workflows=["product_unknown_flows"])
    assert "product_unknown_flows.py, line" in str(refused.value)
    assert "'router'" in str(refused.value)


def test_a_ref_to_a_class_that_is_not_a_product_is_refused_at_load_naming_its_file() -> None:
    with pytest.raises(ConfigError) as refused:
        Engine(database=":memory:", workflows=["product_dangling_flows"])
    assert "not a registered product" in str(refused.value)
    assert "product_dangling_flows.py, line" in str(refused.value)


async def test_validate_subscriptions_validates_each_active_insync_subscription_as_a_child(
    engine: Engine, failures: FailurePlan
) -> None:
    nodes = [await make_node(engine, f"r{i}") for i in range(3)]
    provisioning = await run(
        engine, "create_node", {"customer_id": "acme", "name": "p", "status": "provisioning"}
    )
    pid = await engine.start("validate_subscriptions", {"product": "node"}, reporter="test")
    task = await settle(engine, pid, "completed", "failed")
    assert task.status == "completed", task.error
    children = (await engine.list_processes(parent=task.id)).items
    assert sorted(c.workflow for c in children) == ["validate_node"] * 3
    validated = {(await engine.get(c.id)).state["subscription_id"] for c in children}
    assert validated == set(nodes)  # not the one still provisioning
    assert provisioning.state["subscription_id"] not in validated


async def test_validate_subscriptions_without_a_product_is_refused(engine: Engine) -> None:
    with pytest.raises(FormValidationError):
        await engine.start("validate_subscriptions", {})


async def test_validate_subscriptions_of_a_product_without_validation_fails_saying_so(
    engine: Engine,
) -> None:
    task = await run(engine, "validate_subscriptions", {"product": "port"})
    assert task.status == "failed"
    assert "no VALIDATE workflow" in (task.error or "")


async def test_a_typed_step_refuses_a_subscription_missing_what_its_status_requires(
    open_engine: Open,
) -> None:
    # Saved before its product had a class (untyped); the class that came later requires a
    # field it lacks at its status: a step taking it typed fails, naming the field.
    engine = await open_engine("legacy_v1")
    created = await engine.wait(await engine.start("create_legacy", {}, reporter="test"))
    sid = created.state["subscription_id"]
    engine = await open_engine("legacy_v2")
    process = await engine.wait(await engine.start("touch_legacy", {"subscription_id": sid}))
    assert process.status == "failed"
    assert "site" in (process.error or "") and "'active'" in (process.error or "")


async def test_two_modules_may_register_one_product_name_for_two_engines() -> None:
    import product_flows

    from orchd.examples import products as example_products

    async with workflow_engine(["product_flows"]) as tests_engine:
        assert tests_engine.catalog.products["node"] is product_flows.Node
    async with workflow_engine(["orchd.examples"]) as example_engine:
        assert example_engine.catalog.products["node"] is example_products.Node
    with pytest.raises(ConfigError, match="registered by more than one class"):
        Engine(database=":memory:", workflows=["legacy_v2", "legacy_v3"])
