"""Step identity (README "Changing workflows safely"): a process continues at its step's key in
whatever code is
loaded; only a missing key strands it; ``check --workflows`` says which would be; skip."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.common import Open
from support.daemons import WF_DIR

from orchd import Engine
from orchd.dsl import Positions, Step
from orchd.errors import FormValidationError, InvalidTransition
from orchd.store.sqlite.schema import MIGRATIONS


def names(process: Any) -> list[str]:
    return [s.name for s in process.steps]


async def suspended_at_approve(engine: Engine, workflow: str = "provision", **given: Any) -> str:
    pid = await engine.start(workflow, given)
    assert (await engine.wait(pid, timeout=10)).status == "suspended"
    return pid


# -- positions ------------------------------------------------------------------------------


def test_a_position_is_a_key_and_its_occurrence() -> None:
    steps = [Step(name=n, func=None) for n in ("a", "bump", "b", "bump", "bump")]
    positions = Positions(steps)
    assert positions.at(4) == ("bump", 2)
    assert positions.index("bump", 2) == 4 and positions.index("bump", 3) is None
    assert positions.index("b") == 2 and positions.index("c") is None


def test_a_step_key_defaults_to_its_name_and_can_be_set() -> None:
    from ident_common import approve, approve_renamed, check

    assert check.key == "check"
    assert approve.key == approve_renamed.key == "approve" != approve_renamed.name


# -- continuing after a code change -----------------------------------------------------------


async def test_steps_added_removed_and_moved_around_the_position_do_not_matter(
    open_engine: Open,
) -> None:
    pid = await suspended_at_approve(await open_engine("ident_v1"))
    engine = await open_engine("ident_v2")
    await engine.resume(pid, {"ok": True})
    process = await engine.wait(pid, timeout=10)
    assert process.status == "completed", process.error
    assert names(process) == [
        "init", "prepare", "check", "approve", "approve", "extra", "report", "apply", "done"
    ]  # fmt: skip
    assert [s.key for s in process.steps][3:6] == ["approve", "approve", "extra"]


async def test_the_second_occurrence_of_a_key_is_found_again(open_engine: Open) -> None:
    engine = await open_engine("ident_v1")
    pid = await suspended_at_approve(engine, "twice")
    await engine.resume(pid, {"ok": True})
    assert (await engine.wait(pid, timeout=10)).status == "suspended"  # the second approval
    engine = await open_engine("ident_v2")
    await engine.resume(pid, {"ok": True})
    process = await engine.wait(pid, timeout=10)
    assert process.status == "completed"
    assert names(process)[-3:] == ["approve", "extra", "done"]


async def test_a_renamed_step_that_kept_its_key_goes_on(open_engine: Open) -> None:
    pid = await suspended_at_approve(await open_engine("ident_v1"))
    engine = await open_engine("ident_v4")
    await engine.resume(pid, {"ok": True})
    process = await engine.wait(pid, timeout=10)
    assert process.status == "completed"
    assert names(process)[4] == "Approve the change"


async def test_a_failed_process_retried_under_new_code_goes_on_at_its_key(
    open_engine: Open, tmp_path: Path
) -> None:
    engine = await open_engine("ident_v1")
    pid = await suspended_at_approve(engine, fail_apply=str(tmp_path / "failed-once"))
    await engine.resume(pid, {"ok": True})
    assert (await engine.wait(pid, timeout=10)).status == "failed"
    engine = await open_engine("ident_v2")
    await engine.retry(pid)
    process = await engine.wait(pid, timeout=10)
    assert process.status == "completed"
    assert names(process)[-2:] == ["apply", "done"]


async def test_a_missing_key_fails_the_process_with_the_message_and_runs_nothing(
    open_engine: Open,
) -> None:
    pid = await suspended_at_approve(await open_engine("ident_v1"))
    engine = await open_engine("ident_v3")
    with pytest.raises(InvalidTransition, match="workflow changed: step key 'approve' no longer"):
        await engine.resume(pid, {"ok": True})
    process = await engine.get(pid)
    assert process.status == "failed"
    assert process.error == "workflow changed: step key 'approve' no longer exists"
    assert names(process) == ["init", "prepare", "check", "approve"]  # nothing ran
    assert "ran_apply" not in process.state
    # Back on code that has the key, a retry goes on where it stood.
    engine = await open_engine("ident_v1")
    await engine.retry(pid)
    assert (await engine.wait(pid, timeout=10)).status == "suspended"


@pytest.mark.sqlite_only  # stages rows in, or reads, the SQLite file itself
async def test_an_active_process_whose_key_is_gone_fails_at_the_restart(
    open_engine: Open, tmp_path: Path
) -> None:
    engine = await open_engine("ident_v1")
    pid = await suspended_at_approve(engine)
    await engine.close()
    # As if the daemon had died while the process ran towards apply.
    with sqlite3.connect(tmp_path / "orchd.db") as conn:
        conn.execute(
            "UPDATE processes SET status = 'running', step_key = 'prepare' WHERE id = ?", (pid,)
        )
    engine = await open_engine("ident_v2")
    process = await engine.wait(pid, timeout=10)
    assert process.status == "failed"
    assert process.error == "workflow changed: step key 'prepare' no longer exists"


# -- the migration of a database from before step keys -----------------------------------------


def schema_2_database(path: Path, rows: list[tuple[str, str, int, str]]) -> None:
    """A database as today's main wrote it (schema 2): processes placed by index only."""
    conn = sqlite3.connect(path, isolation_level=None)
    for version in (MIGRATIONS[1], MIGRATIONS[2]):
        for statement in version:
            if isinstance(statement, str):
                conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    now = time.time()
    for pid, workflow, pc, current in rows:
        state = json.dumps({"process_id": pid}).encode()
        conn.execute(
            "INSERT INTO processes (id, workflow, target, status, pc, seq, state, current_step,"
            " created_at, updated_at) VALUES (?, ?, 'SYSTEM', 'suspended', ?, ?, ?, ?, ?, ?)",
            (pid, workflow, pc, pc, state, current, now, now),
        )
    conn.close()


@pytest.mark.sqlite_only  # stages rows in, or reads, the SQLite file itself
async def test_processes_from_before_step_keys_are_placed_by_their_step_once(
    open_engine: Open, tmp_path: Path
) -> None:
    good = "1b0d3a52-6a43-4b6e-9d43-5f0a5e1b2c3d"
    moved = "2c1e4b63-7b54-4c7f-8e54-6a1b6f2c3d4e"
    schema_2_database(
        tmp_path / "orchd.db",
        [(good, "provision", 3, "approve"), (moved, "provision", 2, "approve")],
    )
    await open_engine("ident_v1")
    with sqlite3.connect(tmp_path / "orchd.db") as conn:
        keys = dict(conn.execute("SELECT id, step_key FROM processes").fetchall())
    assert keys == {good: "approve", moved: None}
    engine = await open_engine("ident_v2")  # a later deploy finds it by its key
    await engine.resume(good, {"ok": True})
    assert (await engine.wait(good, timeout=10)).status == "completed"
    with pytest.raises(InvalidTransition, match="'approve' is no longer step 3"):
        await engine.resume(moved, {"ok": True})
    assert (await engine.get(moved)).status == "failed"


# -- check --workflows --------------------------------------------------------------------------


def check(
    db: Path | str, *modules: str, json_output: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(WF_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    extra = ["--json"] if json_output else []
    return subprocess.run(
        [sys.executable, "-m", "orchd", "check", "--database", str(db), *extra,
         "--workflows", *modules],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


async def test_check_workflows_lists_exactly_the_processes_new_code_would_strand(
    open_engine: Open, database_factory: Callable[[str], Awaitable[str]], tmp_path: Path
) -> None:
    engine = await open_engine("ident_v1")
    waiting = await suspended_at_approve(engine)
    failed = await suspended_at_approve(engine, fail_apply=str(tmp_path / "f"))
    await engine.resume(failed, {"ok": True})
    assert (await engine.wait(failed, timeout=10)).status == "failed"
    finished = await suspended_at_approve(engine)
    await engine.resume(finished, {"ok": True})
    assert (await engine.wait(finished, timeout=10)).status == "completed"
    db = await database_factory("orchd.db")  # the engine's: a file, or a PostgreSQL URL
    # Beside the running engine, read-only, through the store's read side on either backend.
    result = check(db, "ident_v3", json_output=True)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert [p["id"] for p in report["stranded"]] == [waiting]
    assert report["stranded"][0]["key"] == "approve"
    assert "step key 'approve' no longer exists" in report["stranded"][0]["problem"]
    assert report["checked"] == 2
    readable = check(db, "ident_v3")
    assert readable.returncode == 1 and waiting in readable.stdout and failed not in readable.stdout
    fine = check(db, "ident_v2")
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert "no unfinished process would be stranded (2 checked)" in fine.stdout
    assert (await engine.get(waiting)).status == "suspended"  # nothing changed


def test_check_workflows_on_a_database_no_daemon_of_this_orchd_opened_says_so(
    tmp_path: Path,
) -> None:
    schema_2_database(tmp_path / "orchd.db", [("1b0d3a52", "provision", 3, "approve")])
    result = check(tmp_path / "orchd.db", "ident_v2")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "schema version 2" in result.stderr and "start this orchd's daemon" in result.stderr


def test_check_workflows_with_code_that_does_not_import_is_a_usage_error(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "orchd.db").close()
    result = check(tmp_path / "orchd.db", "no_such_module_here")
    assert result.returncode == 2 and "no_such_module_here" in result.stderr


# -- skip ---------------------------------------------------------------------------------------


async def test_skip_records_the_failing_step_and_goes_on(open_engine: Open, tmp_path: Path) -> None:
    engine = await open_engine("ident_v1")
    pid = await suspended_at_approve(engine, fail_apply=str(tmp_path / "f"))
    await engine.resume(pid, {"ok": True})
    failed = await engine.wait(pid, timeout=10)
    assert failed.status == "failed"
    assert await engine.skip(pid, "applied by hand in the NMS", reporter="uid:0 (ops)") == "running"
    process = await engine.wait(pid, timeout=10)
    assert process.status == "completed"
    skipped = process.steps[-3]
    assert (skipped.name, skipped.status) == ("apply", "skipped")
    assert skipped.reason == "applied by hand in the NMS" and skipped.actor == "uid:0 (ops)"
    assert "ran_apply" not in process.state
    assert names(process)[-2:] == ["report", "done"]
    assert process.actions[-1].action == "skip"
    assert process.actions[-1].detail == "applied by hand in the NMS"


async def test_skip_needs_a_reason_and_changes_nothing_without_one(
    open_engine: Open, tmp_path: Path
) -> None:
    engine = await open_engine("ident_v1")
    pid = await suspended_at_approve(engine, fail_apply=str(tmp_path / "f"))
    await engine.resume(pid, {"ok": True})
    before = await engine.wait(pid, timeout=10)
    with pytest.raises(FormValidationError):
        await engine.skip(pid, "  ")
    assert await engine.get(pid) == before


async def test_skip_of_a_waiting_process_cancels_its_retry_and_goes_on(open_engine: Open) -> None:
    engine = await open_engine("ident_v1")
    pid = await engine.start("keeps_failing")
    assert (await engine.wait(pid, timeout=10)).status == "waiting"
    await engine.skip(pid, "the OSS will not come back today")
    process = await engine.wait(pid, timeout=10)
    assert process.status == "completed"
    assert [(s.name, s.status) for s in process.steps][-3:] == [
        ("flaky", "skipped"), ("report", "success"), ("done", "success")
    ]  # fmt: skip
    assert process.next_retry_at is None and process.error is None


@pytest.mark.parametrize("status", ["suspended", "completed"])
async def test_skip_is_refused_in_other_statuses(open_engine: Open, status: str) -> None:
    engine = await open_engine("ident_v1")
    pid = await suspended_at_approve(engine)
    if status == "completed":
        await engine.resume(pid, {"ok": True})
        await engine.wait(pid, timeout=10)
    before = await engine.get(pid)
    assert before.status == status
    with pytest.raises(InvalidTransition, match=f"cannot skip process .* it is {status}"):
        await engine.skip(pid, "why not")
    assert await engine.get(pid) == before
