"""The statements of each write operation on PostgreSQL, run inside the writer's transaction.

Each operation of ``orchd.store.base.Op`` has its SQL here and nowhere else (the SQLite twin is
``orchd.store.sqlite.writer``). Every process row a node writes is fenced by its ``owner``: a
node whose lease lapsed and whose processes another node took over has its writes refused
(``LeaseLost``), so a step committed by the new owner is never overwritten by the old one.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import msgspec
from msgspec.structs import astuple

from orchd.errors import SubscriptionLocked, SubscriptionNotFound
from orchd.model import START, Event, ProcessStatus
from orchd.store.base import (
    ActionWrite,
    Checkpoint,
    ChildFinished,
    ChildRefused,
    NewProcess,
    Positions,
    ProcessRow,
    ProcessTouch,
    ProcessWrite,
    Prune,
    Pruned,
    ReplaceChildren,
    RequestAbort,
    ScheduleClaim,
    SchedulePlan,
    ScheduleRun,
    ScheduleStarted,
    SetNote,
    StartChildren,
    StepWrite,
)
from orchd.store.cluster import LeaseLost
from orchd.store.postgres.nodes import fence
from orchd.store.postgres.reads import SELECT_SUBSCRIPTION, numbered
from orchd.store.sqlreads import (
    DROP_RELATIONS,
    INSERT_RELATION,
    INSERT_SUBSCRIPTION_ACTION,
    REQUEST_ABORT,
    SELECT_HOLDER,
    SELECT_KEYED,
    SELECT_USERS,
    UPSERT_SUBSCRIPTION,
    abort_request_action,
    astuple_note,
    keyed_process,
    prunable_where,
    refuse_start,
    subscription_from_row,
    subscription_values,
)

_encode = msgspec.json.Encoder().encode
Conn = asyncpg.Connection


class Rows:
    """The rows of plain checkpoints of one batch, written with one statement per table."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.checkpoints: list[Checkpoint] = []

    def add(self, cp: Checkpoint) -> None:
        self.checkpoints.append(cp)

    async def flush(self, conn: Conn, events: list[Event]) -> set[str]:
        """Write the gathered checkpoints; answer the ids of processes whose lease was lost
        (nothing of theirs is written). ``events`` collects what is to be stored."""
        cps, self.checkpoints = self.checkpoints, []
        if not cps:
            return set()
        kept: set[int] = set()
        writes = [cp.process for cp in cps if isinstance(cp.process, ProcessWrite)]
        if writes:
            columns = list(zip(*(astuple(p) for p in writes), strict=True))
            # Fenced by owner, as is every write below: only what this node still owns.
            kept.update(r[0] for r in await conn.fetch(_UPDATE_PROCESSES, *columns, self.node))
        touches: dict[int, ProcessTouch] = {}
        for cp in cps:
            if isinstance(cp.process, ProcessTouch):
                seen = touches.get(cp.process.pk)
                if seen is None or seen.seq <= cp.process.seq:
                    touches[cp.process.pk] = cp.process  # one per process and batch
        if touches:
            columns = list(zip(*(astuple(t) for t in touches.values()), strict=True))
            kept.update(r[0] for r in await conn.fetch(_TOUCH_PROCESSES, *columns, self.node))
        lost = {cp.process_id for cp in cps if cp.process.pk not in kept}
        cps = [cp for cp in cps if cp.process_id not in lost]
        drops = [(cp.process.pk, prefix) for cp in cps for prefix in cp.drop_branches]
        if drops:
            # Before the upserts: a join drops its fork's rows, the branch it returns to stays.
            await conn.executemany(_DROP_BRANCHES, drops)
        branches = [astuple(b) for cp in cps for b in cp.branches]
        if branches:
            await conn.executemany(_UPSERT_BRANCH, branches)
        steps = [astuple(s) for cp in cps for s in cp.steps]
        if steps:
            await conn.executemany(_INSERT_STEP, steps)
        subs = [
            subscription_values(cp.subscription, cp.process.updated_at)
            for cp in cps
            if cp.subscription is not None
        ]
        if subs:
            await conn.executemany(_UPSERT_SUBSCRIPTION, subs)
            relations = {
                cp.subscription["id"]: cp.relations
                for cp in cps
                if cp.subscription is not None and cp.relations is not None
            }
            if relations:
                await conn.executemany(_DROP_RELATIONS, [(sid,) for sid in relations])
                rows = [(sid, at, to) for sid, refs in relations.items() for at, to in refs.items()]
                await conn.executemany(_INSERT_RELATION, rows)
            await conn.executemany(
                _LINK,
                [(cp.subscription["id"], cp.process_id) for cp in cps if cp.subscription],
            )
        releases = [(cp.process.updated_at, cp.release) for cp in cps if cp.release is not None]
        if releases:
            await conn.executemany(_RELEASE, releases)
        actions = [astuple(a) for cp in cps for a in cp.actions]
        if actions:
            await conn.executemany(_INSERT_ACTION, actions)
        for cp in cps:
            events.extend(cp.events)
        return lost


#: The PostgreSQL type of each column a checkpoint or a step record writes. The statements
#: below are built from the write records' fields, so a field added to ``ProcessWrite`` or
#: ``StepWrite`` needs its column here (and in a migration), nothing else.
COLUMN_TYPES = {
    "status": "text", "pc": "int", "seq": "int", "state": "bytea", "current_step": "text",
    "error": "text", "form": "bytea", "callback_token": "text", "attempts": "int",
    "next_retry_at": "float8", "subscription_id": "text", "step_key": "text",
    "step_occurrence": "int", "children_group": "int", "children_pending": "int",
    "updated_at": "float8", "pk": "bigint",
}  # fmt: skip


def _update_processes() -> str:
    fields = ProcessWrite.__struct_fields__
    assert fields[-1] == "pk"
    sets = ", ".join(f"{f} = v.{f}" for f in fields[:-1])
    arrays = ", ".join(f"${i}::{COLUMN_TYPES[f]}[]" for i, f in enumerate(fields, 1))
    return (
        f"UPDATE processes AS p SET {sets} FROM unnest({arrays}) AS v({', '.join(fields)}) "
        f"WHERE p.rowid = v.pk AND {fence(f'${len(fields) + 1}')} RETURNING p.rowid"
    )


def _insert(table: str, fields: tuple[str, ...], rename: dict[str, str]) -> str:
    columns = ", ".join(rename.get(f, f) for f in fields)
    marks = ", ".join(f"${i}" for i in range(1, len(fields) + 1))
    return f"INSERT INTO {table} ({columns}) VALUES ({marks})"


#: Fenced by the owner: rows of processes this node no longer owns are left alone.
_UPDATE_PROCESSES = _update_processes()
#: A branch step's touch of its process row: never State, and the step count only goes up.
_TOUCH_PROCESSES = f"""UPDATE processes AS p SET status = v.status,
    seq = GREATEST(p.seq, v.seq), error = v.error, next_retry_at = v.next_retry_at,
    updated_at = v.updated_at
    FROM unnest($1::text[], $2::int[], $3::text[], $4::float8[], $5::float8[], $6::bigint[])
    AS v(status, seq, error, next_retry_at, updated_at, pk)
    WHERE p.rowid = v.pk AND {fence("$7")} RETURNING p.rowid"""
_UPSERT_BRANCH = """INSERT INTO branches (process, path, status, step_key, step_occurrence,
    changes, error, attempts, next_retry_at, callback_token)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (process, path) DO UPDATE SET status = excluded.status,
    step_key = excluded.step_key, step_occurrence = excluded.step_occurrence,
    changes = excluded.changes, error = excluded.error, attempts = excluded.attempts,
    next_retry_at = excluded.next_retry_at, callback_token = excluded.callback_token"""
# A prefix ends with "/" (or is "" for every branch): "A/1/" never matches "A/10".
_DROP_BRANCHES = "DELETE FROM branches WHERE process = $1 AND left(path, length($2)) = $2"
_INSERT_STEP = _insert("steps", StepWrite.__struct_fields__, {"pk": "process"})
_INSERT_ACTION = _insert("actions", ActionWrite.__struct_fields__, {"pk": "process"})
_UPSERT_SUBSCRIPTION = numbered(UPSERT_SUBSCRIPTION)
_DROP_RELATIONS = numbered(DROP_RELATIONS)
_INSERT_RELATION = numbered(INSERT_RELATION)
_SELECT_USERS = numbered(SELECT_USERS)
_SELECT_HOLDER = numbered(SELECT_HOLDER)
_REQUEST_ABORT = numbered(REQUEST_ABORT)
_INSERT_SUBSCRIPTION_ACTION = numbered(INSERT_SUBSCRIPTION_ACTION)
_LINK = """INSERT INTO subscription_processes (subscription_id, process_id) VALUES ($1, $2)
    ON CONFLICT DO NOTHING"""
_RELEASE = "UPDATE subscriptions SET insync = true, updated_at = $1 WHERE id = $2"


async def store_events(conn: Conn, events: list[Event]) -> None:
    """Store events, giving them ids; the caller holds EVENTS_LOCK (ids in commit order)."""
    if not events:
        return
    ids = [
        r[0]
        for r in await conn.fetch(
            "SELECT nextval('events_id_seq') FROM generate_series(1, $1)", len(events)
        )
    ]
    ids.sort()
    for event, eid in zip(events, ids, strict=True):
        event.id = eid  # the writer owns these until they are announced
    await conn.execute(
        "INSERT INTO events (id, process_id, data) "
        "SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[])",
        ids,
        [e.process_id for e in events],
        [_encode(e) for e in events],
    )


_INSERT_PROCESS = """INSERT INTO processes (id, workflow, target, status, pc, seq, state,
    reporter, subscription_id, current_step, step_key, step_occurrence, created_at, updated_at,
    parent_id, child_group, child_index, held, idempotency_key, owner, trace_id,
    idempotency_digest)
    VALUES ($1, $2, $3, 'created', 0, 0, $4, $5, $6, $7, $8, 0, $9, $9, $10, $11, $12, $13, $14,
        $15, $16, $17)
    RETURNING rowid"""


async def create_process(conn: Conn, op: NewProcess, node: str, events: list[Event]) -> ProcessRow:
    if op.idempotency_key is not None:
        found = await conn.fetchrow(
            f"{SELECT_KEYED} WHERE idempotency_key = $1", op.idempotency_key
        )
        if found is not None:
            return keyed_process(found, op)
    state = op.state
    if op.lock is not None:
        # The row lock serialises two starts on one subscription, whichever node takes them.
        row = await conn.fetchrow(SELECT_SUBSCRIPTION + " FOR UPDATE", op.lock)
        if row is None:
            raise SubscriptionNotFound(f"subscription {op.lock} does not exist")
        sub = subscription_from_row(row)
        # Both reads are made whatever the answer: refuse_start asks for them synchronously.
        holder = None if sub["insync"] else await conn.fetchval(_SELECT_HOLDER, op.lock)
        users = (
            [r[0] for r in await conn.fetch(_SELECT_USERS, op.lock)]
            if op.target == "TERMINATE"
            else []
        )
        refuse_start(sub, op, lambda: holder, lambda: users)
        await conn.execute(
            "UPDATE subscriptions SET insync = false, updated_at = $1 WHERE id = $2",
            op.created_at,
            op.lock,
        )
        await conn.execute(_LINK, op.lock, op.id)
        sub["insync"] = False
        state = {**state, "subscription": sub}
    pk = await conn.fetchval(
        _INSERT_PROCESS,
        op.id,
        op.workflow,
        op.target,
        _encode(state),
        op.reporter,
        op.lock,
        op.first_step,
        op.first_key,
        op.created_at,
        op.parent_id,
        op.child_group,
        op.child_index,
        op.held,
        op.idempotency_key,
        None if op.held else node,  # a held child is nobody's until a slot frees
        op.trace_id,
        op.idempotency_digest,
    )
    await conn.execute(_INSERT_ACTION, pk, op.created_at, START, op.actor, None)
    events.extend(op.events)
    return op.created_row(pk, state)


_SET_NEXT = """INSERT INTO schedules (name, next_fire_at) VALUES ($1, $2)
    ON CONFLICT (name) DO UPDATE SET next_fire_at = excluded.next_fire_at"""
_SCHEDULE_RUN = """INSERT INTO schedules AS s (name, last_process_id, last_fire_at, next_fire_at,
    skipped) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET
    last_process_id = coalesce(excluded.last_process_id, s.last_process_id),
    last_fire_at = CASE WHEN excluded.last_process_id IS NULL THEN s.last_fire_at
                        ELSE excluded.last_fire_at END,
    next_fire_at = excluded.next_fire_at, skipped = s.skipped + excluded.skipped"""


async def record_schedule_run(conn: Conn, op: ScheduleRun) -> bool:
    inserted = await conn.fetchval(
        "INSERT INTO schedule_runs (name, fire_at, process_id) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        op.name,
        op.fire_at,
        op.process_id,
    )
    if inserted is None:
        return False
    await conn.execute(
        _SCHEDULE_RUN, op.name, op.process_id, op.fire_at, op.next_fire_at, int(op.skipped)
    )
    return True


async def claim(conn: Conn, op: ScheduleClaim) -> bool:
    """A fire time is claimed by the first node whose insert commits: the primary key makes it
    run once in the whole cluster."""
    fresh = await conn.fetchval(
        "INSERT INTO schedule_runs (name, fire_at, process_id) VALUES ($1, $2, NULL) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        op.name,
        op.fire_at,
    )
    await conn.execute(_SET_NEXT, op.name, op.next_fire_at)
    return fresh is not None


async def started(conn: Conn, op: ScheduleStarted) -> None:
    await conn.execute(
        "INSERT INTO schedule_runs (name, fire_at, process_id) VALUES ($1, $2, $3) "
        "ON CONFLICT (name, fire_at) DO UPDATE SET process_id = excluded.process_id",
        op.name,
        op.fire_at,
        op.process_id,
    )
    await conn.execute(
        "INSERT INTO schedules (name, last_process_id, last_fire_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (name) DO UPDATE SET last_process_id = excluded.last_process_id, "
        "last_fire_at = excluded.last_fire_at",
        op.name,
        op.process_id,
        op.fire_at,
    )


async def plan(conn: Conn, op: SchedulePlan) -> None:
    await conn.executemany(_SET_NEXT, list(op.next_fire_at.items()))


async def place(conn: Conn, op: Positions) -> None:
    await conn.executemany(
        "UPDATE processes SET step_key = $1, step_occurrence = $2 WHERE rowid = $3",
        [(key, occurrence, pk) for pk, key, occurrence in op.rows],
    )


async def checkpoint_now(conn: Conn, cp: Checkpoint, node: str, events: list[Event]) -> None:
    rows = Rows(node)
    rows.add(cp)
    if await rows.flush(conn, events):
        raise LeaseLost(f"process {cp.process_id}: this node no longer holds its lease")


async def create_children(
    conn: Conn, children: list[NewProcess], node: str, events: list[Event]
) -> list[ProcessRow]:
    created = []
    for child in children:
        try:
            created.append(await create_process(conn, child, node, events))
        except (SubscriptionLocked, SubscriptionNotFound) as exc:
            raise ChildRefused(child.child_index, exc.detail) from None
    return created


async def start_children(
    conn: Conn, op: StartChildren, node: str, events: list[Event]
) -> list[ProcessRow]:
    created = await create_children(conn, op.children, node, events)
    await checkpoint_now(conn, op.parent, node, events)
    return created


async def replace_children(
    conn: Conn, op: ReplaceChildren, node: str, events: list[Event]
) -> list[ProcessRow]:
    await conn.execute(
        "UPDATE processes SET child_group = NULL WHERE id = ANY($1::text[])", op.detach
    )
    return await start_children(
        conn, StartChildren(parent=op.parent, children=op.children), node, events
    )


async def finish_child(conn: Conn, cp: Checkpoint, node: str, events: list[Event]) -> ChildFinished:
    """A child's last checkpoint, and its parent's count of unfinished children with it.

    The parent's row is locked first: children finishing on several nodes at once count down
    one after the other, and exactly one of them wakes the parent. The node that wakes it runs
    it (it takes the parent's lease), as it does a held sibling it starts.
    """
    link = cp.child_of
    assert link is not None
    row = await conn.fetchrow(
        "UPDATE processes SET children_pending = children_pending - 1 "
        "WHERE id = $1 AND children_group = $2 AND children_pending > 0 "
        "RETURNING status, children_pending, children_group, workflow, parent_id",
        link.parent_id,
        link.group,
    )
    await checkpoint_now(conn, cp, node, events)
    if row is None or row[0] != "awaiting_children" or row[2] != link.group:
        return ChildFinished()  # aborted, or moved on: nothing to wake, nothing to start
    answer = ChildFinished()
    if row[1] == 0:
        await conn.execute(
            "UPDATE processes SET status = 'running', owner = $3, updated_at = $1 WHERE id = $2",
            cp.process.updated_at,
            link.parent_id,
            node,
        )
        answer.woke = link.parent_id
        events.append(
            Event(
                id=0,
                kind="process",
                process_id=link.parent_id,
                workflow=row[3],
                parent_id=row[4],
                status=ProcessStatus.RUNNING,
                at=datetime.now(UTC),
            )
        )
    held = await conn.fetchval(
        "UPDATE processes SET held = false, owner = $3 WHERE rowid = ("
        "SELECT rowid FROM processes WHERE parent_id = $1 AND child_group = $2 AND held "
        "ORDER BY child_index LIMIT 1 FOR UPDATE) RETURNING id",
        link.parent_id,
        link.group,
        node,
    )
    if held is not None:
        answer.started = held
    return answer


async def request_abort(conn: Conn, op: RequestAbort) -> bool:
    found = await conn.fetchval(_REQUEST_ABORT + " RETURNING 1", op.by, op.pk)
    if found is None:
        return False
    await conn.execute(_INSERT_ACTION, *abort_request_action(op))
    return True


async def set_note(conn: Conn, op: SetNote) -> bool:
    found = await conn.fetchval(
        "UPDATE subscriptions SET note = $1 WHERE id = $2 RETURNING 1", op.note, op.subscription_id
    )
    if found is None:
        return False
    await conn.execute(_INSERT_SUBSCRIPTION_ACTION, *astuple_note(op))
    return True


async def prune(conn: Conn, op: Prune) -> Pruned:
    where, params = prunable_where(op.retention)
    if where is None:
        return Pruned()
    rows = await conn.fetch(
        numbered(f"SELECT rowid, id FROM processes WHERE {where} LIMIT ? FOR UPDATE SKIP LOCKED"),
        *params,
        op.limit,
    )
    if not rows:
        return Pruned()
    pks = [r[0] for r in rows]
    ids = [r[1] for r in rows]
    steps = await conn.fetchval(
        "WITH d AS (DELETE FROM steps WHERE process = ANY($1::bigint[]) RETURNING 1) "
        "SELECT count(*) FROM d",
        pks,
    )
    actions = await conn.fetchval(
        "WITH d AS (DELETE FROM actions WHERE process = ANY($1::bigint[]) RETURNING 1) "
        "SELECT count(*) FROM d",
        pks,
    )
    await conn.execute("DELETE FROM subscription_processes WHERE process_id = ANY($1::text[])", ids)
    await conn.execute("DELETE FROM schedule_runs WHERE process_id = ANY($1::text[])", ids)
    await conn.execute("DELETE FROM branches WHERE process = ANY($1::bigint[])", pks)
    await conn.execute("DELETE FROM processes WHERE rowid = ANY($1::bigint[])", pks)
    if op.retention.tasks_before is not None:
        await conn.execute(
            "DELETE FROM schedule_runs WHERE process_id IS NULL AND fire_at < $1",
            op.retention.tasks_before,
        )
    return Pruned(processes=len(rows), steps=steps, actions=actions)
