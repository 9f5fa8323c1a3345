"""Forms of several pages through a real daemon: the form routes, starts and resumes with the
list of page answers, a restart between pages, and the CLI (``--input`` with a list,
``--interactive`` on a real terminal, and refused without one)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from typing import Any

import pytest
from support.daemons import ORCHD, DaemonFactory, DaemonProcess

FORM = "/api/workflows/create_l2vpn_paged/form"


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    return daemon_factory({"workflows": ["product_flows"]})


def created(daemon: DaemonProcess, workflow: str, body: Any) -> str:
    process = daemon.wait_process(daemon.start_process(workflow, body), ("completed", "failed"))
    assert process["status"] == "completed", process["error"]
    return str(process["state"]["subscription_id"])


def ports(daemon: DaemonProcess, count: int) -> list[str]:
    node = created(daemon, "create_node", {"customer_id": "acme", "name": "r1", "ims_id": 1})
    body = {"customer_id": "acme", "node_id": node}
    return [created(daemon, "create_port", {**body, "name": f"xe-0/0/{n}"}) for n in range(count)]


def test_the_form_route_answers_page_by_page(daemon: DaemonProcess) -> None:
    made = ports(daemon, 2)
    status, page = daemon.request("POST", FORM, [])
    assert (status, page["page"]) == (200, 0)
    assert set(page["form"]["properties"]) == {"sap_count", "speed"}
    status, page = daemon.request("POST", FORM, [{"sap_count": 2}])
    assert (status, page["page"]) == (200, 1)
    offered = page["form"]["properties"]["ports"]["items"]["oneOf"]
    assert {o["const"] for o in offered} == set(made)
    assert all(o["title"].startswith("port xe-0/0/") for o in offered)
    status, page = daemon.request("POST", FORM, [{"sap_count": 2}, {"ports": made}, {"vlan": 9}])
    assert (status, page) == (200, {"done": True})


def test_a_wrong_answer_is_a_422_located_by_page_and_field(daemon: DaemonProcess) -> None:
    made = ports(daemon, 2)
    status, problem = daemon.request(
        "POST", FORM, [{"sap_count": 2}, {"ports": [made[0], "not-a-port"]}]
    )
    assert status == 422
    assert problem["errors"][0]["loc"] == ["pages", 1, "ports", 1]


def test_a_restart_between_pages_changes_nothing(daemon: DaemonProcess) -> None:
    made = ports(daemon, 2)
    answers = [{"sap_count": 2}, {"ports": made}]
    _, before = daemon.request("POST", FORM, answers)
    daemon.stop()
    daemon.start()
    _, after = daemon.request("POST", FORM, answers)
    assert before == after and after["page"] == 2


def test_a_start_takes_the_list_and_refuses_an_incomplete_one(daemon: DaemonProcess) -> None:
    made = ports(daemon, 2)
    status, problem = daemon.request(
        "POST", "/api/processes/create_l2vpn_paged", [{"sap_count": 2}, {"ports": made}]
    )
    assert status == 422 and problem["errors"] == [
        {"loc": ["pages", 2], "msg": "page not answered"}
    ]
    sid = created(daemon, "create_l2vpn_paged", [{"sap_count": 2}, {"ports": made}, {"vlan": 4}])
    _, sub = daemon.request("GET", f"/api/subscriptions/{sid}")
    assert sorted(d["id"] for d in sub["depends_on"]) == sorted(made)


def test_a_suspended_process_has_a_form_route_and_takes_the_list(daemon: DaemonProcess) -> None:
    made = ports(daemon, 2)
    vpn = created(daemon, "create_l2vpn", {"customer_id": "acme", "ports": made})
    pid = daemon.start_process("respeed_l2vpn", {"subscription_id": vpn})
    daemon.wait_process(pid, ("suspended",))
    status, page = daemon.request("POST", f"/api/processes/{pid}/form", [{"speed": 25}])
    assert (status, page["page"]) == (200, 1)
    status, _ = daemon.request(
        "POST", f"/api/processes/{pid}/resume", [{"speed": 25}, {"confirm": True}]
    )
    assert status == 202
    assert daemon.wait_process(pid)["status"] == "completed"
    status, problem = daemon.request("POST", f"/api/processes/{pid}/form", [])
    assert status == 409  # no longer suspended


def test_the_openapi_document_has_the_form_routes(daemon: DaemonProcess) -> None:
    _, document = daemon.request("GET", "/api/openapi.json")
    assert "post" in document["paths"]["/api/workflows/{name}/form"]
    assert "post" in document["paths"]["/api/processes/{id}/form"]


def test_the_openapi_document_describes_each_workflows_start_body(
    daemon: DaemonProcess,
) -> None:
    _, document = daemon.request("GET", "/api/openapi.json")
    start = document["paths"]["/api/processes/{id}"]["post"]["requestBody"]
    bodies = {b["title"]: b for b in start["content"]["application/json"]["schema"]["oneOf"]}
    assert bodies["create_l2vpn_paged"]["type"] == "array"  # a form of several pages
    assert set(bodies["create_node"]["properties"]) >= {"customer_id", "name", "ims_id"}
    _, workflows = daemon.request("GET", "/api/workflows")
    paged = {w["name"]: w["paged"] for w in workflows}
    assert paged["create_l2vpn_paged"] is True and paged["create_node"] is False


def test_the_cli_input_takes_the_list_of_page_answers(daemon: DaemonProcess) -> None:
    made = ports(daemon, 2)
    answers = json.dumps([{"sap_count": 2}, {"ports": made}, {"vlan": 12}])
    done = daemon.cli("start", "create_l2vpn_paged", "--input", answers, "--wait", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "completed"


def test_interactive_refuses_to_run_without_a_terminal(daemon: DaemonProcess) -> None:
    refused = daemon.cli("start", "create_l2vpn_paged", "--interactive")
    assert refused.returncode == 2
    assert "terminal" in refused.stderr


class Terminal:
    """A real pseudo-terminal in front of a command: read what it prints, type answers."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = os.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHD_")}
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never came; the terminal shows:\n{self.seen}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:  # the command exited and closed the terminal
                    break
        assert text in self.seen, self.seen
        return self.seen

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        code = self.proc.wait(timeout=20)
        os.close(self.master)
        return code


def test_interactive_asks_page_by_page_and_asks_a_refused_page_again(
    daemon: DaemonProcess,
) -> None:
    made = ports(daemon, 3)
    tty = Terminal([ORCHD, "--socket", daemon.socket, "start", "create_l2vpn_paged",
                    "--interactive", "--wait"])  # fmt: skip
    try:
        tty.expect("sap_count")
        tty.type("2")
        tty.expect("speed")
        tty.type("")  # the default
        shown = tty.expect("ports")
        assert "port xe-0/0/0" in shown and "3)" in shown  # choices with their titles
        tty.type("1")  # one port where the first page asked for two: page 1 again
        tty.expect("! ports")
        tty.expect("ports (")
        tty.type("1, 3")
        tty.expect("vlan")
        tty.type("42")
        tty.expect("completed")
    finally:
        code = tty.close()
    assert code == 0, tty.seen
    _, page = daemon.request("GET", "/api/subscriptions?product=l2vpn")
    (vpn,) = page["items"]
    _, detail = daemon.request("GET", f"/api/subscriptions/{vpn['id']}")
    assert [d["id"] for d in detail["depends_on"]] == [made[0], made[2]]  # "1, 3"
