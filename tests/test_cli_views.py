"""The CLI's incident views against a real daemon: ``ps --parent`` by a short id, ``show``'s
audit trail, skip reasons and tracebacks, and ``health`` of a cluster's nodes.

The module's daemon runs tests/wf/wait_flows.py, as tests/test_cli_wait.py's does; the
cluster's nodes need a PostgreSQL daemon of their own.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from support import pg
from support.daemons import DaemonFactory, DaemonProcess, running_daemon

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    config = {"workflows": ["wait_flows"], "grace_period": "1s"}
    with running_daemon(tmp_path_factory.mktemp("cli-views"), config) as d:
        yield d


def children_of(daemon: DaemonProcess, pid: str) -> set[str]:
    status, page = daemon.request("GET", f"/api/processes?parent={pid}")
    assert status == 200, page
    return {item["id"] for item in page["items"]}


# -- ps --parent ------------------------------------------------------------------------------


def test_ps_parent_takes_the_short_id(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("wait_fanout")
    daemon.wait_process(pid, ("completed",))
    kids = children_of(daemon, pid)
    assert len(kids) == 2
    page = json.loads(daemon.cli_ok("ps", "--parent", pid[:8], "--json"))
    assert {item["id"] for item in page["items"]} == kids
    out = daemon.cli_ok("ps", "--parent", pid[:8])
    rows = [line for line in out.splitlines() if any(kid in line for kid in kids)]
    assert len(rows) == 2 and all("wait_quick_child" in row for row in rows)
    assert pid not in out
    # A short id no process has is refused, as `show` refuses it, rather than listing nothing.
    done = daemon.cli("ps", "--parent", "00000000-00")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "00000000-00" in done.stderr


# -- show: the audit trail and skip reasons ---------------------------------------------------


def test_show_prints_the_audit_trail_and_the_skip_reason(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("wait_broken_sync")
    daemon.wait_process(pid, ("failed",))
    daemon.cli_ok("--reporter", "alice", "skip", pid, "--reason", "applied by hand")
    proc = daemon.wait_process(pid, ("completed",))
    me = f"uid:{os.getuid()}"
    assert [(a["action"], a["actor"], a["detail"]) for a in proc["actions"]] == [
        ("start", me, None),
        ("skip", f"{me} (alice)", "applied by hand"),
    ]
    out = daemon.cli_ok("show", pid)
    # The failed attempt stays in the step log; the skip is a record of its own.
    failed, skipped = [line for line in out.splitlines() if line.startswith("do the work ")]
    assert "failed" in failed and "disk full" in failed
    assert "skipped" in skipped and f"skipped by {me} (alice): applied by hand" in skipped
    trail = out.split("\nactions:\n", 1)[1].splitlines()
    assert trail[0].split() == ["AT", "ACTION", "ACTOR", "DETAIL"]
    assert trail[1].split()[1:] == ["start", me]
    assert trail[2].split()[1:] == ["skip", me, "(alice)", "applied", "by", "hand"]


def test_show_prints_the_time_of_each_action(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("wait_quick_child")
    proc = daemon.wait_process(pid, ("completed",))
    out = daemon.cli_ok("show", pid)
    row = out.split("\nactions:\n", 1)[1].splitlines()[1]
    at = row.split()[0]
    assert re.fullmatch(r"\d\d:\d\d:\d\d|\d{4}-\d\d-\d\d", at), row
    assert proc["actions"][0]["at"]


# -- show: a traceback starts at the step's own code ------------------------------------------


def traceback_frames(text: str) -> list[str]:
    return re.findall(r'^  File "([^"]+)", line \d+, in (\S+)$', text, re.MULTILINE)


def test_a_traceback_starts_at_the_step_code(daemon: DaemonProcess) -> None:
    for workflow, frames in [
        ("wait_broken", ["read_reply", "parse_reply"]),  # an async step, on the loop
        ("wait_broken_sync", ["do_work"]),  # a sync step, in the step threads
    ]:
        pid = daemon.start_process(workflow)
        proc = daemon.wait_process(pid, ("failed",))
        [record] = [s for s in proc["steps"] if s["status"] == "failed"]
        shown = traceback_frames(record["traceback"])
        assert [name for _, name in shown] == frames, record["traceback"]
        assert all(path.endswith("wait_flows.py") for path, _ in shown), record["traceback"]
        out = daemon.cli_ok("show", pid)
        printed = out.split(f"traceback of step {record['name']!r}:\n", 1)[1]
        assert printed.startswith("Traceback (most recent call last):\n  File "), printed
        assert traceback_frames(printed) == shown
        assert "orchd/engine" not in printed


# -- health: a cluster's nodes ----------------------------------------------------------------


def test_health_prints_the_nodes_as_a_table(
    daemon_factory: DaemonFactory, pg_server: pg.PgServer
) -> None:
    url = pg.fresh_schema(pg_server)
    config: dict[str, Any] = {"database": url, "workflows": ["wait_flows"], "node_id": "a"}
    node = daemon_factory(config)
    status, health = node.request("GET", "/api/health")
    assert status == 200 and [n["node_id"] for n in health["nodes"]] == ["a"]
    done = node.cli("health")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "{" not in out and "node_id" not in out, out
    assert not re.search(r"\d{9,}\.\d", out), out  # no epoch seconds
    lines = out.split("\nnodes:\n", 1)[1].splitlines()
    assert lines[0].split() == ["NODE", "STARTED", "LAST", "HEARTBEAT", "LEASE", "UNTIL"]
    assert lines[1].startswith("a (this node)")
    assert len(ISO.findall(lines[1])) == 3, lines[1]
    assert re.search(r"\(\S+ ago\).*\(in \S+\)", lines[1]), lines[1]
    uptime = next(line for line in out.splitlines() if line.startswith("uptime:"))
    assert re.fullmatch(r"uptime:\s+\d+(ms|\.\ds|m\d\ds|h\d\dm|d\d\dh)", uptime), uptime
