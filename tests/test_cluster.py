"""Several daemons on one PostgreSQL database (README "Scaling out"), as real subprocesses.

Each daemon is a node with its own socket; they share the database (a schema of this test run's
database) and the folder where the steps of tests/wf/cluster_flows.py log their runs.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support import pg
from support.common import block_until
from support.daemons import DaemonFactory, DaemonProcess

LEASE = 2.0


@pytest.fixture
def cluster(daemon_factory: DaemonFactory, pg_server: pg.PgServer, tmp_path: Path) -> Any:
    """``cluster(n, **config)``: n daemons (nodes a, b, c, ...) on one fresh database."""
    url = pg.fresh_schema(pg_server)
    runs = tmp_path / "runs"
    runs.mkdir()

    def make(n: int, raw_config: str | None = None, **config: Any) -> list[DaemonProcess]:
        nodes = []
        for i in range(n):
            name = "abcdefgh"[i]
            settings = {
                "database": url,
                "workflows": ["cluster_flows"],
                "node_id": name,
                "lease_timeout": f"{LEASE:g}s",
                "log_level": "info",
                **config,
            }
            nodes.append(
                daemon_factory(
                    settings, name=name, env={"ORCHD_TEST_DIR": str(runs)}, raw_config=raw_config
                )
            )
        return nodes

    make.url = url  # type: ignore[attr-defined]
    make.runs = runs  # type: ignore[attr-defined]
    return make


def step_runs(runs: Path) -> list[tuple[str, str, int]]:
    """Every logged step run: (process id, step, daemon pid)."""
    found = []
    for log in runs.glob("runs-*.log"):
        for line in log.read_text().splitlines():
            pid, step, daemon = line.rsplit(" ", 2)
            found.append((pid, step, int(daemon)))
    return found


def stamps(runs: Path) -> list[tuple[str, str, int, float]]:
    """Every stamped step run: (process id, step, daemon pid, time it began)."""
    found = []
    for log in runs.glob("times-*.log"):
        for line in log.read_text().splitlines():
            pid, step, daemon, at = line.split(" ")
            found.append((pid, step, int(daemon), float(at)))
    return found


def test_every_node_answers_for_every_process_and_names_the_live_nodes(cluster: Any) -> None:
    a, b = cluster(2)
    health = b.request("GET", "/api/health")[1]
    assert health["node"] == "b"
    assert [n["node_id"] for n in health["nodes"]] == ["a", "b"]
    on_b = b.events()  # b's stream shows what a runs, in id order
    try:
        check_requests(a, b, cluster.runs, on_b)
    finally:
        on_b.close()


def check_requests(a: DaemonProcess, b: DaemonProcess, runs: Path, on_b: Any) -> None:

    # Started on a, answered on b: a form, then a callback, each posted to the other node.
    asked = a.start_process("cluster_ask")
    a.wait_process(asked, ("suspended",))
    status, body = b.request("POST", f"/api/processes/{asked}/resume", {"approved": True})
    assert status == 202, body
    done = b.wait_process(asked)
    assert done["state"]["verdict"] is True
    status, problem = b.request("POST", f"/api/processes/{asked}/resume", {"approved": True})
    assert status == 409, problem  # refused by the owner, and said so through b

    waiting = a.start_process("cluster_callback")
    a.wait_process(waiting, ("awaiting_callback",))
    token = (runs / f"{waiting}.token").read_text()
    status, body = b.request("POST", f"/api/callbacks/{token}", {"ok": True})
    assert status == 202, body
    finished = a.wait_process(waiting)
    assert finished["state"]["answered"] is True
    assert b.request("POST", f"/api/callbacks/{token}", {"ok": True})[0] == 404  # used

    # A form answer that fails validation is refused through the other node as 422.
    again = b.start_process("cluster_ask")
    b.wait_process(again, ("suspended",))
    status, problem = a.request("POST", f"/api/processes/{again}/resume", {"approved": "x"})
    assert status == 422 and problem["errors"], problem

    seen = on_b.until(asked, "completed")
    data = [e.json() for e in seen]
    assert [d["step"] for d in data if d["process_id"] == asked and d["step"]] == [
        "init",
        "approve",  # suspended
        "approve",  # answered through b
        "after approval",
        "done",
    ]
    ids = [int(e.id) for e in seen if e.id is not None]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    metrics = a.request("GET", "/metrics")[1]
    assert "orchd_forwarded_requests_total" in metrics and "orchd_takeovers_total" in metrics


def takeovers(*nodes: DaemonProcess) -> float:
    """Processes the nodes took over from others (their ``orchd_takeovers_total``)."""
    return sum(
        float(line.split()[-1])
        for node in nodes
        for line in node.request("GET", "/metrics")[1].splitlines()
        if line.startswith("orchd_takeovers_total")
    )


def test_the_survivors_finish_a_killed_nodes_processes_once(cluster: Any) -> None:
    # A lease longer than the others': a live node that a busy machine stalls for longer than
    # its lease loses its processes to another node, and each of its in-flight steps runs
    # twice on the survivors (2 s was not enough beside the rest of the suite).
    lease = 6.0
    nodes = cluster(3, lease_timeout=f"{lease:g}s")
    a, b, c = nodes
    pids = []
    # Every process holds in its first step until the file ``go`` exists, however long the
    # 1,000 starts take: none can finish before b dies.
    go = cluster.runs / "go"
    for i in range(1000):
        pids.append(nodes[i % 3].start_process("cluster_steady", {"pause": 1.0, "hold": str(go)}))
    # b dies with its share of the processes in flight.
    owned = pg.query(
        cluster.url,
        "SELECT count(*) FROM processes WHERE owner = 'b' AND status IN ('created', 'running')",
    )[0][0]
    assert owned > 250, owned
    # ... and no live node lost its lease to another meanwhile.
    assert takeovers(*nodes) == 0, "a live node's processes were taken over before the kill"
    b.kill()
    killed_at = time.monotonic()
    b_pid = b.proc.pid if b.proc is not None else -1
    go.touch()

    deadline = killed_at + 120
    taken_at = None
    while True:
        rows = pg.query(
            cluster.url,
            "SELECT count(*) FILTER (WHERE status = 'completed'), "
            "count(*) FILTER (WHERE owner = 'b' AND status IN ('created', 'running')) "
            "FROM processes",
        )
        completed, left_on_b = rows[0]
        if taken_at is None and left_on_b == 0:
            taken_at = time.monotonic()
        if completed == len(pids):
            break
        assert time.monotonic() < deadline, f"{completed} of {len(pids)} completed"
        time.sleep(0.2)
    assert taken_at is not None and taken_at - killed_at <= lease + 5, taken_at - killed_at
    print(f"takeover of {owned} processes {taken_at - killed_at:.2f} s after the kill")

    # Each step recorded once per process, in order.
    records = pg.query(
        cluster.url,
        "SELECT p.id, s.name, s.status FROM steps s JOIN processes p ON p.rowid = s.process "
        "ORDER BY p.id, s.seq",
    )
    by_process: dict[str, list[str]] = {}
    for pid, name, status in records:
        assert status == "success", (pid, name, status)
        by_process.setdefault(pid, []).append(name)
    assert set(by_process) == set(pids)
    assert all(names == ["init", "c1", "c2", "c3", "done"] for names in by_process.values())

    # A step ran again only when its first run was on the killed node (uncommitted there).
    runs = step_runs(cluster.runs)
    counts = Counter((pid, step) for pid, step, _ in runs)
    survivors = Counter((pid, step) for pid, step, daemon in runs if daemon != b_pid)
    assert all(n == 1 for n in survivors.values()), [k for k, n in survivors.items() if n > 1]
    again = [key for key, n in counts.items() if n > 1]
    assert all(counts[key] == 2 for key in again)
    assert len(again) <= owned  # at most the one in-flight step of each process b had
    health = a.request("GET", "/api/health")[1]
    assert [n["node_id"] for n in health["nodes"]] == ["a", "c"]
    assert takeovers(a, c) >= 1


def test_a_schedule_fire_time_runs_once_in_the_cluster(cluster: Any) -> None:
    schedule = '[[schedules]]\nworkflow = "cluster_tick"\nevery = "1s"\n'
    nodes = cluster(3, raw_config=schedule)

    def started_by_the_schedule() -> int:
        query = "SELECT count(*) FROM processes WHERE reporter = 'scheduler:cluster_tick'"
        return int(pg.query(cluster.url, query)[0][0])

    # Five fire times, however long a busy machine takes for them (one a second).
    block_until(lambda: started_by_the_schedule() >= 5, "five scheduled starts", within=60)
    for node in nodes:
        assert node.stop(signal.SIGTERM) == 0
    fired = pg.query(
        cluster.url,
        "SELECT extract(epoch FROM fire_at)::float8, process_id FROM schedule_runs "
        "WHERE name = 'cluster_tick'",
    )
    started = pg.query(
        cluster.url, "SELECT id FROM processes WHERE reporter = 'scheduler:cluster_tick'"
    )
    fire_times = [f for f, _ in fired]
    assert len(fire_times) == len(set(fire_times))
    # One a second, not three: at most one start for each second between the first fire
    # time and the last (however long the nodes took to start and stop on a busy machine).
    span = max(fire_times) - min(fire_times)
    assert 3 <= len(started) <= span + 1, (len(started), span)
    assert {p for _, p in fired if p is not None} == {row[0] for row in started}


def test_a_fan_out_goes_on_when_the_parents_node_dies(cluster: Any) -> None:
    a, b, c = cluster(3)
    parent = a.start_process("cluster_fan_out", {"inputs": [{"pause": 0.5}] * 16})

    def children_done() -> int:
        query = "SELECT count(*) FROM processes WHERE parent_id = $1 AND status = 'completed'"
        return int(pg.query(cluster.url, query, parent)[0][0])

    # Some children done, some running, some held: then a dies.
    block_until(lambda: children_done() >= 4, "four children completed", within=30)
    a.kill()
    finished = b.wait_process(parent, ("completed",), timeout=LEASE + 30)
    assert finished["state"]["finished"] == 16
    kids = pg.query(cluster.url, "SELECT id, status FROM processes WHERE parent_id = $1", parent)
    assert len(kids) == 16 and all(status == "completed" for _, status in kids)
    doubled = pg.query(
        cluster.url,
        "SELECT s.process, s.name, count(*) FROM steps s GROUP BY s.process, s.name "
        "HAVING count(*) > 1",
    )
    assert doubled == []


def test_a_fork_goes_on_branch_by_branch_when_its_node_dies(cluster: Any) -> None:
    # A longer lease, as the survivors' test has: a busy machine that stalls a live node past
    # its lease makes b take the fork over before the kill (checked below, not assumed).
    lease = 6.0
    a, b = cluster(2, lease_timeout=f"{lease:g}s")
    pid = a.start_process("cluster_foreach", {"ports": list(range(12))})
    block_until(
        lambda: (
            sum(step.startswith("port-") for p, step, _ in step_runs(cluster.runs) if p == pid) >= 6
        ),
        "six ports run",
        within=30,
    )
    assert takeovers(a, b) == 0, "b took the fork over before a was killed"
    a_pid = a.proc.pid if a.proc is not None else -1
    a.kill()
    process = b.wait_process(pid, ("completed",), timeout=lease + 30)
    assert [r["port"] for r in process["state"]["done_ports"]] == list(range(12))
    records = Counter(s["branch"] for s in process["steps"] if s["name"] == "port")
    assert len(records) == 12 and set(records.values()) == {1}  # no record twice
    runs = [(step, daemon) for p, step, daemon in step_runs(cluster.runs) if p == pid]
    counts = Counter(step for step, _ in runs)
    # b ran each port once; a port ran twice only when its first run was a's, in flight when
    # a died: at most the four the fork runs at once.
    assert all(n == 1 for n in Counter(step for step, d in runs if d != a_pid).values())
    again = [step for step, n in counts.items() if n > 1]
    assert all(counts[step] == 2 and (step, a_pid) in runs for step in again), runs
    assert len(again) <= 4, again
    assert [s["name"] for s in process["steps"]].count("Ports") == 1


def test_a_branch_callback_posted_to_another_node_reaches_its_branch(cluster: Any) -> None:
    a, b = cluster(2)
    pid = a.start_process("cluster_branch_callback", {})
    a.wait_process(pid, ("awaiting_callback",), timeout=30)
    status, _ = b.request("POST", f"/api/processes/{pid}/callback", {"circuit": "C-7"})
    assert status == 202
    process = a.wait_process(pid, ("completed",), timeout=30)
    assert process["state"]["circuit"] == "C-7"
    assert [x["action"] for x in process["actions"]] == ["start", "callback"]


def test_a_node_whose_loop_is_blocked_past_its_lease_starts_nothing_more(cluster: Any) -> None:
    # Twice the others' lease: a busy machine that stalls a live node past its lease before
    # the block makes b take processes over early (checked below, not assumed).
    lease = 2 * LEASE
    a, b = cluster(2, lease_timeout=f"{lease:g}s")
    runs: Path = cluster.runs
    go, block = runs / "go", runs / "block"
    blocker = a.start_process("cluster_block", {"seconds": 3 * lease, "when": str(block)})
    pids = [a.start_process("cluster_churn", {"hold": str(go), "pause": 0.01}) for _ in range(150)]
    go.touch()
    # While a's processes are in full swing (steps running, commits on their way), an async
    # step blocks a's event loop for three leases.
    block_until(
        lambda: sum(step == "k3" for _, step, _ in step_runs(runs)) >= 20, "steps under way", 30
    )
    assert takeovers(a, b) == 0, "b took processes over before a's loop was blocked"
    block.touch()
    a_pid = a.proc.pid if a.proc is not None else -1
    b_pid = b.proc.pid if b.proc is not None else -1

    def completed() -> bool:
        rows = pg.query(cluster.url, "SELECT count(*) FROM processes WHERE status = 'completed'")
        return bool(rows[0][0] == len(pids) + 1)

    block_until(completed, "every process completed", 90)
    # a knew it lost its lease, dropped what it ran and rejoined as a new incarnation.
    a.wait_for_log("lost its lease", timeout=30)
    a.wait_for_log("rejoined as a new incarnation", timeout=30)
    assert takeovers(b) >= 1
    times = stamps(runs)
    blocked = [at for pid, step, _, at in times if pid == blocker and step == "blocked"]
    woke = [at for pid, step, _, at in times if pid == blocker and step == "unblocked"]
    assert len(blocked) == 1 and len(woke) == 1
    # Once its loop woke up, a started nothing of the processes b had taken over (it goes on
    # only with those that stayed its own: their rows were locked by its open commit).
    on_b = {pid for pid, _, daemon, _ in times if daemon == b_pid}
    late = [
        (pid, step)
        for pid, step, daemon, at in times
        if daemon == a_pid and at > woke[0] and pid in on_b
    ]
    assert late == [], late
    # No step started twice except the one each process was running when a's loop blocked:
    # first on a before the block, then on b, which took the process over.
    runs_of = Counter((pid, step) for pid, step, _, _ in times if step.startswith("k"))
    twice = {key for key, n in runs_of.items() if n > 1}
    assert all(runs_of[key] == 2 for key in twice)
    assert len({pid for pid, _ in twice}) == len(twice)  # at most one step of each process
    for pid, step, daemon, at in times:
        if (pid, step) in twice:
            assert (daemon, at < blocked[0]) in ((a_pid, True), (b_pid, False)), (pid, step)
    # The stale node committed nothing: each step that ran twice holds b's result, and no
    # step record was written twice.
    for pid, step in twice:
        assert b.get_process(pid)["state"][step] == b_pid, (pid, step)
    doubled = pg.query(
        cluster.url,
        "SELECT s.process, s.name, count(*) FROM steps s GROUP BY s.process, s.name "
        "HAVING count(*) > 1",
    )
    assert doubled == []
    health = a.request("GET", "/api/health")[1]
    assert health["status"] == "ok" and [n["node_id"] for n in health["nodes"]] == ["a", "b"]


def test_a_stale_daemon_with_the_same_node_id_commits_nothing(
    cluster: Any, daemon_factory: DaemonFactory
) -> None:
    (a,) = cluster(1)
    runs: Path = cluster.runs
    go = runs / "go"
    pids = [a.start_process("cluster_steady", {"pause": 0, "hold": str(go)}) for _ in range(20)]
    block_until(
        lambda: sum(step == "c1" for _, step, _ in step_runs(runs)) == len(pids), "c1 started"
    )
    # a freezes with its steps in flight (a long pause of the whole process); its lease
    # lapses and a new daemon is started with the same node_id: a new incarnation of node a.
    a.send_signal(signal.SIGSTOP)
    try:
        again = daemon_factory(
            {
                "database": cluster.url,
                "workflows": ["cluster_flows"],
                "node_id": "a",
                "lease_timeout": f"{LEASE:g}s",
                "log_level": "info",
            },
            name="a-again",
            env={"ORCHD_TEST_DIR": str(runs)},
        )
        block_until(
            lambda: sum(step == "c1" for _, step, _ in step_runs(runs)) == 2 * len(pids),
            "c1 started again on the new daemon",
            30,
        )
        go.touch()  # both hold their c1 until now
    finally:
        a.send_signal(signal.SIGCONT)
    a_pid = a.proc.pid if a.proc is not None else -1
    again_pid = again.proc.pid if again.proc is not None else -1
    for pid in pids:
        done = again.wait_process(pid, timeout=30)
        # The new incarnation's results: the stale one's c1 finished too, and was refused.
        assert [done["state"][c] for c in ("c1", "c2", "c3")] == [again_pid] * 3, pid
        assert [s["name"] for s in done["steps"]] == ["init", "c1", "c2", "c3", "done"]
    # The stale daemon knows: it lost its lease to the other and starts nothing more.
    a.wait_for_log("another daemon with the same node_id holds the lease", timeout=30)
    assert {step for _, step, daemon in step_runs(runs) if daemon == a_pid} == {"c1"}
    status, health = a.request("GET", "/api/health")
    assert status == 503 and "LeaseLost" in health["database"], health
    assert [n["node_id"] for n in again.request("GET", "/api/health")[1]["nodes"]] == ["a"]
