"""Issue 30 item 7 on a cluster: which node runs a process, and the trace a takeover leaves.

Two real daemons (nodes a and b) on one PostgreSQL database, as in tests/test_cluster.py; the
steps of tests/wf/cluster_flows.py log every run into the shared folder and hold on a file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import pg
from support.common import block_until
from support.daemons import DaemonFactory, DaemonProcess

pytestmark = pytest.mark.cluster

LEASE = 2.0


def nodes(daemon_factory: DaemonFactory, server: pg.PgServer, runs: Path) -> list[Any]:
    url = pg.fresh_schema(server)
    return [
        daemon_factory(
            {
                "database": url,
                "workflows": ["cluster_flows"],
                "node_id": name,
                "lease_timeout": f"{LEASE:g}s",
            },
            name=name,
            env={"ORCHD_TEST_DIR": str(runs)},
        )
        for name in "ab"
    ]


def ran(runs: Path, pid: str, step: str) -> list[int]:
    """The daemon pids that ran ``step`` of ``pid``, as the steps logged them."""
    found = []
    for log in runs.glob("runs-*.log"):
        for line in log.read_text().splitlines():
            process, name, daemon = line.rsplit(" ", 2)
            if (process, name) == (pid, step):
                found.append(int(daemon))
    return found


def show(d: DaemonProcess, pid: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "orchd", "--socket", d.socket, "show", pid],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_takeover_shows_the_new_node_and_leaves_an_audit_action(
    daemon_factory: DaemonFactory, pg_server: pg.PgServer, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    a, b = nodes(daemon_factory, pg_server, runs)
    go = runs / "go"
    pid = b.start_process("cluster_steady", {"pause": 0.0, "hold": str(go)})
    assert b.proc is not None
    b_pid = b.proc.pid
    block_until(lambda: ran(runs, pid, "c1"), "b runs the first step", within=30)

    # Any node says which node runs it, in the API and in orchd show.
    assert a.get_process(pid)["node"] == "b"
    assert "node:" in show(a, pid) and any(
        line.split() == ["node:", "b"] for line in show(a, pid).splitlines()
    )

    b.kill()  # b dies in step c1; a takes the process over once b's lease lapsed
    go.touch()
    process = a.wait_process(pid, timeout=60)
    assert a.proc is not None
    assert sorted(ran(runs, pid, "c1")) == sorted([b_pid, a.proc.pid])  # ran again, on a
    assert process["node"] == "a"
    takeovers = [x for x in process["actions"] if x["action"] == "takeover"]
    assert len(takeovers) == 1, process["actions"]
    [takeover] = takeovers
    assert takeover["actor"] == "node:a"
    assert takeover["detail"] == "node b's lease lapsed; step 'c1' runs again"
    text = show(a, pid)
    assert "takeover" in text and "node b's lease lapsed; step 'c1' runs again" in text
    assert [line.split() for line in text.splitlines() if line.startswith("node:")] == [
        ["node:", "a"]
    ]


def test_a_waiting_process_of_a_dead_node_says_where_it_goes_on(
    daemon_factory: DaemonFactory, pg_server: pg.PgServer, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    a, b = nodes(daemon_factory, pg_server, runs)
    pid = b.start_process("cluster_ask")
    b.wait_process(pid, ("suspended",))
    b.kill()
    # Sent to a, the answer waits for b (which does not answer) until b's lease has lapsed;
    # then a claims the process and takes the answer itself.
    status, body = a.request("POST", f"/api/processes/{pid}/resume", {"approved": True}, timeout=60)
    assert status == 202, body
    process = a.wait_process(pid, timeout=30)
    [takeover] = [x for x in process["actions"] if x["action"] == "takeover"]
    assert takeover["actor"] == "node:a"
    assert takeover["detail"] == "node b's lease lapsed; it goes on at step 'approve'"
    assert process["node"] == "a"
