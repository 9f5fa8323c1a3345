"""Each write operation of the store, the same on SQLite and on PostgreSQL: every test runs on
both backends (``database_factory``) against the real store, through ``Store.write`` and read
back through the store's reads. Their statements are written once (``orchd.store.plans``);
these tests hold both drivers and both dialects to the same answers."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from support.common import DatabaseFactory
from support.writes import event, last, moved, new, now, waiting_parent

from orchd.engine import Engine
from orchd.errors import (
    IdempotencyConflict,
    StoreError,
    SubscriptionLocked,
    SubscriptionNotFound,
)
from orchd.model import Event, ProcessStatus
from orchd.store import plans
from orchd.store.base import (
    ActionWrite,
    BranchRow,
    Checkpoint,
    ChildFinished,
    ChildRefused,
    Positions,
    ProcessRow,
    ProcessTouch,
    Prune,
    Pruned,
    ReplaceChildren,
    RequestAbort,
    Retention,
    ScheduleClaim,
    SchedulePlan,
    ScheduleRun,
    ScheduleStarted,
    SetNote,
    StartChildren,
    StepWrite,
    Store,
)
from orchd.store.opening import open_store

pytestmark = pytest.mark.anyio

_encode = msgspec.json.Encoder().encode


@pytest.fixture
async def store(database_factory: DatabaseFactory) -> AsyncIterator[Store]:
    opened = open_store(await database_factory("orchd.db"), synchronous="NORMAL")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def record(row: ProcessRow, seq: int, branch: str | None = None) -> StepWrite:
    at = now()
    return StepWrite(
        pk=row.pk,
        seq=seq,
        name=f"step {seq}",
        status="success",
        started_at=at,
        finished_at=at,
        key=f"step {seq}",
        branch=branch,
    )


def subscription(sid: str, **fields: Any) -> dict[str, Any]:
    sub: dict[str, Any] = {
        "id": sid,
        "product": "node",
        "customer_id": "acme",
        "description": "a node",
        "status": "active",
        "insync": True,
        "start_date": None,
        "end_date": None,
        "attributes": {"name": "r1"},
        "version": 1,
        "note": None,
    }
    sub.update(fields)
    return sub


async def saved_subscription(store: Store, **fields: Any) -> str:
    """A subscription saved the way a CREATE's checkpoint saves it; answers its id."""
    sid = str(uuid.uuid4())
    row = await store.write(new())
    sub = subscription(sid, **fields)
    cp = Checkpoint(
        process_id=row.id,
        process=moved(row, "completed"),
        subscription=sub,
        relations={},
    )
    assert await store.write(cp) is None
    return sid


async def stored_events(store: Store) -> list[Event]:
    return await store.events_after(0, 1000)


# -- creating processes -----------------------------------------------------------------------


async def test_a_new_process_is_stored_with_its_start_action_and_its_events(store: Store) -> None:
    op = new(trace_id="0af7651916cd43dd8448eb211c80319c")
    row = await store.write(op)
    assert row == await store.process(op.id)
    assert (row.status, row.step_key, row.state, row.trace_id) == (
        "created",
        "one",
        {"n": 1},
        "0af7651916cd43dd8448eb211c80319c",
    )
    assert [(a.action, a.by) for a in await store.actions(row.pk)] == [("start", "tester")]
    events = await stored_events(store)
    assert [(e.process_id, e.status) for e in events] == [(op.id, "created")]
    assert events[0].id > 0


async def test_an_idempotency_key_answers_the_process_it_started_and_refuses_another_workflow(
    store: Store,
) -> None:
    first = await store.write(new(idempotency_key="k1", idempotency_digest="d"))
    again = await store.write(new(idempotency_key="k1", idempotency_digest="d"))
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict):
        await store.write(new(idempotency_key="k1", workflow="other"))
    # The answered start stored nothing: one process, one start action, one event.
    assert await store.processes_with_prefix("", 10) == [first.id]
    assert len(await store.actions(first.pk)) == 1
    assert len(await stored_events(store)) == 1


async def test_a_start_locks_its_subscription_and_a_second_start_on_it_is_refused(
    store: Store,
) -> None:
    sid = await saved_subscription(store)
    row = await store.write(new(target="MODIFY", lock=sid))
    assert row.subscription_id == sid
    assert row.state["subscription"]["id"] == sid
    assert row.state["subscription"]["insync"] is False
    sub = await store.subscription(sid)
    assert sub is not None and sub.insync is False
    assert [p.id for p in await store.subscription_processes(sid)][-1] == row.id
    with pytest.raises(SubscriptionLocked) as refused:
        await store.write(new(target="MODIFY", lock=sid))
    assert row.id in str(refused.value)  # names the holder
    with pytest.raises(SubscriptionNotFound):
        await store.write(new(target="MODIFY", lock=str(uuid.uuid4())))


# -- checkpoints ------------------------------------------------------------------------------


async def test_a_checkpoints_actions_are_kept_in_the_order_it_gives_them(store: Store) -> None:
    row = await store.write(new())
    names = [f"note {n}" for n in range(6)]
    at = now()
    cp = Checkpoint(
        process_id=row.id,
        process=moved(row),
        steps=[],
        actions=[ActionWrite(pk=row.pk, at=at, action=name, by="op") for name in names],
        events=[event(row.id, ProcessStatus.RUNNING)],
    )
    assert await store.write(cp) is None
    assert [a.action for a in await store.actions(row.pk)] == ["start", *names]


async def test_a_checkpoint_writes_the_row_its_steps_and_actions_and_releases_a_subscription(
    store: Store,
) -> None:
    sid = await saved_subscription(store)
    row = await store.write(new(target="MODIFY", lock=sid))
    cp = Checkpoint(
        process_id=row.id,
        process=moved(row, "aborted", 2, current_step=None, step_key=None),
        steps=[record(row, 1), record(row, 2)],
        actions=[ActionWrite(pk=row.pk, at=time.time(), action="abort", by="op")],
        release=sid,
        events=[event(row.id, ProcessStatus.ABORTED)],
    )
    assert await store.write(cp) is None
    after = await store.process(row.id)
    assert after is not None and (after.status, after.seq, after.state) == ("aborted", 2, {"n": 2})
    assert [s.name for s in await store.steps(row.pk)] == ["step 1", "step 2"]
    assert [a.action for a in await store.actions(row.pk)] == ["start", "abort"]
    sub = await store.subscription(sid)
    assert sub is not None and sub.insync is True
    assert [e.status for e in await stored_events(store) if e.process_id == row.id] == [
        "created",
        "aborted",
    ]


async def test_a_join_drops_its_forks_branches_before_the_branch_it_returns_to_is_written(
    store: Store,
) -> None:
    row = await store.write(new())

    def branch(path: str, key: str | None) -> BranchRow:
        return BranchRow(pk=row.pk, path=path, status="running", step_key=key)

    forked = Checkpoint(
        process_id=row.id,
        process=moved(row, "running", 1),
        branches=[branch("A/0", "inner"), branch("A/0/B/1", "x"), branch("A/10", "y")],
    )
    await store.write(forked)
    # The inner fork joins: its branches go, and "A/0" goes on (a shorter path, kept).
    joined = Checkpoint(
        process_id=row.id,
        process=moved(row, "running", 2),
        branches=[branch("A/0", "after")],
        drop_branches=["A/0/"],
    )
    await store.write(joined)
    kept = {b.path: b.step_key for b in await store.branches(row.pk)}
    assert kept == {"A/0": "after", "A/10": "y"}  # "A/0/" never matches "A/10"
    await store.write(
        Checkpoint(process_id=row.id, process=moved(row, "completed", 3), drop_branches=[""])
    )
    assert await store.branches(row.pk) == []


async def test_branch_steps_in_one_batch_touch_their_process_once_and_never_lower_its_count(
    store: Store,
) -> None:
    row = await store.write(new())
    await store.write(Checkpoint(process_id=row.id, process=moved(row, "running", 1)))

    def touch(seq: int) -> Checkpoint:
        now = time.time()
        return Checkpoint(
            process_id=row.id,
            process=ProcessTouch(status="running", seq=seq, updated_at=now, pk=row.pk),
            steps=[record(row, seq, branch=f"A/{seq}")],
        )

    await asyncio.gather(*(store.write(touch(seq)) for seq in (5, 3, 4)))
    after = await store.process(row.id)
    assert after is not None and after.seq == 5 and after.state == {"n": 1}  # State untouched
    assert sorted(s.branch or "" for s in await store.steps(row.pk)) == ["A/3", "A/4", "A/5"]


# -- children ---------------------------------------------------------------------------------


async def test_children_start_with_their_parents_checkpoint(store: Store) -> None:
    parent, rows = await waiting_parent(store, held=1)
    assert [(r.child_index, r.held) for r in rows] == [(0, False), (1, True)]
    assert [c.id for c in await store.children(parent.id, 7)] == [r.id for r in rows]
    after = await store.process(parent.id)
    assert after is not None and (after.status, after.children_pending) == ("awaiting_children", 2)


async def test_a_refused_child_creates_no_child_and_leaves_the_parent_as_it_was(
    store: Store,
) -> None:
    parent = await store.write(new())
    children = [
        new(parent_id=parent.id, child_group=1, child_index=0),
        new(parent_id=parent.id, child_group=1, child_index=1, target="MODIFY", lock="gone"),
    ]
    cp = Checkpoint(
        process_id=parent.id,
        process=moved(parent, "awaiting_children", 1, children_group=1, children_pending=2),
    )
    with pytest.raises(ChildRefused) as refused:
        await store.write(StartChildren(parent=cp, children=children))
    assert refused.value.index == 1
    assert await store.children(parent.id) == []
    after = await store.process(parent.id)
    assert after is not None and after.status == "created"
    assert {e.process_id for e in await stored_events(store)} == {parent.id}


async def test_a_childs_last_checkpoint_starts_a_held_sibling_and_the_last_one_wakes_the_parent(
    store: Store,
) -> None:
    parent, (first, second) = await waiting_parent(store, held=1)
    finished = await store.write(last(first, parent))
    assert isinstance(finished, ChildFinished)
    # The held sibling goes, its row (read in the same transaction) with it, on both backends.
    assert (finished.woke, finished.started) == (None, second.id)
    assert finished.started_row is not None and finished.started_row.held is False
    assert finished.started_row.id == second.id
    woken = await store.write(last(second, parent))
    assert woken == ChildFinished(woke=parent.id)
    after = await store.process(parent.id)
    assert after is not None and (after.status, after.children_pending) == ("running", 0)
    statuses = [(e.process_id, e.status) for e in await stored_events(store)]
    assert statuses[-2:] == [(second.id, "completed"), (parent.id, "running")]


async def test_a_child_of_a_parent_that_moved_on_wakes_nothing(store: Store) -> None:
    parent, (first, second) = await waiting_parent(store, held=0)
    await store.write(Checkpoint(process_id=parent.id, process=moved(parent, "aborted", 2)))
    assert await store.write(last(first, parent)) == ChildFinished()
    after = await store.process(parent.id)
    assert after is not None and after.status == "aborted"


async def test_replacing_children_detaches_the_old_ones_and_starts_new_ones(store: Store) -> None:
    parent, (first, second) = await waiting_parent(store, held=0)
    cp = Checkpoint(
        process_id=parent.id,
        process=moved(parent, "awaiting_children", 3, children_group=7, children_pending=1),
    )
    again = new(parent_id=parent.id, child_group=7, child_index=1)
    rows = await store.write(ReplaceChildren(parent=cp, detach=[second.id], children=[again]))
    assert [r.id for r in rows] == [again.id]
    assert [c.id for c in await store.children(parent.id, 7)] == [first.id, again.id]
    detached = await store.process(second.id)
    assert detached is not None and detached.child_group is None


# -- schedules, positions, aborts, notes, retention -------------------------------------------


async def test_a_fire_time_is_claimed_once_and_its_run_recorded_once(store: Store) -> None:
    await store.write(SchedulePlan(next_fire_at={"nightly": 100.0, "hourly": 50.0}))
    assert await store.write(ScheduleClaim(name="nightly", fire_at=100.0, next_fire_at=200.0))
    assert not await store.write(ScheduleClaim(name="nightly", fire_at=100.0, next_fire_at=200.0))
    await store.write(ScheduleStarted(name="nightly", fire_at=100.0, process_id="p1"))
    skipped = ScheduleRun(name="hourly", fire_at=50.0, process_id=None, next_fire_at=60.0)
    assert await store.write(ScheduleRun(**{**msgspec.structs.asdict(skipped), "skipped": True}))
    assert not await store.write(skipped)  # a replay after a crash
    rows = {s.name: s for s in await store.schedules()}
    assert (rows["nightly"].last_process_id, rows["nightly"].next_fire_at) == ("p1", 200.0)
    assert (rows["hourly"].skipped, rows["hourly"].next_fire_at) == (1, 60.0)
    assert rows["hourly"].last_process_id is None


async def test_positions_place_processes_from_before_step_keys(store: Store) -> None:
    row = await store.write(new())
    await store.write(Positions(rows=[(row.pk, "later", 2)]))
    after = await store.process(row.id)
    assert after is not None and (after.step_key, after.step_occurrence) == ("later", 2)


async def test_an_abort_request_is_committed_only_for_an_unfinished_process(store: Store) -> None:
    running = await store.write(new())
    done = await store.write(new())
    await store.write(Checkpoint(process_id=done.id, process=moved(done, "completed")))
    assert await store.write(RequestAbort(pk=running.pk, by="op", at=time.time())) is True
    assert await store.write(RequestAbort(pk=done.pk, by="op", at=time.time())) is False
    after = await store.process(running.id)
    assert after is not None and after.abort_requested == "op"
    assert [(a.action, a.detail) for a in await store.actions(running.pk)][-1] == (
        "abort",
        "requested",
    )
    assert len(await store.actions(done.pk)) == 1


async def test_a_note_is_set_only_on_a_subscription_that_exists(store: Store) -> None:
    sid = await saved_subscription(store)
    assert await store.write(SetNote(subscription_id=sid, note="hi", by="op", at=1.0))
    assert not await store.write(SetNote(subscription_id="gone", note="x", by="op", at=1.0))
    sub = await store.subscription(sid)
    assert sub is not None and sub.note == "hi"
    assert [a.action for a in await store.subscription_actions(sid)] == ["note"]


async def test_prune_deletes_finished_processes_with_their_records(store: Store) -> None:
    old = await store.write(new())
    await store.write(
        Checkpoint(
            process_id=old.id,
            process=moved(old, "completed", 2, updated_at=10.0),
            steps=[record(old, 1), record(old, 2)],
        )
    )
    running = await store.write(new())
    retention = Retention(tasks_before=time.time(), workflows_before=None)
    assert await store.prunable(retention) == Pruned(processes=1, steps=2, actions=1)
    assert await store.write(Prune(retention=retention, limit=10)) == Pruned(
        processes=1, steps=2, actions=1
    )
    assert await store.process(old.id) is None
    assert await store.steps(old.pk) == []
    assert await store.process(running.id) is not None
    assert await store.write(Prune(retention=retention, limit=10)) == Pruned()


# -- the batch --------------------------------------------------------------------------------


async def test_one_refused_operation_does_not_sink_the_others_committed_with_it(
    store: Store,
) -> None:
    row = await store.write(new())
    plain = new()
    refused = new(target="MODIFY", lock="gone", events=[event("refused")])
    step = Checkpoint(process_id=row.id, process=moved(row, "running", 1), steps=[record(row, 1)])
    answers = await asyncio.gather(
        store.write(plain), store.write(refused), store.write(step), return_exceptions=True
    )
    assert isinstance(answers[0], ProcessRow) and answers[0].id == plain.id
    assert isinstance(answers[1], SubscriptionNotFound)
    assert answers[2] is None
    assert await store.process(refused.id) is None
    assert [s.name for s in await store.steps(row.pk)] == ["step 1"]
    # The refused start's events were not stored; the others' were, in order.
    assert "refused" not in {e.process_id for e in await stored_events(store)}


async def test_a_database_error_fails_only_the_operation_that_caused_it(store: Store) -> None:
    first = await store.write(new())
    twin = new(id=first.id)  # the same id again: the database refuses it (UNIQUE)
    other = new()
    answers = await asyncio.gather(store.write(twin), store.write(other), return_exceptions=True)
    assert isinstance(answers[0], StoreError)
    assert isinstance(answers[1], ProcessRow)
    assert await store.process(other.id) is not None


@pytest.mark.sqlite_only
async def test_an_inline_commit_is_announced_after_the_writer_threads_commit_before_it(
    store: Store,
) -> None:
    # The writer thread commits a queued write; before the loop has run the callback that
    # announces it, a lone process commits on the loop's thread (commit_now). Its event comes
    # second: a listener's ids only grow, so a client that resumes after the last id it heard
    # misses none.
    heard: list[int] = []
    store.on_events(lambda events: heard.extend(e.id for e in events))
    queued = store.submit(new())
    # The loop does not yield until both have committed: the first announcement waits in its
    # queue meanwhile.
    deadline = time.monotonic() + 10
    while store.stats().committed < 1:
        assert time.monotonic() < deadline, "the writer thread did not commit"
    while not store.commit_now(new())[0]:  # until the writer thread lets go of the file
        assert time.monotonic() < deadline, "the inline commit was never taken"
    await queued
    async with asyncio.timeout(10):
        while len(heard) < 2:  # the inline commit's announcement is the loop's next callback
            await asyncio.sleep(0)
    assert heard == [1, 2]


def test_a_finishing_child_finds_its_next_held_sibling_through_the_index(
    tmp_path: Any,
) -> None:
    # A fan-out of 10,000 children runs this once per child: a scan and sort of the siblings
    # each time made the fan-out quadratic (P8 went from 1.0x to 2.8x of independent starts).
    path = str(tmp_path / "plan.db")

    async def create() -> None:
        engine = Engine(database=path, workflows=[])
        await engine.open()
        await engine.close()

    asyncio.run(create())
    statement = plans._NEXT_HELD.format(claim="", lock=plans.Dialect.lock_rows)
    conn = sqlite3.connect(path)
    try:
        plan = " | ".join(
            row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", ("p", 1))
        )
    finally:
        conn.close()
    assert "processes_by_parent (parent_id=? AND child_group=? AND held=?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
