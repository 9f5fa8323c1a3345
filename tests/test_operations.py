"""Operating it for years (README "The HTTP API"), against real daemons: idempotent starts,
retention, durable events, id prefixes."""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.common import DatabaseFactory
from support.daemons import DaemonFactory, DaemonProcess, UnixHTTPConnection

from orchd import Engine
from orchd.errors import AmbiguousId, ProcessNotFound
from orchd.store.base import NewProcess

KEEP_TASKS = {"workflows": ["e2e_flows"]}
SCHEDULE = '[[schedules]]\nworkflow = "e2e_tick"\nevery = "1h"\n'


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> Iterator[DaemonProcess]:
    yield daemon_factory(KEEP_TASKS)


def start(d: DaemonProcess, workflow: str, body: Any = None, key: str | None = None) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    return d.request("POST", f"/api/processes/{workflow}", body or {}, headers=headers)


def finished(d: DaemonProcess, workflow: str = "e2e_hello", body: Any = None) -> str:
    pid = d.start_process(workflow, body)
    d.wait_process(pid, ("completed",))
    return pid


# -- idempotent start ---------------------------------------------------------------------


def test_a_second_start_with_a_key_answers_200_with_the_first_id(daemon: DaemonProcess) -> None:
    first = start(daemon, "e2e_hello", key="order-17")
    again = start(daemon, "e2e_hello", key="order-17")
    assert first[0] == 201 and again == (200, first[1])
    assert start(daemon, "e2e_hello", key="order-18")[0] == 201


def test_a_key_used_by_another_workflow_is_409(daemon: DaemonProcess) -> None:
    status, answer = start(daemon, "e2e_hello", key="k-1")
    assert status == 201
    status, problem = start(daemon, "e2e_tick", key="k-1")
    assert status == 409 and answer["id"] in problem["detail"], problem


def test_concurrent_starts_with_one_key_make_one_process(daemon: DaemonProcess) -> None:
    answers: list[Any] = []

    def one() -> None:
        answers.append(start(daemon, "e2e_hello", key="same"))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(status for status, _ in answers) == [200] * 11 + [201]
    assert len({answer["id"] for _, answer in answers}) == 1
    _, page = daemon.request("GET", "/api/processes?workflow=e2e_hello")
    assert len(page["items"]) == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 201, "caf\u00e9"])
def test_a_malformed_idempotency_key_is_400_and_starts_nothing(
    daemon: DaemonProcess, key: str
) -> None:
    conn = UnixHTTPConnection(daemon.socket)
    conn.putrequest("POST", "/api/processes/e2e_hello")
    conn.putheader("Idempotency-Key", key.encode("utf-8"))
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", "2")
    conn.endheaders(b"{}")
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 400 and "Idempotency-Key" in body["detail"], body
    _, page = daemon.request("GET", "/api/processes")
    assert page["items"] == []


async def test_engine_start_with_a_key_returns_the_same_id(
    database_factory: DatabaseFactory,
) -> None:
    async with Engine(database=await database_factory("e.db"), workflows=["e2e_flows"]) as engine:
        first = await engine.start("e2e_hello", idempotency_key="once")
        assert await engine.start("e2e_hello", idempotency_key="once") == first
        await engine.wait(first)


# -- retention ------------------------------------------------------------------------------


#: The retention of the tests below; a process is made older than it by ``age``.
RETAIN = "1h"


def age(d: DaemonProcess, *pids: str, seconds: float = 7200.0) -> None:
    """Make finished processes older than they are, as time would: their last change moves
    back by ``seconds`` in the daemon's (SQLite) database. Waiting past a retention of a
    second instead made the test depend on how soon the next lines ran."""
    conn = sqlite3.connect(d.db, timeout=10)
    try:
        with conn:
            for pid in pids:
                changed = conn.execute(
                    "UPDATE processes SET updated_at = updated_at - ? WHERE id = ?", (seconds, pid)
                ).rowcount
                assert changed == 1, pid
    finally:
        conn.close()


def prune(d: DaemonProcess, dry_run: bool = False) -> dict[str, Any]:
    status, answer = d.request("POST", "/api/gc", {"dry_run": dry_run})
    assert status == 200, answer
    return dict(answer)


def test_gc_deletes_finished_tasks_older_than_the_retention(
    daemon_factory: DaemonFactory,
) -> None:
    d = daemon_factory({**KEEP_TASKS, "retention": {"tasks": RETAIN}})
    old = finished(d)
    age(d, old)
    young = finished(d)
    assert prune(d, dry_run=True) == {"dry_run": True, "processes": 1, "steps": 3, "actions": 1}
    assert d.request("GET", f"/api/processes/{old}")[0] == 200  # a dry run deletes nothing
    assert prune(d) == {"dry_run": False, "processes": 1, "steps": 3, "actions": 1}
    assert d.request("GET", f"/api/processes/{old}")[0] == 404
    assert d.request("GET", f"/api/processes/{young}")[0] == 200
    metrics = d.request("GET", "/metrics")[1]
    assert "orchd_pruned_processes_total 1" in metrics
    assert "orchd_pruned_steps_total 3" in metrics
    d.wait_for_log("pruned processes=1 steps=3 actions=1")


def test_gc_keeps_subscriptions_and_drops_their_links(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory({**KEEP_TASKS, "retention": {"workflows": RETAIN}})
    pid = finished(d, "e2e_create", {"name": "w", "customer_id": "c"})
    sid = d.get_process(pid)["state"]["subscription_id"]
    age(d, pid)
    assert prune(d)["processes"] == 1
    status, sub = d.request("GET", f"/api/subscriptions/{sid}")
    assert status == 200 and sub["processes"] == [], sub


def test_unfinished_and_kept_processes_are_not_pruned(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory({**KEEP_TASKS, "retention": {"tasks": "0", "workflows": RETAIN}})
    task = finished(d)
    failed = d.start_process("e2e_fail")
    d.wait_process(failed, ("failed",))
    age(d, task, failed)
    assert prune(d)["processes"] == 0
    assert d.request("GET", f"/api/processes/{task}")[0] == 200


def test_the_daemon_prunes_when_it_starts(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory({**KEEP_TASKS, "retention": {"tasks": RETAIN}})
    old = finished(d)
    age(d, old)
    d.restart()
    d.wait_for_log("pruned processes=1")
    assert d.request("GET", f"/api/processes/{old}")[0] == 404


def test_a_key_is_free_again_once_its_process_is_pruned(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory({**KEEP_TASKS, "retention": {"tasks": RETAIN}})
    status, first = start(d, "e2e_hello", key="nightly")
    d.wait_process(first["id"], ("completed",))
    age(d, first["id"])
    prune(d)
    assert start(d, "e2e_hello", key="nightly")[0] == 201


# -- durable events -------------------------------------------------------------------------


def test_last_event_id_resumes_across_a_restart(daemon: DaemonProcess) -> None:
    stream = daemon.events()
    first = daemon.start_process("e2e_hello")
    last = stream.until(first, "completed")[-1].id
    stream.close()
    assert last is not None
    daemon.restart()
    second = daemon.start_process("e2e_hello")
    daemon.wait_process(second, ("completed",))
    resumed = daemon.events(last_event_id=last)
    got = resumed.until(second, "completed")
    resumed.close()
    assert got[0].event != "reset"
    assert {e.json()["process_id"] for e in got} == {second}
    ids = [int(e.id or 0) for e in got]
    assert ids == sorted(ids) and ids[0] == int(last) + 1
    kinds = [(e.json()["kind"], e.json().get("step")) for e in got]
    assert kinds[0] == ("process", None) and ("step", "greet") in kinds


def test_a_client_behind_what_is_kept_gets_one_reset(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory({**KEEP_TASKS, "retention": {"events": 10}})
    stream = d.events()
    first = d.start_process("e2e_hello")
    old = stream.until(first, "completed")[0].id
    stream.close()
    for _ in range(4):  # about 24 events: the first ones are no longer kept
        finished(d)
    d.restart()
    resumed = d.events(last_event_id=old)
    reset = resumed.next()
    assert reset.event == "reset" and reset.json()["reload"] is True, reset
    # Then it follows from what the reset's id says, as a reloaded client would.
    last = d.start_process("e2e_hello")
    got = resumed.until(last, "completed")
    resumed.close()
    assert [e.event for e in got].count("reset") == 0
    assert int(got[0].id or 0) == int(reset.id or 0) + 1


def test_an_id_this_database_never_gave_gets_a_reset(daemon: DaemonProcess) -> None:
    finished(daemon)
    stream = daemon.events(last_event_id="1764000000000000000")
    first = stream.next()
    stream.close()
    assert first.event == "reset" and "unknown" in first.json()["reason"]


async def test_listen_replays_stored_events_after_an_id(database_factory: DatabaseFactory) -> None:
    path = await database_factory("e.db")
    async with Engine(database=path, workflows=["e2e_flows"]) as engine:
        after = engine.last_event_id
        pid = await engine.start("e2e_hello")
        await engine.wait(pid)
    async with Engine(database=path, workflows=["e2e_flows"]) as engine:
        seen = []
        async for event in engine.listen(after):
            seen.append((event.kind, event.status))
            if event.kind == "process" and event.status == "completed":
                break
    assert seen[0] == ("process", "created") and seen[-1] == ("process", "completed")


# -- id prefixes ----------------------------------------------------------------------------


def test_a_unique_prefix_of_eight_characters_names_a_process(daemon: DaemonProcess) -> None:
    pid = finished(daemon)
    status, process = daemon.request("GET", f"/api/processes/{pid[:8]}")
    assert status == 200 and process["id"] == pid
    assert daemon.request("GET", f"/api/processes/{pid[:7]}")[0] == 404
    status, _ = daemon.request("POST", f"/api/processes/{pid[:10]}/abort")
    assert status == 409  # found, and completed


async def test_an_ambiguous_prefix_is_refused(database_factory: DatabaseFactory) -> None:
    async with Engine(database=await database_factory("e.db"), workflows=["e2e_flows"]) as engine:
        for pid in ("abcdef12-0000-4000-8000-000000000001", "abcdef12-0000-4000-8000-100000000002"):
            # Two ids with one prefix, as random ids rarely have them.
            await engine.store.write(
                NewProcess(
                    id=pid,
                    workflow="e2e_fail",
                    target="SYSTEM",
                    reporter=None,
                    state={},
                    first_step="init",
                    first_key="init",
                    created_at=time.time(),
                    by="test",
                )
            )
        with pytest.raises(AmbiguousId):
            await engine.get("abcdef12")
        assert (await engine.get("abcdef12-0000-4000-8000-1")).id.endswith("2")
        with pytest.raises(ProcessNotFound):
            await engine.get("abcdef13")


# -- the CLI --------------------------------------------------------------------------------


def test_start_with_a_key_prints_the_same_id_twice(daemon: DaemonProcess) -> None:
    first = daemon.cli("start", "e2e_hello", "--key", "run-1")
    again = daemon.cli("start", "e2e_hello", "--key", "run-1")
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert first.stdout == again.stdout and len(first.stdout.strip()) == 36
    other = daemon.cli("start", "e2e_tick", "--key", "run-1")
    assert other.returncode == 1 and "run-1" in other.stderr


def test_gc_dry_run_counts_and_gc_deletes(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory({**KEEP_TASKS, "retention": {"tasks": RETAIN}})
    age(d, finished(d))
    dry = d.cli("gc", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.startswith("would delete 1 processes"), dry
    done = d.cli("gc", "--json")
    assert json.loads(done.stdout)["processes"] == 1
    assert d.cli("gc").stdout.startswith("deleted 0 processes")


def test_show_takes_a_prefix_and_prints_the_state(daemon: DaemonProcess) -> None:
    pid = finished(daemon)
    shown = daemon.cli("show", pid[:8], "--state")
    assert shown.returncode == 0, shown.stderr
    state = json.loads(shown.stdout)
    assert state["process_id"] == pid and state["workflow_name"] == "e2e_hello"
    assert daemon.cli("show", pid[:7]).returncode == 1


def test_the_reporter_option_labels_the_action(daemon: DaemonProcess) -> None:
    started = daemon.cli("--reporter", "nightly-job", "start", "e2e_hello")
    pid = started.stdout.strip()
    process = daemon.wait_process(pid, ("completed",))
    assert process["actions"][0]["actor"] == f"uid:{os.getuid()} (nightly-job)"


def test_schedules_show_a_trigger_column(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(KEEP_TASKS, raw_config=SCHEDULE)
    out = d.cli("schedules").stdout
    assert out.split()[:3] == ["NAME", "WORKFLOW", "TRIGGER"] and "every 1h" in out


def test_serve_check_validates_without_starting(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(KEEP_TASKS, start=False)
    ok = subprocess.run(
        [sys.executable, "-m", "orchd", "serve", "--check", "--config", str(d.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=d.environment(),
    )
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stderr
    assert not Path(d.db).exists() and not Path(d.socket).exists()
    d.write_config({"workflows": ["no_such_module_here"]})
    bad = subprocess.run(
        [sys.executable, "-m", "orchd", "serve", "--check", "--config", str(d.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=d.environment(),
    )
    assert bad.returncode == 2 and "workflows[0]" in bad.stderr, bad.stderr
    assert not Path(d.db).exists()


def test_events_follow_across_a_daemon_restart(daemon: DaemonProcess) -> None:
    follower = subprocess.Popen(
        [sys.executable, "-m", "orchd", "--socket", daemon.socket, "events", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    got: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [got.put(x) for x in follower.stdout or ()])
    reader.start()
    try:
        assert follower.stderr is not None
        assert "following" in follower.stderr.readline()  # subscribed: nothing is missed
        first = daemon.start_process("e2e_hello")
        lines = _lines_until(got, first)
        daemon.stop()
        daemon.start()
        second = daemon.start_process("e2e_hello")
        lines += _lines_until(got, second)
    finally:
        follower.terminate()
        _, err = follower.communicate(timeout=10)
        reader.join(timeout=10)
    ids = [line["id"] for line in lines]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {line["process_id"] for line in lines} == {first, second}
    assert "resuming after event" in err, err


def _lines_until(lines: queue.Queue[str], pid: str) -> list[dict[str, Any]]:
    got = []
    while True:
        event = json.loads(lines.get(timeout=15))
        got.append(event)
        if event.get("process_id") == pid and event["kind"] == "process":
            if event["status"] == "completed":
                return got
