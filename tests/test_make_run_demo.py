"""`make run`'s demo, wired as the Makefile wires it (issue #10 item 25).

A daemon on the bundled examples with no TCP listener, and ``orchd fake-oss`` started with the
Makefile's own ``OSS_ARGS`` (only the port and the directory changed): ``provision_port`` must
complete, which it does only when the fake OSS's callback reaches the daemon's Unix socket.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from support.daemons import DaemonFactory, DaemonProcess, make_run_demo, run_demo

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@pytest.fixture
def demo(daemon_factory: DaemonFactory) -> Iterator[DaemonProcess]:
    with make_run_demo(daemon_factory) as daemon:
        yield daemon


def test_provision_port_completes_under_make_run(demo: DaemonProcess) -> None:
    assert "listen" not in demo.config
    node = demo.wait_process(demo.start_process("create_node", {"name": "n1"}), timeout=30)
    form = {"subscription_id": node["subscription_id"], "port": "xe-0/0/1", "vlan": 100}
    pid = demo.start_process("provision_port", form)
    process = demo.wait_process(pid, statuses=("completed", "failed"), timeout=30)
    assert process["status"] == "completed", process
    assert process["state"]["callback_result"]["result"] == "ok"


def test_provision_ports_completes_under_make_run(demo: DaemonProcess) -> None:
    node = demo.wait_process(demo.start_process("create_node", {"name": "n2"}), timeout=30)
    ports = [{"port": f"ge-0/0/{n}", "vlan": 10 + n} for n in range(3)]
    pid = demo.start_process(
        "provision_ports", {"subscription_id": node["subscription_id"], "ports": ports}
    )
    process = demo.wait_process(pid, statuses=("completed", "failed"), timeout=30)
    assert process["status"] == "completed", process
    assert [r["configured"] for r in process["state"]["port_results"]] == ports


def test_the_demo_builds_a_network_with_relations_once(demo: DaemonProcess) -> None:
    first = run_demo(demo)
    assert first.returncode == 0, first.stderr
    status, page = demo.request("GET", "/api/subscriptions?limit=50")
    products = sorted(s["product"] for s in page["items"])
    assert products == ["core_link", "l2vpn", "node", "node", "port", "port", "port", "port"]
    # lon-edge-1's first port carries the core link; the L2VPN is on the second ports.
    port = next(s for s in page["items"] if s["description"] == "lon-edge-1 xe-0/0/1")
    _, detail = demo.request("GET", f"/api/subscriptions/{port['id']}")
    assert [u["product"] for u in detail["in_use_by"]] == ["core_link"]
    vpn = next(s for s in page["items"] if s["product"] == "l2vpn")
    _, vpn_detail = demo.request("GET", f"/api/subscriptions/{vpn['id']}")
    assert sorted(d["description"] for d in vpn_detail["depends_on"]) == [
        "ams-core-1 xe-0/0/2",
        "lon-edge-1 xe-0/0/2",
    ]
    status, problem = demo.request(
        "POST", "/api/processes/terminate_port", {"subscription_id": port["id"]}
    )
    assert (status, problem["reason"]) == (409, "in_use")
    again = run_demo(demo)
    assert again.returncode == 0, again.stderr
    assert "nothing new is built" in again.stderr
    _, after = demo.request("GET", "/api/subscriptions?limit=50")
    assert len(after["items"]) == len(page["items"])


def test_a_demo_stopped_halfway_builds_only_what_is_missing(demo: DaemonProcess) -> None:
    # What a `make run` stopped after its first workflow left behind.
    first = demo.wait_process(
        demo.start_process("create_node", {"name": "ams-core-1", "role": "core"}), timeout=30
    )
    assert first["status"] == "completed"
    result = run_demo(demo)
    assert result.returncode == 0, result.stderr
    assert "core node ams-core-1 (built before)" in result.stderr
    _, page = demo.request("GET", "/api/subscriptions?limit=50")
    descriptions = sorted(s["description"] for s in page["items"])
    assert len(descriptions) == 8 and descriptions.count("core node ams-core-1") == 1
    node = next(s for s in page["items"] if s["description"] == "core node ams-core-1")
    assert node["id"] == first["state"]["subscription_id"]
