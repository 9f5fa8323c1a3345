"""Parallel branches against a real daemon: the API, the CLI and a SIGKILL mid-fork (README
"Parallel branches")."""

from __future__ import annotations

import signal
from typing import Any

from support.common import block_until
from support.daemons import DaemonFactory

N = 24


def branch_records(process: dict[str, Any], name: str) -> dict[str, list[str]]:
    """Each branch's records of step ``name``: their statuses, oldest first."""
    found: dict[str, list[str]] = {}
    for s in process["steps"]:
        if s["name"] == name and s["branch"] is not None:
            found.setdefault(s["branch"], []).append(s["status"])
    return found


def test_a_foreach_through_the_api_and_the_cli(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"workflows": ["branch_daemon_flows"]})
    pid = daemon.start_process("configure_ports", {"ports": list(range(N))})
    process = daemon.wait_process(pid, ("completed",), timeout=30)
    assert process["state"]["total"] == sum(10 * i + 1 for i in range(N))
    assert [r["verified"] for r in process["state"]["results"]] == [10 * i + 1 for i in range(N)]
    verify = branch_records(process, "verify")
    assert len(verify) == N and all(v == ["success"] for v in verify.values())
    [fork] = process["branches"]
    assert fork["fork"] == "Configure ports" and fork["joined"] is True
    assert fork["counts"] == {"done": N} and fork["abridged"] is True
    show = daemon.cli("show", pid)
    assert show.returncode == 0, show.stderr
    assert f"Configure ports  joined  {N} started: {N} done" in show.stdout
    assert "verify" not in show.stdout.split("branches:")[0]  # the main line's log
    one = daemon.cli("show", pid, "--branch", "Configure ports/3")
    assert "Configure ports/3: configure" in one.stdout
    assert "Configure ports/3: verify" in one.stdout and "Configure ports/4" not in one.stdout


def test_a_failed_branch_is_retried_alone_from_the_cli(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"workflows": ["branch_daemon_flows"]})
    pid = daemon.start_process("configure_ports", {"ports": [0, 1, 2, 3], "fail": [2]})
    process = daemon.wait_process(pid, ("failed",), timeout=30)
    assert "Configure ports/2" in process["error"] and "refused" in process["error"]
    show = daemon.cli("show", pid)
    assert "Configure ports/2  failed  configure" in show.stdout
    assert "traceback of step 'configure' (branch Configure ports/2)" in show.stdout
    daemon.release(pid)
    retry = daemon.cli("retry", pid)
    assert retry.returncode == 0, retry.stderr
    process = daemon.wait_process(pid, ("completed",), timeout=30)
    assert daemon.step_runs(pid, "configure 0") == 1  # the finished branches never ran again
    assert daemon.step_runs(pid, "configure 2") == 2
    assert branch_records(process, "configure")["Configure ports/2"] == ["failed", "success"]


def test_a_failed_branch_is_skipped_through_the_api(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"workflows": ["branch_daemon_flows"]})
    pid = daemon.start_process("configure_ports", {"ports": [0, 1], "fail": [1]})
    daemon.wait_process(pid, ("failed",), timeout=30)
    status, _ = daemon.request("POST", f"/api/processes/{pid}/skip", {"reason": "spare port"})
    assert status == 202
    process = daemon.wait_process(pid, ("completed",), timeout=30)
    assert branch_records(process, "configure")["Configure ports/1"] == ["failed", "skipped"]
    assert process["state"]["results"] == [{"configured": 0, "verified": 1}, {"verified": 0}]
    [skip] = [s for s in process["steps"] if s["status"] == "skipped"]
    assert skip["reason"] == "spare port" and skip["actor"].startswith("uid:")


def test_a_branch_callback_answered_by_an_operator_on_another_connection(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory({"workflows": ["branch_daemon_flows"]})
    pid = daemon.start_process("provision", {})
    process = daemon.wait_process(pid, ("awaiting_callback",), timeout=30)
    assert branch_records(process, "inventory") == {"Provision/1": ["success"]}
    answer = daemon.cli("callback", pid, "--input", '{"circuit": "C-9"}')
    assert answer.returncode == 0, answer.stderr
    process = daemon.wait_process(pid, ("completed",), timeout=30)
    assert process["state"]["circuit"] == "C-9"
    assert [a["action"] for a in process["actions"]] == ["start", "callback"]


def test_a_sigkill_mid_fork_resumes_each_branch_from_its_own_last_step(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory({"workflows": ["branch_daemon_flows"]})
    pid = daemon.start_process("configure_ports", {"ports": list(range(N)), "pause": 0.2})
    block_until(
        lambda: sum(daemon.step_runs(pid, f"verify {i}") for i in range(N)) >= 6,
        "six branches verified",
        within=20,
    )
    daemon.stop(signal.SIGKILL)
    daemon.start()
    process = daemon.wait_process(pid, ("completed",), timeout=30)
    assert process["state"]["total"] == sum(10 * i + 1 for i in range(N))
    configure = branch_records(process, "configure")
    assert len(configure) == N and all(v == ["success"] for v in configure.values())
    runs = [daemon.step_runs(pid, f"configure {i}") for i in range(N)]
    # At most the five branches in flight at the kill ran their step again.
    assert all(r in (1, 2) for r in runs) and sum(runs) <= N + 5
    assert [s["name"] for s in process["steps"]].count("Configure ports") == 1
    assert daemon.step_runs(pid, "report") == 1


def test_server_sent_step_events_carry_their_branch(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"workflows": ["branch_daemon_flows"]})
    stream = daemon.events()
    pid = daemon.start_process("configure_ports", {"ports": [0, 1]})
    got = stream.until(pid, "completed")
    stream.close()
    steps = {
        (e.json().get("step"), e.json().get("branch")) for e in got if e.json()["kind"] == "step"
    }
    assert ("verify", "Configure ports/1") in steps and ("report", None) in steps
