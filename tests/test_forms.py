"""Forms of several pages, through the embedded engine on both backends: pages replayed from
the answers so far, choices read from live subscriptions, errors located by page and field."""

from __future__ import annotations

from typing import Any

import pytest
from steering import FailurePlan
from support.common import engine_fixture, settle

from orchd.engine import Engine
from orchd.errors import FormValidationError
from orchd.testing import walk_form

FLOWS = ["product_flows"]


engine = engine_fixture(*FLOWS)


async def completed(engine: Engine, workflow: str, given: Any) -> Any:
    process = await engine.wait(await engine.start(workflow, given, reporter="test"))
    assert process.status == "completed", process.error
    return process


async def ports(engine: Engine, count: int) -> list[str]:
    node = await completed(
        engine, "create_node", {"customer_id": "acme", "name": "r1", "ims_id": 1}
    )
    made = []
    for n in range(count):
        given = {
            "customer_id": "acme",
            "name": f"xe-0/0/{n}",
            "node_id": node.state["subscription_id"],
        }
        made.append((await completed(engine, "create_port", given)).state["subscription_id"])
    return made


def offered(form: dict[str, Any], field: str) -> dict[str, str]:
    items = form["properties"][field]["items"]
    return {c["const"]: c["title"] for c in items.get("oneOf", [])}


async def errors_of(engine: Engine, answers: list[Any]) -> list[dict[str, Any]]:
    with pytest.raises(FormValidationError) as refused:
        await engine.form_page("create_l2vpn_paged", answers)
    return refused.value.errors


async def test_an_empty_list_asks_page_zero(engine: Engine) -> None:
    page = await engine.form_page("create_l2vpn_paged", [])
    assert (page.page, page.done) == (0, False)
    assert page.form is not None and set(page.form["properties"]) == {"sap_count", "speed"}


async def test_a_later_page_depends_on_the_answers_before_it(engine: Engine) -> None:
    made = await ports(engine, 3)
    page = await engine.form_page("create_l2vpn_paged", [{"sap_count": 2}])
    assert page.page == 1 and page.form is not None
    choices = offered(page.form, "ports")
    assert set(choices) == set(made)
    assert choices[made[0]] == "port xe-0/0/0"  # the subscription's description
    assert page.form["properties"]["ports"]["minItems"] == 2


async def test_every_page_answered_is_done(engine: Engine) -> None:
    made = await ports(engine, 2)
    answers = [{"sap_count": 2}, {"ports": made}, {"vlan": 7}]
    page = await engine.form_page("create_l2vpn_paged", answers)
    assert page.done and page.page is None


async def test_a_field_error_is_located_by_page_and_field(engine: Engine) -> None:
    made = await ports(engine, 2)
    errors = await errors_of(engine, [{"sap_count": 2}, {"ports": made}, {"vlan": 9999}])
    assert errors[0]["loc"] == ["pages", 2, "vlan"]


async def test_a_value_outside_the_choices_is_refused_naming_it(engine: Engine) -> None:
    made = await ports(engine, 2)
    stranger = "00000000-0000-4000-8000-000000000042"
    errors = await errors_of(engine, [{"sap_count": 2}, {"ports": [made[0], stranger]}])
    assert errors[0]["loc"] == ["pages", 1, "ports", 1]
    assert stranger in errors[0]["msg"]


async def test_a_changed_earlier_page_revalidates_the_later_ones(engine: Engine) -> None:
    made = await ports(engine, 3)
    fine = [{"sap_count": 2}, {"ports": made[:2]}]
    assert (await engine.form_page("create_l2vpn_paged", fine)).page == 2
    errors = await errors_of(engine, [{"sap_count": 3}, {"ports": made[:2]}])
    assert errors[0]["loc"][:3] == ["pages", 1, "ports"]


async def test_a_start_takes_the_list_of_page_answers(engine: Engine) -> None:
    made = await ports(engine, 2)
    process = await completed(
        engine, "create_l2vpn_paged", [{"sap_count": 2, "speed": 10}, {"ports": made}, {"vlan": 30}]
    )
    sub = await engine.get_subscription(process.state["subscription_id"])
    assert [s["port"] for s in sub.attributes["saps"]] == made
    assert {s["vlan"] for s in sub.attributes["saps"]} == {30}
    assert sub.attributes["speed"] == 10


async def test_an_incomplete_list_is_refused_naming_the_next_page(engine: Engine) -> None:
    made = await ports(engine, 2)
    with pytest.raises(FormValidationError) as refused:
        await engine.start("create_l2vpn_paged", [{"sap_count": 2}, {"ports": made}])
    assert refused.value.errors == [{"loc": ["pages", 2], "msg": "page not answered"}]
    assert (await engine.list_processes(workflow="create_l2vpn_paged")).items == []


async def test_a_port_taken_meanwhile_is_refused_at_the_start_naming_it(engine: Engine) -> None:
    made = await ports(engine, 3)
    page = await engine.form_page("create_l2vpn_paged", [{"sap_count": 2}])
    assert page.form is not None and made[0] in offered(page.form, "ports")
    await completed(engine, "create_l2vpn", {"customer_id": "acme", "ports": made[:2]})
    with pytest.raises(FormValidationError) as refused:
        await engine.start(
            "create_l2vpn_paged", [{"sap_count": 2}, {"ports": [made[0], made[2]]}, {"vlan": 5}]
        )
    assert refused.value.errors[0]["loc"] == ["pages", 1, "ports", 0]
    assert made[0] in refused.value.errors[0]["msg"]
    now = await engine.form_page("create_l2vpn_paged", [{"sap_count": 2}])
    assert now.form is not None and set(offered(now.form, "ports")) == {made[2]}


async def test_a_one_page_form_takes_its_object_or_a_list_of_one(engine: Engine) -> None:
    as_object = {"customer_id": "acme", "name": "a", "ims_id": 1}
    await completed(engine, "create_node", as_object)
    await completed(engine, "create_node", [{**as_object, "name": "b"}])
    with pytest.raises(FormValidationError) as refused:
        await engine.start("create_node", [{"customer_id": "acme", "name": 3}])
    assert refused.value.errors[0]["loc"] == ["pages", 0, "name"]
    with pytest.raises(FormValidationError) as refused:
        await engine.start("create_node", {"customer_id": "acme", "name": 3})
    assert refused.value.errors[0]["loc"] == ["name"]  # an object's errors, as before pages


async def test_a_suspended_process_is_answered_page_by_page(engine: Engine) -> None:
    made = await ports(engine, 2)
    vpn = await completed(engine, "create_l2vpn", {"customer_id": "acme", "ports": made})
    sid = vpn.state["subscription_id"]
    pid = await engine.start("respeed_l2vpn", {"subscription_id": sid})
    process = await settle(engine, pid, "suspended")
    assert process.form is not None and set(process.form["properties"]) == {"speed"}
    page = await engine.process_form_page(pid, [{"speed": 40}])
    assert page.page == 1 and page.form is not None
    assert page.form["properties"]["note"]["default"] == "from 1000 to 40"
    with pytest.raises(FormValidationError) as refused:
        await engine.resume(pid, [{"speed": 40}])
    assert refused.value.errors == [{"loc": ["pages", 1], "msg": "page not answered"}]
    await engine.resume(pid, [{"speed": 40}, {"confirm": True}])
    done = await engine.wait(pid)
    assert done.status == "completed", done.error
    assert (await engine.get_subscription(sid)).attributes["speed"] == 40


async def test_a_workflow_of_pages_is_not_started_by_a_children_step_by_mistake(
    engine: Engine,
) -> None:
    with pytest.raises(FormValidationError):
        engine._runtime.prepare_start("create_l2vpn_paged", {"customer_id": "acme"}, "test")


async def test_the_testing_kit_walks_a_form_page_by_page(engine: Engine) -> None:
    made = await ports(engine, 2)
    shown = await walk_form(
        engine, "create_l2vpn_paged", [{"sap_count": 2}, {"ports": made}, {"vlan": 3}]
    )
    assert [p.page for p in shown] == [0, 1, 2, None]
    assert shown[-1].done
    assert shown[1].form is not None and set(offered(shown[1].form, "ports")) == set(made)


async def test_a_retried_paged_start_with_its_key_answers_the_first_process(
    engine: Engine,
) -> None:
    made = await ports(engine, 2)
    answers = [{"sap_count": 2}, {"ports": made}, {"vlan": 6}]
    first = await engine.start("create_l2vpn_paged", answers, idempotency_key="vpn-1")
    await engine.wait(first)
    # Its ports are in use now, by that very process: the retry is answered, not refused.
    again = await engine.start("create_l2vpn_paged", answers, idempotency_key="vpn-1")
    assert again == first
    with pytest.raises(FormValidationError):  # without the key, the ports are taken
        await engine.start("create_l2vpn_paged", answers)


async def test_an_inputstep_whose_code_fails_is_a_422_on_its_form_route(
    engine: Engine, failures: FailurePlan
) -> None:
    pid = await engine.start("flaky_form", {}, reporter="test")
    await settle(engine, pid, "suspended")
    failures["pick_form"] = 1
    with pytest.raises(FormValidationError) as refused:
        await engine.process_form_page(pid, [])
    assert refused.value.errors[0]["loc"] == ["pages", 0]
    assert "failed on purpose" in refused.value.errors[0]["msg"]
    assert (await engine.process_form_page(pid, [])).page == 0  # the code works again
