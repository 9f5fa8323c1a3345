"""`make run`'s demo, wired as the Makefile wires it (issue #10 item 25).

A daemon on the bundled examples with no TCP listener, and ``orchd fake-oss`` started with the
Makefile's own ``OSS_ARGS`` (only the port and the directory changed): ``provision_port`` must
complete, which it does only when the fake OSS's callback reaches the daemon's Unix socket.
"""

from __future__ import annotations

import http.client
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_util import ROOT, DaemonFactory, DaemonProcess, free_port
from tests_support import block_until

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def makefile_oss_args(port: int, directory: Path) -> list[str]:
    """``$(OSS_ARGS)`` as the Makefile expands it, for ``make run`` started in ``directory``."""
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(ROOT), "--eval",
         "print-oss-args: ; @echo $(OSS_ARGS)", "print-oss-args",
         f"OSS_PORT={port}", f"CURDIR={directory}"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return shlex.split(result.stdout)


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:

    def answers() -> bool:
        assert proc.poll() is None, "the fake OSS exited"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    block_until(answers, "the fake OSS answering", within=15)


@pytest.fixture
def demo(daemon_factory: DaemonFactory) -> Iterator[DaemonProcess]:
    port = free_port()
    daemon = daemon_factory(
        {"workflows": ["orchd.examples"]},
        start=False,
        env={"ORCHD_OSS_URL": f"http://127.0.0.1:{port}"},
    )
    args = makefile_oss_args(port, daemon.dir)
    oss_log = (daemon.dir / "fake-oss.log").open("wb")
    oss = subprocess.Popen(
        [sys.executable, "-m", "orchd", "fake-oss", *args],
        cwd=daemon.dir, stdout=oss_log, stderr=subprocess.STDOUT, env=daemon.environment(),
    )  # fmt: skip
    try:
        wait_listening(port, oss)
        daemon.start()
        yield daemon
    finally:
        oss.terminate()
        oss.wait(10)
        oss_log.close()


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


def run_demo(demo: DaemonProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchd.examples.demo", demo.socket],
        env=demo.environment(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


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
