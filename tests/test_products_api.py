"""Products through a real daemon: the API's refusals with their reason, the subscription's
relations, workflows, note and search, the products document, and a SIGKILL mid-workflow."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.daemons import DaemonFactory, DaemonProcess

FLOWS = {"workflows": ["product_flows"]}


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    return daemon_factory(FLOWS)


def created(daemon: DaemonProcess, workflow: str, body: dict[str, Any]) -> str:
    pid = daemon.start_process(workflow, body)
    process = daemon.wait_process(pid, ("completed", "failed"))
    assert process["status"] == "completed", process["error"]
    return str(process["state"]["subscription_id"])


def node_and_port(daemon: DaemonProcess) -> tuple[str, str]:
    node = created(daemon, "create_node", {"customer_id": "acme", "name": "r1", "ims_id": 3})
    port = created(daemon, "create_port", {"customer_id": "acme", "name": "p1", "node_id": node})
    return node, port


def test_terminating_a_subscription_in_use_is_a_409_with_reason_in_use(
    daemon: DaemonProcess,
) -> None:
    node, port = node_and_port(daemon)
    status, problem = daemon.request(
        "POST", "/api/processes/terminate_node", {"subscription_id": node}
    )
    assert status == 409
    assert problem["reason"] == "in_use" and problem["in_use_by"] == [port]
    status, page = daemon.request("GET", "/api/processes?workflow=terminate_node")
    assert page["items"] == []  # refused before any process exists


def test_a_start_on_a_held_subscription_is_a_409_naming_the_holder(
    daemon: DaemonProcess,
) -> None:
    node, port = node_and_port(daemon)
    holder = daemon.start_process("create_l2vpn_held", {"customer_id": "acme", "ports": [port]})
    daemon.wait_step_started(holder, "hold")
    sid = daemon.get_process(holder)["state"]["subscription_id"]
    status, problem = daemon.request(
        "POST", "/api/processes/modify_l2vpn", {"subscription_id": sid, "speed": 10}
    )
    assert status == 409
    assert problem["reason"] == "locked" and problem["process_id"] == holder


def test_a_workflow_outside_usable_when_is_a_409_with_reason_status(
    daemon: DaemonProcess,
) -> None:
    node, _ = node_and_port(daemon)
    status, problem = daemon.request(
        "POST", "/api/processes/enable_node", {"subscription_id": node}
    )
    assert (status, problem["reason"]) == (409, "status")


def test_a_start_at_an_old_version_is_a_409_with_reason_stale(daemon: DaemonProcess) -> None:
    node, _ = node_and_port(daemon)
    _, sub = daemon.request("GET", f"/api/subscriptions/{node}")
    created_at = sub["version"]
    pid = daemon.start_process(
        "modify_node", {"subscription_id": node, "new_name": "r2", "version": created_at}
    )
    daemon.wait_process(pid)
    status, problem = daemon.request(
        "POST",
        "/api/processes/modify_node",
        {"subscription_id": node, "new_name": "r3", "version": created_at},
    )
    assert (status, problem["reason"]) == (409, "stale")


def test_a_subscription_of_another_product_is_a_422_naming_subscription_id(
    daemon: DaemonProcess,
) -> None:
    _, port = node_and_port(daemon)
    status, problem = daemon.request(
        "POST", "/api/processes/modify_node", {"subscription_id": port, "new_name": "x"}
    )
    assert status == 422
    assert [e["loc"] for e in problem["errors"]] == [["subscription_id"]]


def test_the_subscription_shows_its_relations_and_usable_workflows(
    daemon: DaemonProcess,
) -> None:
    node, port = node_and_port(daemon)
    status, sub = daemon.request("GET", f"/api/subscriptions/{node}")
    assert status == 200
    assert [u["id"] for u in sub["in_use_by"]] == [port]
    assert {"id", "product", "status", "description"} <= set(sub["in_use_by"][0])
    workflows = {w["name"]: w for w in sub["workflows"]}
    assert workflows["terminate_node"]["usable"] is False
    assert workflows["terminate_node"]["reason"] == "in_use"
    assert workflows["modify_node"]["usable"] is True
    _, port_sub = daemon.request("GET", f"/api/subscriptions/{port}")
    assert [d["id"] for d in port_sub["depends_on"]] == [node]
    assert port_sub["version"] >= 1 and port_sub["note"] is None


def test_a_note_is_set_with_put_and_recorded_with_who_set_it(daemon: DaemonProcess) -> None:
    node, _ = node_and_port(daemon)
    status, sub = daemon.request(
        "PUT",
        f"/api/subscriptions/{node}/note",
        {"note": "fibre cut, ticket 42"},
        headers={"X-Orchd-Reporter": "alice"},
    )
    assert status == 200 and sub["note"] == "fibre cut, ticket 42"
    (action,) = sub["actions"]
    assert action["action"] == "note" and action["actor"].endswith("(alice)")
    status, problem = daemon.request("PUT", f"/api/subscriptions/{node}/note", {"text": "x"})
    assert status == 422
    missing = "00000000-0000-4000-8000-000000000009"
    status, _ = daemon.request("PUT", f"/api/subscriptions/{missing}/note", {"note": "x"})
    assert status == 404


def test_subscriptions_are_searched_with_q(daemon: DaemonProcess) -> None:
    created(daemon, "create_node", {"customer_id": "acme", "name": "core-ams-1", "ims_id": 1})
    created(daemon, "create_node", {"customer_id": "acme", "name": "edge-lon-1", "ims_id": 2})
    status, page = daemon.request("GET", "/api/subscriptions?q=AMS&product=node")
    assert status == 200
    assert [s["attributes"]["node"]["name"] for s in page["items"]] == ["core-ams-1"]


def test_the_products_are_listed_with_their_schema(daemon: DaemonProcess) -> None:
    status, products = daemon.request("GET", "/api/products")
    assert status == 200
    by_name = {p["name"]: p for p in products}
    assert by_name["l2vpn"]["schema"]["properties"]["saps"]["type"] == "array"
    assert "modify_l2vpn" in by_name["l2vpn"]["workflows"]
    _, document = daemon.request("GET", "/api/openapi.json")
    assert "/api/products" in document["paths"]
    assert "put" in document["paths"]["/api/subscriptions/{id}/note"]
    schemas = document["components"]["schemas"]
    saps = schemas["product.l2vpn"]["properties"]["saps"]["items"]["$ref"]
    assert saps == "#/components/schemas/product.l2vpn.SapBlock"
    assert "vlan" in schemas["product.l2vpn.SapBlock"]["properties"]


def test_after_a_sigkill_mid_workflow_the_subscription_and_its_relations_match_state(
    daemon: DaemonProcess,
) -> None:
    node, port = node_and_port(daemon)
    pid = daemon.start_process("create_l2vpn_held", {"customer_id": "acme", "ports": [port]})
    daemon.wait_step_started(pid, "hold")
    daemon.kill()
    daemon.restart()
    process = daemon.wait_process(pid)
    sid = process["state"]["subscription_id"]
    _, sub = daemon.request("GET", f"/api/subscriptions/{sid}")
    assert sub["attributes"] == process["state"]["subscription"]["attributes"]
    assert [d["id"] for d in sub["depends_on"]] == [port]
    assert sub["insync"] is True
    _, port_sub = daemon.request("GET", f"/api/subscriptions/{port}")
    assert [u["id"] for u in port_sub["in_use_by"]] == [sid]


def test_the_cli_lists_products_and_searches_subscriptions(daemon: DaemonProcess) -> None:
    created(daemon, "create_node", {"customer_id": "acme", "name": "core-ams-1", "ims_id": 1})
    created(daemon, "create_node", {"customer_id": "acme", "name": "edge-lon-1", "ims_id": 2})
    products = daemon.cli("products")
    assert products.returncode == 0, products.stderr
    assert "l2vpn" in products.stdout and "modify_l2vpn" in products.stdout
    found = daemon.cli("subscriptions", "--product", "node", "-q", "ams", "--json")
    assert found.returncode == 0, found.stderr
    items = json.loads(found.stdout)["items"]
    assert [s["attributes"]["node"]["name"] for s in items] == ["core-ams-1"]


def test_the_cli_shows_a_subscriptions_relations_and_why_a_workflow_is_refused(
    daemon: DaemonProcess,
) -> None:
    node, port = node_and_port(daemon)
    shown = daemon.cli("subscription", node)
    assert shown.returncode == 0, shown.stderr
    assert "in use by:" in shown.stdout and port in shown.stdout
    refused = [line for line in shown.stdout.splitlines() if "terminate_node" in line]
    assert refused and "in_use" in refused[0]
    start = daemon.cli("start", "terminate_node", "--input", json.dumps({"subscription_id": node}))
    assert start.returncode == 1
    assert "reason in_use" in start.stderr and port in start.stderr
