"""Each write operation of ``orchd.store.base.Op``, written once, as a plan of statements that
no database runs by itself; and the group-commit policy both backends' writers follow.

A plan is a generator: it yields a :class:`Stmt` and receives what running it gave (rows, a
value, a count), so the same plan runs on SQLite's writer thread and on PostgreSQL's writer
task, each of which has one small driver loop (the sans-IO style of h11, applied to SQL).
Statements are written with SQLite's ``?`` placeholders in SQL both databases take
(``ON CONFLICT``, ``RETURNING``, ``true``/``false``); the PostgreSQL driver numbers them. What
truly differs is a :class:`Dialect`: row locks (``FOR UPDATE``, ``SKIP LOCKED``), a list
parameter, the bulk updates of one batch, and the ownership fence of a cluster (README
"Running several nodes"): on PostgreSQL every process row a node writes is fenced by its
``owner``, so a node whose lease lapsed and whose processes another node took over has its
writes refused and never overwrites a step the new owner committed.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Generator, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

import msgspec
from msgspec.structs import astuple

from orchd import _faults as faults
from orchd.errors import StoreError, SubscriptionLocked, SubscriptionNotFound
from orchd.model import START, Event, ProcessStatus
from orchd.store.base import (
    ActionWrite,
    Checkpoint,
    ChildFinished,
    ChildRefused,
    NewProcess,
    Op,
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
from orchd.store.sqlreads import (
    DROP_RELATIONS,
    INSERT_RELATION,
    INSERT_SUBSCRIPTION_ACTION,
    REQUEST_ABORT,
    SELECT_HOLDER,
    SELECT_KEYED,
    SELECT_PROCESS,
    SELECT_SUBSCRIPTION,
    SELECT_USERS,
    UPSERT_SUBSCRIPTION,
    abort_request_action,
    astuple_note,
    keyed_process,
    process_row,
    prunable_where,
    refuse_start,
    subscription_from_row,
    subscription_values,
)

T = TypeVar("T")

_encode = msgspec.json.Encoder().encode

#: Operations one commit takes at most. A batch's actors all wake in one event-loop iteration:
#: a bound keeps that iteration short (API latency) while still sharing each fsync (SQLite)
#: or WAL flush (PostgreSQL) among hundreds of checkpoints.
MAX_BATCH = 256


class Fetch(enum.IntEnum):
    """What a statement's driver hands back to the plan."""

    #: Nothing (None).
    NONE = 0
    #: Nothing; ``params`` is a list of rows, the statement runs once for each.
    MANY = 1
    #: The first row, or None.
    ROW = 2
    #: Every row.
    ROWS = 3
    #: The first column of the first row, or None.
    VALUE = 4
    #: How many rows the statement changed.
    COUNT = 5


class Stmt(NamedTuple):
    """One statement of a plan, with ``?`` placeholders."""

    sql: str
    params: Sequence[Any] = ()
    fetch: Fetch = Fetch.NONE


#: A write operation's statements; it returns the operation's answer.
Plan = Generator[Stmt, Any, T]


class Dialect:
    """What differs between the databases a plan runs on; this base is one writer that owns
    every row (SQLite's case): no fence, no row locks."""

    #: The node whose processes this writer owns; None: the writer owns every process.
    owner: str | None = None
    #: Appended to a SELECT whose rows the transaction goes on to change.
    lock_rows = ""
    #: Appended to a SELECT of rows to delete that another writer may hold: skip those.
    skip_locked = ""

    def any_of(self, column: str, values: Sequence[Any], kind: str) -> tuple[str, tuple[Any, ...]]:
        """``column`` is one of ``values`` (``kind``: their SQL type), and its parameters."""
        return f"{column} IN ({', '.join('?' * len(values))})", tuple(values)

    def update_processes(self, writes: list[ProcessWrite]) -> Stmt:
        """Set each process row of ``writes``; fenced, it answers the keys it wrote."""
        return Stmt(_UPDATE_PROCESS, [astuple(p) for p in writes], Fetch.MANY)

    def touch_processes(self, touches: list[ProcessTouch]) -> Stmt:
        """Touch each process row (a branch's step: never State, the step count only goes
        up); fenced, it answers the keys it wrote."""
        return Stmt(_TOUCH_PROCESS, [astuple(t) for t in touches], Fetch.MANY)

    def lease_lost(self, pid: str) -> StoreError:
        """The refusal of a write to a process this writer no longer owns (the fence)."""
        return StoreError(f"process {pid}: this node no longer holds its lease")

    def claim(self) -> tuple[str, tuple[Any, ...]]:
        """What a SET adds to make the row this node's (a woken parent, a started sibling: the
        node that starts it runs it), and its parameters."""
        if self.owner is None:
            return "", ()
        return ", owner = ?", (self.owner,)


_PROCESS_FIELDS = ProcessWrite.__struct_fields__
assert _PROCESS_FIELDS[-1] == "pk"
_UPDATE_PROCESS = (
    f"UPDATE processes SET {', '.join(f'{f} = ?' for f in _PROCESS_FIELDS[:-1])} WHERE rowid = ?"
)
# The newest touch of a process in a batch is written (and the step count never goes down).
_TOUCH_PROCESS = """UPDATE processes SET status = ?, seq = max(seq, ?), error = ?,
    next_retry_at = ?, updated_at = ? WHERE rowid = ?"""


def _insert(table: str, fields: Sequence[str], rename: dict[str, str]) -> str:
    columns = ", ".join(rename.get(f, f) for f in fields)
    return f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(fields))})"


#: The columns whose name is not the field's: the process's key, and who acted (``actor`` in
#: the database, as in the API's JSON; ``by`` in the code).
_COLUMNS = {"pk": "process", "by": "actor"}
_INSERT_STEP = _insert("steps", StepWrite.__struct_fields__, _COLUMNS)
_INSERT_ACTION = _insert("actions", ActionWrite.__struct_fields__, _COLUMNS)
_UPSERT_BRANCH = """INSERT INTO branches (process, path, status, step_key, step_occurrence,
    changes, error, attempts, next_retry_at, callback_token)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (process, path) DO UPDATE SET status = excluded.status,
    step_key = excluded.step_key, step_occurrence = excluded.step_occurrence,
    changes = excluded.changes, error = excluded.error, attempts = excluded.attempts,
    next_retry_at = excluded.next_retry_at, callback_token = excluded.callback_token"""
# A prefix ends with "/" (or is "" for every branch): "A/1/" never matches "A/10".
_DROP_BRANCHES = """DELETE FROM branches WHERE process = ?
    AND substr(path, 1, length(CAST(? AS TEXT))) = ?"""
_LINK = """INSERT INTO subscription_processes (subscription_id, process_id) VALUES (?, ?)
    ON CONFLICT DO NOTHING"""
_RELEASE = "UPDATE subscriptions SET insync = true, updated_at = ? WHERE id = ?"


# -- checkpoints ------------------------------------------------------------------------------


def checkpoints(cps: list[Checkpoint], d: Dialect, events: list[Event]) -> Plan[set[str]]:
    """Plain checkpoints, with one statement per table for all of them; answers the ids of
    processes whose lease was lost (nothing of theirs is written). Their events go to
    ``events``, which the driver stores last."""
    kept: set[int] = set()
    writes = [cp.process for cp in cps if isinstance(cp.process, ProcessWrite)]
    if writes:
        kept.update(r[0] for r in (yield d.update_processes(writes)) or ())
    touches: dict[int, ProcessTouch] = {}
    for cp in cps:
        if isinstance(cp.process, ProcessTouch):
            seen = touches.get(cp.process.pk)
            if seen is None or seen.seq <= cp.process.seq:
                touches[cp.process.pk] = cp.process  # one per process and batch
    if touches:
        kept.update(r[0] for r in (yield d.touch_processes(list(touches.values()))) or ())
    lost: set[str] = set()
    if d.owner is not None:
        lost = {cp.process_id for cp in cps if cp.process.pk not in kept}
        if lost:
            cps = [cp for cp in cps if cp.process_id not in lost]
    drops = [(cp.process.pk, prefix, prefix) for cp in cps for prefix in cp.drop_branches]
    if drops:
        # Before the upserts: a join drops its fork's rows, the branch it returns to (kept, a
        # shorter path) is written after.
        yield Stmt(_DROP_BRANCHES, drops, Fetch.MANY)
    branches = [astuple(b) for cp in cps for b in cp.branches]
    if branches:
        yield Stmt(_UPSERT_BRANCH, branches, Fetch.MANY)
    steps = [astuple(s) for cp in cps for s in cp.steps]
    if steps:
        yield Stmt(_INSERT_STEP, steps, Fetch.MANY)
    yield from _subscriptions(cps)
    releases = [(cp.process.updated_at, cp.release) for cp in cps if cp.release is not None]
    if releases:
        yield Stmt(_RELEASE, releases, Fetch.MANY)
    actions = [astuple(a) for cp in cps for a in cp.actions]
    if actions:
        yield Stmt(_INSERT_ACTION, actions, Fetch.MANY)
    for cp in cps:
        events.extend(cp.events)
    return lost


def _subscriptions(cps: list[Checkpoint]) -> Plan[None]:
    """Save the subscriptions checkpoints changed, their relations and their links."""
    saved = [(cp, cp.subscription) for cp in cps if cp.subscription is not None]
    if not saved:
        return
    if faults.ENABLED:
        faults.point("subscription_save")
    values = [subscription_values(sub, cp.process.updated_at) for cp, sub in saved]
    yield Stmt(UPSERT_SUBSCRIPTION, values, Fetch.MANY)
    relations = {sub["id"]: cp.relations for cp, sub in saved if cp.relations is not None}
    if relations:
        yield Stmt(DROP_RELATIONS, [(sid,) for sid in relations], Fetch.MANY)
        rows = [(sid, at, to) for sid, refs in relations.items() for at, to in refs.items()]
        if rows:
            yield Stmt(INSERT_RELATION, rows, Fetch.MANY)
    yield Stmt(_LINK, [(sub["id"], cp.process_id) for cp, sub in saved], Fetch.MANY)


def checkpoint(cp: Checkpoint, d: Dialect, events: list[Event]) -> Plan[None]:
    """One checkpoint inside another operation; raises LeaseLost when fenced out."""
    if (yield from checkpoints([cp], d, events)):
        raise d.lease_lost(cp.process_id)


# -- processes --------------------------------------------------------------------------------

_PROCESS_INSERT_COLUMNS = (
    "id, workflow, target, status, pc, seq, state, reporter, subscription_id, current_step, "
    "step_key, step_occurrence, created_at, updated_at, parent_id, child_group, child_index, "
    "held, idempotency_key, trace_id, idempotency_digest"
)
_INSERT_PROCESS = f"""INSERT INTO processes ({_PROCESS_INSERT_COLUMNS}{{owner}})
    VALUES (?, ?, ?, 'created', 0, 0, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?{{mark}})
    RETURNING rowid"""
_INSERT_OWNED = _INSERT_PROCESS.format(owner=", owner", mark=", ?")
_INSERT_UNOWNED = _INSERT_PROCESS.format(owner="", mark="")


def create_process(op: NewProcess, d: Dialect, events: list[Event]) -> Plan[ProcessRow]:
    """A new process: its row, its start action and events; with a key, the process that
    holds it already answers instead; with a subscription to lock, that lock (or a refusal)."""
    if op.idempotency_key is not None:
        # Checked and inserted in one transaction: two starts with one key make one process
        # (the UNIQUE index is the backstop).
        found = yield Stmt(
            f"{SELECT_KEYED} WHERE idempotency_key = ?", (op.idempotency_key,), Fetch.ROW
        )
        if found is not None:
            return keyed_process(found, op)
    state = op.state
    if op.lock is not None:
        # Locked (on PostgreSQL): two starts on one subscription, whichever node takes them,
        # go one after the other.
        row = yield Stmt(SELECT_SUBSCRIPTION + d.lock_rows, (op.lock,), Fetch.ROW)
        if row is None:
            raise SubscriptionNotFound(f"subscription {op.lock} does not exist")
        sub = subscription_from_row(row)
        holder = None
        if not sub["insync"]:
            holder = yield Stmt(SELECT_HOLDER, (op.lock,), Fetch.VALUE)
        users: list[str] = []
        if op.target == "TERMINATE":
            users = [r[0] for r in (yield Stmt(SELECT_USERS, (op.lock,), Fetch.ROWS))]
        refuse_start(sub, op, lambda: holder, lambda: users)
        yield Stmt(
            "UPDATE subscriptions SET insync = false, updated_at = ? WHERE id = ?",
            (op.created_at, op.lock),
        )
        yield Stmt(_LINK, (op.lock, op.id))
        sub["insync"] = False
        state = {**state, "subscription": sub}
    params = (
        op.id,
        op.workflow,
        op.target,
        _encode(state),
        op.reporter,
        op.lock,
        op.first_step,
        op.first_key,
        op.created_at,
        op.created_at,
        op.parent_id,
        op.child_group,
        op.child_index,
        op.held,
        op.idempotency_key,
        op.trace_id,
        op.idempotency_digest,
    )
    if d.owner is None:
        pk = yield Stmt(_INSERT_UNOWNED, params, Fetch.VALUE)
    else:
        # A held child is nobody's until a slot frees.
        owner = None if op.held else d.owner
        pk = yield Stmt(_INSERT_OWNED, (*params, owner), Fetch.VALUE)
    yield Stmt(_INSERT_ACTION, (pk, op.created_at, START, op.by, None))
    events.extend(op.events)
    return op.created_row(pk, state)


def _create_children(
    children: list[NewProcess], d: Dialect, events: list[Event]
) -> Plan[list[ProcessRow]]:
    created = []
    for child in children:
        try:
            created.append((yield from create_process(child, d, events)))
        except (SubscriptionLocked, SubscriptionNotFound) as exc:
            raise ChildRefused(child.child_index, exc.detail) from None
    return created


def start_children(op: StartChildren, d: Dialect, events: list[Event]) -> Plan[list[ProcessRow]]:
    created = yield from _create_children(op.children, d, events)
    yield from checkpoint(op.parent, d, events)
    return created


def replace_children(
    op: ReplaceChildren, d: Dialect, events: list[Event]
) -> Plan[list[ProcessRow]]:
    yield Stmt(
        "UPDATE processes SET child_group = NULL WHERE id = ?",
        [(pid,) for pid in op.detach],
        Fetch.MANY,
    )
    return (
        yield from start_children(StartChildren(parent=op.parent, children=op.children), d, events)
    )


def parent_woke(parent_id: str, workflow: str, grandparent: str | None) -> Event:
    """The event of a parent its last child woke."""
    return Event(
        id=0,
        kind="process",
        process_id=parent_id,
        workflow=workflow,
        parent_id=grandparent,
        status=ProcessStatus.RUNNING,
        at=datetime.now(UTC),
    )


_COUNT_DOWN = """UPDATE processes SET children_pending = children_pending - 1
    WHERE id = ? AND children_group = ? AND children_pending > 0
    RETURNING status, children_pending, children_group, workflow, parent_id"""
# ``held = true``, not ``held``: an equality is what lets SQLite walk processes_by_parent
# (parent_id, child_group, held, child_index) to the first held sibling; a bare ``held`` made it
# read every child of the fan-out and sort them, for each child that finished (P8: 2.8x slower
# at 10,000 children).
#: The sibling started comes back as a process row (``SELECT_PROCESS``'s columns): its actor
#: starts without a load, and without a read after the update.
_NEXT_HELD = """UPDATE processes SET held = false{claim} WHERE rowid = (SELECT rowid FROM processes
    WHERE parent_id = ? AND child_group = ? AND held = true ORDER BY child_index LIMIT 1{lock})
    RETURNING """ + SELECT_PROCESS.removeprefix("SELECT ").removesuffix(" FROM processes")


def finish_child(
    cp: Checkpoint,
    d: Dialect,
    events: list[Event],
    later: Callable[[Checkpoint], None] | None = None,
) -> Plan[ChildFinished]:
    """A child's last checkpoint, and its parent's count of unfinished children with it.

    The parent's row is changed first, which locks it: children finishing on several nodes at
    once count down one after the other, and exactly one of them wakes the parent. The node
    that wakes it runs it (it takes the parent's lease), as it does a held sibling it starts.
    With ``later`` (no fence: nothing refuses the child's own rows, and nothing here reads
    them), those rows are handed to it, to be written with the batch's plain checkpoints.
    """
    link = cp.child_of
    assert link is not None
    row = yield Stmt(_COUNT_DOWN, (link.parent_id, link.group), Fetch.ROW)
    if later is None:
        yield from checkpoint(cp, d, events)
    else:
        events.extend(cp.events)  # in their place: before the parent's, if it wakes
        later(msgspec.structs.replace(cp, events=[]))
    if row is None or row[0] != "awaiting_children" or row[2] != link.group:
        return ChildFinished()  # aborted, or moved on: nothing to wake, nothing to start
    answer = ChildFinished()
    claim, claim_params = d.claim()
    if row[1] == 0:
        yield Stmt(
            f"UPDATE processes SET status = 'running', updated_at = ?{claim} WHERE id = ?",
            (cp.process.updated_at, *claim_params, link.parent_id),
        )
        answer.woke = link.parent_id
        events.append(parent_woke(link.parent_id, row[3], row[4]))
    started = yield Stmt(
        _NEXT_HELD.format(claim=claim, lock=d.lock_rows),
        (*claim_params, link.parent_id, link.group),
        Fetch.ROW,
    )
    if started is not None:
        answer.started_row = process_row(started)
        answer.started = answer.started_row.id
    return answer


def request_abort(op: RequestAbort, d: Dialect, events: list[Event]) -> Plan[bool]:
    if (yield Stmt(REQUEST_ABORT + " RETURNING 1", (op.by, op.pk), Fetch.VALUE)) is None:
        return False
    yield Stmt(_INSERT_ACTION, abort_request_action(op))
    return True


def set_note(op: SetNote, d: Dialect, events: list[Event]) -> Plan[bool]:
    found = yield Stmt(
        "UPDATE subscriptions SET note = ? WHERE id = ? RETURNING 1",
        (op.note, op.subscription_id),
        Fetch.VALUE,
    )
    if found is None:
        return False
    yield Stmt(INSERT_SUBSCRIPTION_ACTION, astuple_note(op))
    return True


def place(op: Positions, d: Dialect, events: list[Event]) -> Plan[None]:
    yield Stmt(
        "UPDATE processes SET step_key = ?, step_occurrence = ? WHERE rowid = ?",
        [(key, occurrence, pk) for pk, key, occurrence in op.rows],
        Fetch.MANY,
    )


def prune(op: Prune, d: Dialect, events: list[Event]) -> Plan[Pruned]:
    where, params = prunable_where(op.retention)
    if where is None:
        return Pruned()
    rows = yield Stmt(
        f"SELECT rowid, id FROM processes WHERE {where} LIMIT ?{d.skip_locked}",
        (*params, op.limit),
        Fetch.ROWS,
    )
    if not rows:
        return Pruned()
    by_pk = d.any_of("process", [r[0] for r in rows], "bigint")
    by_id = d.any_of("process_id", [r[1] for r in rows], "text")
    steps = yield Stmt(f"DELETE FROM steps WHERE {by_pk[0]}", by_pk[1], Fetch.COUNT)
    actions = yield Stmt(f"DELETE FROM actions WHERE {by_pk[0]}", by_pk[1], Fetch.COUNT)
    # Subscriptions stay; their links to the processes go. A schedule keeps its row (its last
    # run may be one of these); the runs' dedupe rows of the processes go.
    yield Stmt(f"DELETE FROM subscription_processes WHERE {by_id[0]}", by_id[1])
    yield Stmt(f"DELETE FROM schedule_runs WHERE {by_id[0]}", by_id[1])
    yield Stmt(f"DELETE FROM branches WHERE {by_pk[0]}", by_pk[1])
    by_rowid = d.any_of("rowid", [r[0] for r in rows], "bigint")
    yield Stmt(f"DELETE FROM processes WHERE {by_rowid[0]}", by_rowid[1])
    if op.retention.tasks_before is not None:
        # Fire times skipped because the previous run was still going start no process.
        yield Stmt(
            "DELETE FROM schedule_runs WHERE process_id IS NULL AND fire_at < ?",
            (op.retention.tasks_before,),
        )
    return Pruned(processes=len(rows), steps=steps, actions=actions)


# -- schedules --------------------------------------------------------------------------------

_SET_NEXT = """INSERT INTO schedules (name, next_fire_at) VALUES (?, ?)
    ON CONFLICT (name) DO UPDATE SET next_fire_at = excluded.next_fire_at"""
_SCHEDULE_RUN = """INSERT INTO schedules AS s (name, last_process_id, last_fire_at, next_fire_at,
    skipped) VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET
    last_process_id = coalesce(excluded.last_process_id, s.last_process_id),
    last_fire_at = CASE WHEN excluded.last_process_id IS NULL THEN s.last_fire_at
                        ELSE excluded.last_fire_at END,
    next_fire_at = excluded.next_fire_at, skipped = s.skipped + excluded.skipped"""
_RUN_ONCE = """INSERT INTO schedule_runs (name, fire_at, process_id) VALUES (?, ?, ?)
    ON CONFLICT DO NOTHING RETURNING 1"""


def record_schedule_run(op: ScheduleRun, d: Dialect, events: list[Event]) -> Plan[bool]:
    if (yield Stmt(_RUN_ONCE, (op.name, op.fire_at, op.process_id), Fetch.VALUE)) is None:
        return False
    yield Stmt(
        _SCHEDULE_RUN, (op.name, op.process_id, op.fire_at, op.next_fire_at, int(op.skipped))
    )
    return True


def claim(op: ScheduleClaim, d: Dialect, events: list[Event]) -> Plan[bool]:
    """A fire time is claimed by the first writer whose insert commits: the primary key makes
    it run once in the whole cluster."""
    fresh = yield Stmt(_RUN_ONCE, (op.name, op.fire_at, None), Fetch.VALUE)
    yield Stmt(_SET_NEXT, (op.name, op.next_fire_at))
    return fresh is not None


def started(op: ScheduleStarted, d: Dialect, events: list[Event]) -> Plan[None]:
    yield Stmt(
        "INSERT INTO schedule_runs (name, fire_at, process_id) VALUES (?, ?, ?) "
        "ON CONFLICT (name, fire_at) DO UPDATE SET process_id = excluded.process_id",
        (op.name, op.fire_at, op.process_id),
    )
    yield Stmt(
        "INSERT INTO schedules (name, last_process_id, last_fire_at) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET last_process_id = excluded.last_process_id, "
        "last_fire_at = excluded.last_fire_at",
        (op.name, op.process_id, op.fire_at),
    )


def plan_schedules(op: SchedulePlan, d: Dialect, events: list[Event]) -> Plan[None]:
    yield Stmt(_SET_NEXT, list(op.next_fire_at.items()), Fetch.MANY)


# -- a batch ----------------------------------------------------------------------------------

_PLANS: dict[type[Any], Callable[[Any, Dialect, list[Event]], Plan[Any]]] = {
    NewProcess: create_process,
    StartChildren: start_children,
    ReplaceChildren: replace_children,
    Checkpoint: finish_child,  # only a child's last one comes here (see batch)
    Prune: prune,
    ScheduleRun: record_schedule_run,
    ScheduleClaim: claim,
    ScheduleStarted: started,
    SchedulePlan: plan_schedules,
    Positions: place,
    SetNote: set_note,
    RequestAbort: request_abort,
}

#: What a batch answers for each operation: (committed, its answer or its refusal).
Outcome = tuple[bool, Any]


def plan_of(op: Op, d: Dialect, events: list[Event]) -> Plan[Any]:
    """The statements of one operation alone (a child's last checkpoint or a plain one)."""
    if isinstance(op, Checkpoint) and op.child_of is None:
        return checkpoint(op, d, events)
    return _PLANS[type(op)](op, d, events)


def _later(i: int, plain: list[tuple[int, Checkpoint]], waiting: set[str], cp: Checkpoint) -> None:
    plain.append((i, cp))
    waiting.add(cp.process_id)


def batch(ops: Sequence[Op], d: Dialect, events: list[Event]) -> Plan[list[Outcome]]:
    """Every operation of one commit, in order; the events to store go to ``events``.

    Plain checkpoints are gathered and written together; any other operation first writes
    those before it (it may read what they wrote; a child's last checkpoint only when its
    parent's is among them), and runs inside a savepoint: a refusal
    (locked, not found, the lease lost) or a bug in it undoes only that operation, so one bad
    operation does not sink the others. A database error fails the whole batch (see
    ``after_failure``).
    """
    results: list[Outcome] = [(True, None)] * len(ops)
    plain: list[tuple[int, Checkpoint]] = []
    waiting: set[str] = set()  # the processes of ``plain``

    def flush() -> Plan[None]:
        if not plain:
            return
        lost = yield from checkpoints([cp for _, cp in plain], d, events)
        for i, cp in plain:
            if cp.process_id in lost:
                results[i] = (False, d.lease_lost(cp.process_id))
        plain.clear()
        waiting.clear()

    for i, op in enumerate(ops):
        if isinstance(op, Checkpoint):
            link = op.child_of
            if link is None:
                plain.append((i, op))
                waiting.add(op.process_id)
                continue
            # A child's last checkpoint reads only its parent's row and its held siblings'
            # (none of which runs, so none is among the plain ones): the plain checkpoints
            # before it wait for the next flush unless its parent's is among them. A fan-out's
            # children finish among each other's steps; flushed before each finishing child,
            # a batch was written a few rows at a time (P8).
            if link.parent_id in waiting:
                yield from flush()
            if d.owner is None:
                # No fence, so nothing refuses it: like a plain insert, it needs no savepoint
                # (a failure fails the batch), and its own rows go with the plain ones. Of the
                # seven statements a finishing child cost, three are left.
                later = functools.partial(_later, i, plain, waiting)
                results[i] = (True, (yield from finish_child(op, d, events, later)))
                continue
        else:
            yield from flush()
        if isinstance(op, NewProcess) and op.lock is None and op.idempotency_key is None:
            # A plain insert is never refused, and a savepoint costs a round trip; a failure
            # fails the batch, which is then committed one operation at a time.
            results[i] = (True, (yield from create_process(op, d, events)))
            continue
        yield _SAVEPOINT
        mark = len(events)
        try:
            value = yield from _PLANS[type(op)](op, d, events)
        except Exception as exc:  # refused (locked, not found, lease), or a bug in this one
            del events[mark:]
            yield _UNDO
            results[i] = (False, exc)
        else:
            results[i] = (True, value)
        yield _KEEP
    yield from flush()
    return results


_SAVEPOINT = Stmt("SAVEPOINT op")
_UNDO = Stmt("ROLLBACK TO SAVEPOINT op")
_KEEP = Stmt("RELEASE SAVEPOINT op")


class Failure(enum.Enum):
    """What a writer does with a batch whose commit failed (``after_failure``)."""

    #: Commit each operation on its own: one bad operation must not sink the others.
    SPLIT = "split"
    #: Fail every operation of the batch with a StoreError: the database refused.
    DATABASE = "database"
    #: Fail the operation with its own exception: a bug in it, logged.
    BUG = "bug"


def after_failure(size: int, *, database: bool, everyone: bool) -> Failure:
    """The group-commit policy for a failed batch of ``size`` operations. ``database``: the
    database raised (rather than our code); ``everyone``: the failure fails every operation
    alike (the lock, the disk, a lost connection), so committing them one by one would only
    fail each again, each waiting out a timeout."""
    if size > 1 and not everyone:
        return Failure.SPLIT
    return Failure.DATABASE if database else Failure.BUG
