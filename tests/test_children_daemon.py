"""Child processes against a real daemon: the API, the CLI, and crashes at every point (README
"Child processes")."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from typing import Any

from support.common import block_until
from support.daemons import DaemonFactory, DaemonProcess

N = 20


def start_fan_out(daemon: DaemonProcess, pause: float = 0.05) -> str:
    return daemon.start_process("fan_out", {"inputs": [{"n": i, "pause": pause} for i in range(N)]})


def children_of(daemon: DaemonProcess, pid: str) -> list[dict[str, Any]]:
    status, page = daemon.request("GET", f"/api/processes?parent={pid}&limit=500")
    assert status == 200, page
    return list(page["items"])


def assert_fanned_out_once(daemon: DaemonProcess, pid: str) -> None:
    parent = daemon.wait_process(pid, ("completed",), timeout=30)
    assert parent["state"]["total"] == sum(2 * i for i in range(N))
    kids = children_of(daemon, pid)
    assert len(kids) == N  # none created twice, none lost
    assert all(k["status"] == "completed" and k["parent_id"] == pid for k in kids)
    assert [s["name"] for s in parent["steps"]].count("double them") == 1
    assert daemon.step_runs(pid, "report") == 1


def test_a_fan_out_through_the_api_and_the_cli(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"workflows": ["child_daemon_flows"]})
    pid = start_fan_out(daemon)
    assert_fanned_out_once(daemon, pid)
    parent = daemon.get_process(pid)
    assert parent["parent_id"] is None and len(parent["children"]) == N
    assert {c["workflow"] for c in parent["children"]} == {"child_job"}
    ps = subprocess.run(
        [sys.executable, "-m", "orchd", "--socket", daemon.socket, "ps", "--parent", pid, "--json",
         "--limit", "500"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert ps.returncode == 0, ps.stderr
    show = subprocess.run(
        [sys.executable, "-m", "orchd", "--socket", daemon.socket, "show", pid],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert (
        f"children:       {N}: {N} completed" in show.stdout or f"{N}: {N} completed" in show.stdout
    )


def test_a_sigkill_mid_fan_out_loses_no_child_and_creates_none_twice(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory({"workflows": ["child_daemon_flows"]})
    pid = start_fan_out(daemon, pause=0.2)
    block_until(
        lambda: sum(k["status"] == "completed" for k in children_of(daemon, pid)) >= 5,
        "five children completed",
        within=20,
    )
    daemon.stop(signal.SIGKILL)
    daemon.start()
    assert_fanned_out_once(daemon, pid)


def test_a_sigkill_while_the_children_are_created_creates_them_once(
    daemon_factory: DaemonFactory,
) -> None:
    # Commits: the start, init, then the one with every child: it dies before COMMIT.
    daemon = daemon_factory(
        {"workflows": ["child_daemon_flows"]}, env={"ORCHD_FAULTS": "in_commit@3"}
    )
    pid = start_fan_out(daemon)
    assert daemon.wait(timeout=15) == -signal.SIGKILL
    assert children_of_file(daemon, pid) == 0
    daemon.extra_env.pop("ORCHD_FAULTS")
    daemon.start()
    assert_fanned_out_once(daemon, pid)


def test_a_sigkill_between_the_last_childs_commit_and_the_parents_wake_up(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory(
        {"workflows": ["child_daemon_flows"]}, env={"ORCHD_FAULTS": "parent_woken@1"}
    )
    pid = start_fan_out(daemon)
    assert daemon.wait(timeout=30) == -signal.SIGKILL
    daemon.extra_env.pop("ORCHD_FAULTS")
    daemon.start()
    assert_fanned_out_once(daemon, pid)


def children_of_file(daemon: DaemonProcess, pid: str) -> int:

    with sqlite3.connect(daemon.db) as conn:
        return int(
            conn.execute("SELECT count(*) FROM processes WHERE parent_id = ?", (pid,)).fetchone()[0]
        )
