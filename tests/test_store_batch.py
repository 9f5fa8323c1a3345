"""One batch of the SQLite writer (``plans.batch``) with children finishing in it: the plain
checkpoints around them are written together, and a parent's checkpoint still comes before
its child's end when it came first. The batch runs on the real database through the writer's
own driver (``writer.run``); the statements it yields are noted on the way."""

from __future__ import annotations

import sqlite3
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from support.writes import last, moved, new, waiting_parent

from orchd.model import Event
from orchd.store import plans
from orchd.store.base import Checkpoint, ChildFinished, Op, ProcessRow
from orchd.store.opening import open_store
from orchd.store.sqlite import schema, writer

pytestmark = [pytest.mark.anyio, pytest.mark.engine]


def noted(plan: plans.Plan[Any], seen: list[str]) -> Generator[plans.Stmt, Any, Any]:
    """``plan`` as it is, each statement's text noted in ``seen`` on its way to the driver."""
    try:
        stmt = plan.send(None)
        while True:
            seen.append(stmt.sql)
            stmt = plan.send((yield stmt))
    except StopIteration as done:
        return done.value


def run_batch(path: Path, ops: list[Op], seen: list[str]) -> list[plans.Outcome]:
    """Commit ``ops`` as one batch of the SQLite writer."""
    conn = schema.connect(str(path), "NORMAL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        events: list[Event] = []
        outcomes: list[plans.Outcome] = writer.run(
            conn, noted(plans.batch(ops, writer.DIALECT, events), seen)
        )
        conn.execute("COMMIT")
        return outcomes
    finally:
        conn.close()


def status_of(path: Path, pid: str) -> tuple[str, int | None]:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute(
            "SELECT status, children_pending FROM processes WHERE id = ?", (pid,)
        ).fetchone()
        return row[0], row[1]
    finally:
        conn.close()


async def parent_and_others(path: Path) -> tuple[ProcessRow, list[ProcessRow], list[ProcessRow]]:
    """A parent awaiting two children (none held), and two other processes running."""
    store = open_store(str(path), synchronous="NORMAL")
    await store.open()
    try:
        parent, children = await waiting_parent(store, held=0)
        others = [await store.write(new()) for _ in range(2)]
    finally:
        await store.close()
    return parent, children, others


async def test_plain_checkpoints_around_a_finishing_child_are_written_in_one_statement(
    tmp_path: Path,
) -> None:
    path = tmp_path / "batch.db"
    parent, (first, _), (a, b) = await parent_and_others(path)
    seen: list[str] = []
    ops: list[Op] = [
        Checkpoint(process_id=a.id, process=moved(a)),
        last(first, parent),
        Checkpoint(process_id=b.id, process=moved(b)),
    ]
    outcomes = run_batch(path, ops, seen)
    assert [ok for ok, _ in outcomes] == [True, True, True]
    # One update of the process rows for all three (the child's own row with them), where the
    # child used to split them into three.
    assert seen.count(writer.DIALECT.update_processes([]).sql) == 1
    assert (status_of(path, a.id)[0], status_of(path, b.id)[0]) == ("running", "running")
    assert status_of(path, first.id)[0] == "completed"
    assert status_of(path, parent.id) == ("awaiting_children", 1)


async def test_a_parents_checkpoint_before_its_childs_end_in_one_batch_is_written_first(
    tmp_path: Path,
) -> None:
    path = tmp_path / "batch.db"
    parent, (first, second), _ = await parent_and_others(path)
    run_batch(path, [last(first, parent)], [])
    # The parent is aborted, then its last child ends, in one batch: it is not woken.
    aborted = Checkpoint(process_id=parent.id, process=moved(parent, "aborted", 2))
    outcomes = run_batch(path, [aborted, last(second, parent)], [])
    assert outcomes[1] == (True, ChildFinished())
    assert status_of(path, parent.id)[0] == "aborted"
