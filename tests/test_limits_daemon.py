"""Limits on shared resources (README "Limits on shared resources") in real daemons: the config's
errors, what the API,
the CLI, the console and /metrics show of a blocked process, a reload, a SIGKILL while a slot
is held, and on PostgreSQL the limits of a cluster and a takeover.

The steps of tests/wf/limit_flows.py append ``enter|leave KEY PROCESS TIME NODE`` to
``limits.log`` in the daemon's test folder; ``exclusive`` replays it and fails when two steps
were ever inside one key at once (a killed daemon's steps count as gone at the kill).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from support import pg
from support.common import block_until
from support.daemons import DaemonFactory, DaemonProcess

LIMITED = {"workflows": ["limit_flows"], "limits": {"router": 1, "device": 1, "oss": 5}}


def entries(folder: Path) -> list[tuple[str, str, str, float, str]]:
    """``(kind, key, process, time, node)`` of every line of ``limits.log``, by time."""
    path = folder / "limits.log"
    lines = path.read_text().splitlines() if path.exists() else []
    found = []
    for line in lines:
        kind, key, pid, at, node = line.split(" ")
        found.append((kind, key, pid, float(at), node))
    return sorted(found, key=lambda e: e[3])


def entered(folder: Path, pid: str) -> int:
    return sum(1 for kind, _, p, _, _ in entries(folder) if kind == "enter" and p == pid)


def exclusive(folder: Path, killed: dict[str, float] | None = None) -> None:
    """No two steps inside one key at once; a killed node's steps left at its kill."""
    killed = killed or {}
    inside: dict[str, list[tuple[str, str]]] = {}
    for kind, key, pid, at, node in entries(folder):
        holders = inside.setdefault(key, [])
        holders[:] = [(p, n) for p, n in holders if not (n in killed and killed[n] <= at)]
        if kind == "enter":
            assert not holders, f"{pid} entered {key} at {at} while {holders} were inside"
            holders.append((pid, node))
        else:
            holders.remove((pid, node))


def blocked_on(d: DaemonProcess, pid: str) -> dict[str, Any]:
    return dict(block_until(lambda: d.get_process(pid)["blocked_on"], f"{pid} blocked", within=20))


def release(folder: Path, pid: str) -> None:
    """Let the held step of ``pid`` go (tests/wf/runfiles.py)."""
    (folder / f"{pid}.release").touch()


def test_a_limit_a_step_names_must_be_configured_and_well_formed(
    daemon_factory: DaemonFactory,
) -> None:
    d = daemon_factory({**LIMITED, "limits": {"device": 1, "oss": 5}}, start=False)
    expected = (
        f"orchd: {d.config_path}: limits: step 'audit the site' of workflow 'audit_router' uses "
        "'router:{site}', but [limits] sets no 'router' (add e.g. `router = 1` under [limits])"
    )
    checked = d.serve_check()
    assert checked.returncode == 2 and checked.stderr.strip() == expected, checked.stderr
    assert d.run_to_exit() == 2
    assert expected in d.last_run_stderr()
    assert not Path(d.db).exists()

    d.write_config({**LIMITED, "limits": {"router": 1, "device": 1, "oss": {"rate": "fast"}}})
    checked = d.serve_check()
    assert checked.returncode == 2, checked.stderr
    assert checked.stderr.strip() == (
        f"orchd: {d.config_path}: limits.oss.rate: invalid rate 'fast' "
        '(use e.g. "10/s", "600/m" or "100/h")'
    )
    d.write_config({**LIMITED, "limits": {"router": 0, "device": 1, "oss": 5}})
    assert "limits.router: expected int >= 1" in d.serve_check().stderr
    d.write_config(LIMITED)
    ok = d.serve_check()
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stderr


def test_a_blocked_process_shows_in_the_api_the_cli_the_console_and_metrics(
    daemon_factory: DaemonFactory,
) -> None:
    d = daemon_factory(LIMITED)
    holder = d.start_process("configure_router", {"node_name": "r1", "hold": True})
    block_until(lambda: entered(d.test_dir, holder), "the holder inside", within=20)
    waiter = d.start_process("configure_router", {"node_name": "r1"})
    blocked = blocked_on(d, waiter)
    assert (blocked["resource"], blocked["key"]) == ("router", "r1")
    assert d.get_process(waiter)["status"] == "running"
    assert d.get_process(holder)["blocked_on"] is None
    listed = {p["id"]: p["blocked_on"] for p in d.request("GET", "/api/processes")[1]["items"]}
    assert listed[waiter] == blocked and listed[holder] is None

    status, limits = d.request("GET", "/api/resources")
    assert status == 200
    router = next(r for r in limits if r["resource"] == "router")
    assert (router["concurrency"], router["in_use"], router["waiting"]) == (1, 1, 1)
    [key] = router["keys"]
    assert key["key"] == "r1" and key["waiting"] == 1
    assert [(h["process_id"], h["step"]) for h in key["holders"]] == [(holder, "configure")]
    openapi = d.request("GET", "/api/openapi.json")[1]
    assert "get" in openapi["paths"]["/api/resources"]

    table = d.cli("resources")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["LIMIT", "CONCURRENCY", "RATE", "IN", "USE", "WAITING"]
    assert ["router", "1", "-", "1", "1"] in [line.split() for line in lines]
    held = next(line for line in lines if holder in line)
    assert held.split()[:4] == ["router", "r1", holder, "configure"]
    as_json = d.cli("resources", "--json")
    assert json.loads(as_json.stdout) == limits
    shown = d.cli("show", waiter).stdout.splitlines()
    line = next(line for line in shown if line.startswith("blocked on"))
    assert line.split()[:5] == ["blocked", "on:", "router", "r1", "since"]

    metrics = d.request("GET", "/metrics")[1]
    assert 'orchd_resource_in_use{resource="router"} 1' in metrics
    assert 'orchd_resource_waiting{resource="router"} 1' in metrics
    assert 'orchd_resource_in_use{resource="oss"} 0' in metrics

    page = d.request("GET", f"/ui/processes/{waiter}")[1]
    assert "Blocked on" in page and "<code>router:r1</code>" in page
    rows = d.request("GET", "/ui/processes")[1]
    assert "blocked on <code>router:r1</code>" in rows

    release(d.test_dir, holder)
    d.wait_process(holder)
    d.wait_process(waiter)
    assert d.get_process(waiter)["blocked_on"] is None
    exclusive(d.test_dir)
    metrics = d.request("GET", "/metrics")[1]
    assert 'orchd_resource_in_use{resource="router"} 0' in metrics
    assert 'orchd_resource_waiting{resource="router"} 0' in metrics


def test_a_reload_applies_a_changed_limit_and_refuses_to_drop_one_in_use(
    daemon_factory: DaemonFactory,
) -> None:
    d = daemon_factory(LIMITED)
    first = d.start_process("configure_router", {"node_name": "r1", "hold": True})
    block_until(lambda: entered(d.test_dir, first), "the first inside", within=20)
    second = d.start_process("configure_router", {"node_name": "r1", "hold": True})
    blocked_on(d, second)
    d.write_config({**LIMITED, "limits": {"router": 2, "device": 1, "oss": 5}})
    d.send_signal(signal.SIGHUP)
    # Two at once now: the second goes in while the first still holds its slot.
    block_until(lambda: entered(d.test_dir, second), "the second inside", within=20)
    assert entered(d.test_dir, first) == 1 and d.get_process(first)["status"] == "running"

    d.write_config({**LIMITED, "limits": {"device": 1, "oss": 5}})
    d.send_signal(signal.SIGHUP)
    log = d.wait_for_log("reload failed")
    assert "limits: step 'audit the site' of workflow 'audit_router'" in log
    router = next(r for r in d.request("GET", "/api/resources")[1] if r["resource"] == "router")
    assert router["concurrency"] == 2 and router["in_use"] == 2
    release(d.test_dir, first)
    release(d.test_dir, second)
    d.wait_process(first)
    d.wait_process(second)


def test_after_a_sigkill_while_a_slot_is_held_the_restart_holds_nothing_of_it(
    daemon_factory: DaemonFactory,
) -> None:
    d = daemon_factory({**LIMITED, "grace_period": "1s"})
    holder = d.start_process("configure_router", {"node_name": "r1", "hold": True})
    block_until(lambda: entered(d.test_dir, holder), "the holder inside", within=20)
    waiter = d.start_process("configure_router", {"node_name": "r1"})
    blocked_on(d, waiter)
    assert d.proc is not None
    node = str(d.proc.pid)  # what its steps logged as their node
    d.kill()
    killed = time.time()
    d.start()
    # The holder's step runs again (at least once per step), holding r1 anew; the waiter
    # still waits behind it, and nothing of the killed daemon holds anything.
    block_until(lambda: entered(d.test_dir, holder) == 2, "the holder's step run again", within=20)
    assert blocked_on(d, waiter)["key"] == "r1"
    router = next(r for r in d.request("GET", "/api/resources")[1] if r["resource"] == "router")
    assert [h["process_id"] for h in router["keys"][0]["holders"]] == [holder]
    assert router["in_use"] == 1 and router["waiting"] == 1
    release(d.test_dir, holder)
    d.wait_process(holder)
    d.wait_process(waiter)
    assert entered(d.test_dir, waiter) == 1
    exclusive(d.test_dir, {node: killed})
    router = next(r for r in d.request("GET", "/api/resources")[1] if r["resource"] == "router")
    assert router["in_use"] == 0 and router["keys"] == []


# -- several daemons on one PostgreSQL database ---------------------------------------------


@pytest.fixture
def nodes(daemon_factory: DaemonFactory, pg_server: pg.PgServer, tmp_path: Path) -> Any:
    """``nodes(n)``: n daemons (nodes a, b, ...) on one fresh database, logging their steps'
    entries into one folder."""
    url = pg.fresh_schema(pg_server)
    runs = tmp_path / "runs"
    runs.mkdir()

    def make(n: int) -> list[DaemonProcess]:
        made = []
        for name in "abcdefgh"[:n]:
            config = {**LIMITED, "database": url, "node_id": name, "lease_timeout": "2s"}
            env = {"ORCHD_TEST_DIR": str(runs), "ORCHD_TEST_NODE": name}
            made.append(daemon_factory(config, name=name, env=env))
        return made

    make.runs = runs  # type: ignore[attr-defined]
    return make


def test_a_cluster_holds_its_limits_together_and_frees_a_dead_nodes_slots(nodes: Any) -> None:
    a, b = nodes(2)
    runs: Path = nodes.runs
    # One change at a time per router, whichever node runs it.
    pids = [
        (a, b)[i % 2].start_process("configure_router", {"node_name": "r1", "pause": 0.05})
        for i in range(10)
    ]
    for pid in pids:
        b.wait_process(pid, timeout=30)
    exclusive(runs)

    holder = a.start_process("configure_router", {"node_name": "r2", "hold": True})
    block_until(lambda: entered(runs, holder), "the holder inside", within=20)
    waiter = b.start_process("configure_router", {"node_name": "r2"})
    assert blocked_on(b, waiter)["key"] == "r2"
    assert blocked_on(a, waiter)["key"] == "r2"  # any node tells
    router = next(r for r in b.request("GET", "/api/resources")[1] if r["resource"] == "router")
    [key] = router["keys"]
    assert [(h["process_id"], h["node"]) for h in key["holders"]] == [(holder, "a")]
    assert key["waiting"] == 1

    a.kill()
    killed = time.time()
    # a's slot goes with its lease: the waiter (first in line) goes in, then the holder's
    # step, taken over by b, runs again and holds r2 anew.
    b.wait_process(waiter, timeout=30)
    block_until(lambda: entered(runs, holder) == 2, "the holder's step run again on b", within=20)
    exclusive(runs, {"a": killed})
    second = [e for e in entries(runs) if e[2] == holder and e[0] == "enter"][1]
    assert second[4] == "b"
    release(runs, holder)
    b.wait_process(holder, timeout=30)
    router = next(r for r in b.request("GET", "/api/resources")[1] if r["resource"] == "router")
    assert router["in_use"] == 0 and router["keys"] == []
    # The table empties too (a release is written a moment after the commit that frees it).
    url = str(b.config["database"])
    block_until(
        lambda: pg.query(url, "SELECT count(*) FROM resource_slots")[0][0] == 0,
        "the table of slots empty",
        within=20,
    )
