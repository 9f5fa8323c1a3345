"""``orchd health`` reads as a table for people (and as the API's JSON with --json)."""

from __future__ import annotations

import json

from support.daemons import DaemonFactory


def test_health_prints_processes_by_status_not_a_dict(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    daemon.wait_process(daemon.start_process("quick"))
    shown = daemon.cli("health")
    assert shown.returncode == 0, shown.stderr
    line = next(ln for ln in shown.stdout.splitlines() if ln.startswith("processes:"))
    assert "completed 1" in line and "{" not in line and "running 0" not in line
    assert json.loads(daemon.cli("health", "--json").stdout)["processes"]["completed"] == 1
