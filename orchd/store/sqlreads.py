"""The reads both backends answer with the same SQL, the functions that turn rows into
records (and a subscription into the row it is written as), and the rules their writers share
(which processes retention lets go): one place for each, so SQLite and PostgreSQL cannot drift
apart.

Queries are written with SQLite's ``?`` placeholders; the PostgreSQL store numbers them
(``$1, $2, ...``) before it runs them. What differs between the two (the connection, a list
parameter, a prefix search, the deletes of pruning and event bounds) stays in each backend's
own module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from orchd.errors import (
    FormValidationError,
    IdempotencyConflict,
    IdempotencyKeyReused,
    SubscriptionLocked,
)
from orchd.model import (
    SUBSCRIPTION_FIELDS,
    Event,
    LinkedProcess,
    ProcessStatus,
    ProcessSummary,
    Related,
    Subscription,
    SubscriptionAction,
    SubscriptionStatus,
    Target,
    utc,
)
from orchd.products import search_text
from orchd.status import FINAL
from orchd.store.base import (
    ActionRow,
    BranchRow,
    NewProcess,
    Placement,
    ProcessRecords,
    ProcessRow,
    Pruned,
    RequestAbort,
    Retention,
    ScheduleRow,
    SetNote,
    StepRow,
    TimedProcess,
)
from orchd.tracing import trace_id_of


def prunable_where(retention: Retention) -> tuple[str | None, tuple[float, ...]]:
    """The condition on ``processes`` rows that ``retention`` lets go (None: none), with
    ``?`` placeholders (the PostgreSQL store numbers them)."""
    ages: list[str] = []
    params: list[float] = []
    if retention.tasks_before is not None:
        ages.append("(target = 'SYSTEM' AND updated_at < ?)")
        params.append(retention.tasks_before)
    if retention.workflows_before is not None:
        ages.append("(target != 'SYSTEM' AND updated_at < ?)")
        params.append(retention.workflows_before)
    if not ages:
        return None, ()
    # A finished child of a parent still waiting (or failed at its children step) stays: the
    # parent collects it when it joins, however long its fan-out takes.
    where = (
        f"status IN ('completed', 'aborted') AND ({' OR '.join(ages)}) AND (parent_id IS NULL "
        "OR parent_id NOT IN (SELECT id FROM processes WHERE status NOT IN "
        "('completed', 'aborted')))"
    )
    return where, tuple(params)


def keyed_process(found: Iterable[Any], op: NewProcess) -> ProcessRow:
    """What a start with an Idempotency-Key that the process ``found`` holds already answers
    (a row of ``SELECT_KEYED``: the digest of its input, then the process): that process,
    unless the start asks for another workflow or gives another input."""
    digest, *columns = found
    process = process_row(columns)
    if process.workflow != op.workflow:
        raise IdempotencyConflict(
            f"Idempotency-Key {op.idempotency_key!r} started process {process.id} "
            f"of workflow {process.workflow!r}, not {op.workflow!r}"
        )
    if None not in (digest, op.idempotency_digest) and digest != op.idempotency_digest:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {op.idempotency_key!r} started process {process.id} with "
            "another input; a new start needs a new key"
        )
    return process


def refuse_terminated(sub: dict[str, Any], lock: str) -> None:
    """A start may not lock a terminated subscription."""
    if sub["status"] == "terminated":
        raise SubscriptionLocked(f"subscription {lock} is terminated", reason="status")


def not_insync(lock: str, holder: str | None) -> SubscriptionLocked:
    """The refusal of a start on a subscription another process holds (named when found)."""
    who = f"process {holder} holds it" if holder else "another process holds it"
    return SubscriptionLocked(
        f"subscription {lock} is not insync: {who}",
        reason="locked",
        extra={"process_id": holder} if holder else None,
    )


async def _no_branches() -> list[BranchRow]:
    return []


_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

_PROCESS_COLUMNS = (
    "rowid", "id", "workflow", "target", "status", "pc", "seq", "state", "reporter",
    "subscription_id", "current_step", "error", "form", "callback_token", "attempts",
    "next_retry_at", "created_at", "updated_at", "step_key", "step_occurrence", "parent_id",
    "child_group", "child_index", "children_group", "children_pending", "held", "trace_id",
    "abort_requested",
)  # fmt: skip
SELECT_PROCESS = f"SELECT {', '.join(_PROCESS_COLUMNS)} FROM processes"
#: The process that holds an Idempotency-Key, after the digest of the input it started with.
SELECT_KEYED = f"SELECT idempotency_digest, {', '.join(_PROCESS_COLUMNS)} FROM processes"
_SUMMARY_COLUMNS = (
    "id, workflow, target, status, created_at, updated_at, reporter, current_step, "
    "subscription_id, error, parent_id, "
    "(SELECT customer_id FROM subscriptions s WHERE s.id = processes.subscription_id), "
    "(SELECT description FROM subscriptions s WHERE s.id = processes.subscription_id)"
)
SELECT_SUBSCRIPTION = f"SELECT {', '.join(SUBSCRIPTION_FIELDS)} FROM subscriptions WHERE id = ?"


def process_row(row: Iterable[Any]) -> ProcessRow:
    """A ``processes`` row (columns in ``_PROCESS_COLUMNS`` order) as a record."""
    (pk, pid, workflow, target, status, pc, seq, state, reporter, subscription_id, current,
     error, form, token, attempts, next_retry_at, created_at, updated_at, key,
     occurrence, parent_id, child_group, child_index, children_group,
     children_pending, held, trace_id, abort_requested) = row  # fmt: skip
    return ProcessRow(
        pk=pk,
        id=pid,
        workflow=workflow,
        target=target,
        status=status,
        pc=pc,
        seq=seq,
        state=_decode(state),
        reporter=reporter,
        subscription_id=subscription_id,
        current_step=current,
        error=error,
        form=form,
        callback_token=token,
        attempts=attempts,
        next_retry_at=next_retry_at,
        created_at=created_at,
        updated_at=updated_at,
        step_key=key,
        step_occurrence=occurrence or 0,
        parent_id=parent_id,
        child_group=child_group,
        child_index=child_index,
        children_group=children_group,
        children_pending=children_pending,
        held=bool(held),
        # NULL for a process from before traces: its trace id is derived from its id.
        trace_id=trace_id or trace_id_of(pid),
        abort_requested=abort_requested,
    )


def subscription_from_row(row: Iterable[Any]) -> dict[str, Any]:
    """A subscriptions row (columns in SUBSCRIPTION_FIELDS order) as State holds it."""
    sub = dict(zip(SUBSCRIPTION_FIELDS, row, strict=True))
    sub["insync"] = bool(sub["insync"])
    sub["attributes"] = _decode(sub["attributes"])
    return sub


def subscription_values(sub: dict[str, Any], now: float) -> tuple[Any, ...]:
    """What a subscription in State is written as: the ``subscriptions`` columns in
    ``SUBSCRIPTION_FIELDS`` order, then its search text, created and updated times (both
    ``now``)."""
    return (
        sub["id"],
        sub["product"],
        sub["customer_id"],
        sub.get("description") or "",
        sub.get("status") or "initial",
        bool(sub.get("insync")),
        sub.get("start_date"),
        sub.get("end_date"),
        _encode(sub.get("attributes") or {}),
        int(sub.get("version") or 0),
        sub.get("note"),
        search_text(sub),
        now,
        now,
    )


#: Insert or update a subscription (values: ``subscription_values``). The note is the
#: operator's: a workflow's save never writes over it.
UPSERT_SUBSCRIPTION = """INSERT INTO subscriptions (id, product, customer_id, description,
    status, insync, start_date, end_date, attributes, version, note, search, created_at,
    updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET product = excluded.product,
    customer_id = excluded.customer_id, description = excluded.description,
    status = excluded.status, insync = excluded.insync, start_date = excluded.start_date,
    end_date = excluded.end_date, attributes = excluded.attributes,
    version = excluded.version, search = excluded.search, updated_at = excluded.updated_at"""
#: A saved subscription's relations are replaced by the ones its Refs name now.
DROP_RELATIONS = "DELETE FROM subscription_relations WHERE subscription_id = ?"
INSERT_RELATION = """INSERT INTO subscription_relations (subscription_id, path, depends_on)
    VALUES (?, ?, ?)"""
#: The unfinished process that holds a subscription (for the message of a refused start).
SELECT_HOLDER = """SELECT id FROM processes WHERE subscription_id = ?
    AND status NOT IN ('completed', 'aborted') ORDER BY rowid DESC LIMIT 1"""
#: The subscriptions that use one and are not terminated (a TERMINATE is refused while any).
SELECT_USERS = """SELECT s.id FROM subscription_relations r
    JOIN subscriptions s ON s.id = r.subscription_id
    WHERE r.depends_on = ? AND s.status != 'terminated' ORDER BY s.id"""


INSERT_SUBSCRIPTION_ACTION = """INSERT INTO subscription_actions (subscription_id, at, action,
    actor, detail) VALUES (?, ?, ?, ?, ?)"""


#: An abort asked of a running process, committed before it is acknowledged: the process row
#: says who asked (applied at its next step boundary, after a restart too) and the audit trail
#: records the request.
REQUEST_ABORT = """UPDATE processes SET abort_requested = ? WHERE rowid = ?
    AND status NOT IN ('completed', 'aborted')"""


def abort_request_action(op: RequestAbort) -> tuple[Any, ...]:
    """The ``actions`` row that records an abort asked of a running process."""
    return (op.pk, op.at, "abort", op.by, "requested")


def astuple_note(op: SetNote) -> tuple[Any, ...]:
    """The ``subscription_actions`` row that records a note being set."""
    return (op.subscription_id, op.at, "note", op.by, op.note)


def refuse_start(
    sub: dict[str, Any],
    op: NewProcess,
    holder: Callable[[], str | None],
    users: Callable[[], list[str]],
) -> None:
    """Whether a start may take the subscription it names (``op.lock``), read in the start's
    transaction: the refusals come in the order a person would fix them."""
    lock = sub["id"]
    if op.product is not None and sub["product"] != op.product:
        raise FormValidationError(
            f"subscription {lock} is a {sub['product']!r} subscription, not {op.product!r}",
            [{"loc": ["subscription_id"], "msg": f"not a {op.product!r} subscription"}],
        )
    if not sub["insync"]:
        raise not_insync(lock, holder())
    if op.usable_when is not None and sub["status"] not in op.usable_when:
        raise SubscriptionLocked(
            f"{op.workflow} may start only on a subscription that is "
            f"{' or '.join(op.usable_when)}; subscription {lock} is {sub['status']}",
            reason="status",
        )
    refuse_terminated(sub, lock)
    if op.expect_version is not None and op.expect_version != sub["version"]:
        raise SubscriptionLocked(
            f"subscription {lock} has changed: it is at version {sub['version']}, "
            f"the start was made at version {op.expect_version}",
            reason="stale",
        )
    if op.target == "TERMINATE":
        using = users()
        if using:
            raise SubscriptionLocked(
                f"subscription {lock} is in use by {', '.join(using)}",
                reason="in_use",
                extra={"in_use_by": using},
            )


def _summary(row: Iterable[Any]) -> ProcessSummary:
    (pid, workflow, target, status, created, updated, reporter, current, sid, error, parent,
     customer, description) = row  # fmt: skip
    return ProcessSummary(
        id=pid,
        workflow=workflow,
        target=Target(target),
        status=ProcessStatus(status),
        created_at=utc(created),
        updated_at=utc(updated),
        reporter=reporter,
        current_step=current,
        subscription_id=sid,
        error=error,
        parent_id=parent,
        customer_id=customer,
        subscription_description=description,
    )


_decode_event = msgspec.json.Decoder(Event).decode


def _literal(q: str) -> str:
    """A search's text, lower-cased, as the literal part of a LIKE pattern: its own wildcards
    are taken literally."""
    return q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


#: Filters the API may pass to a page (column names, never user text).
_FILTERABLE = frozenset({"status", "workflow", "parent_id", "customer_id", "product"})


class SqlReads:
    """The queries of ``orchd.store.base.Store`` that read alike on both backends, over the
    backend's own ``fetchall`` and ``lookup``.

    A *lookup* finds its rows by key on an index, so its cost follows the size of its answer
    (which the caller goes on to handle anyway): a backend may run it where that is cheapest,
    even on the event loop. Anything that may scan (counts, pages, filters without an index)
    is a ``fetchall``.
    """

    #: Whether ``records`` issues its reads at once (they overlap on a pool of connections)
    #: or one after another (each is answered at once, so gathering would only add turns of
    #: the event loop).
    READS_OVERLAP = True

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    async def lookup(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self.fetchall(sql, params)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def lookup_one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self.lookup(sql, params)
        return rows[0] if rows else None

    async def ping(self) -> None:
        await self.fetchone("SELECT 1")

    async def process(self, pid: str) -> ProcessRow | None:
        row = await self.lookup_one(f"{SELECT_PROCESS} WHERE id = ?", (pid,))
        return None if row is None else process_row(row)

    async def keyed_process(self, key: str) -> ProcessRow | None:
        row = await self.lookup_one(f"{SELECT_PROCESS} WHERE idempotency_key = ?", (key,))
        return None if row is None else process_row(row)

    async def unplaced_processes(self) -> list[ProcessRow]:
        rows = await self.fetchall(
            f"{SELECT_PROCESS} WHERE step_key IS NULL AND status NOT IN ('completed', 'aborted')"
        )
        return [process_row(row) for row in rows]

    async def timed_processes(self) -> list[TimedProcess]:
        rows = await self.fetchall(
            "SELECT id, status, next_retry_at, callback_token FROM processes "
            "WHERE status IN ('waiting', 'awaiting_callback') AND next_retry_at IS NOT NULL"
        )
        return [TimedProcess(id=i, status=s, at=at, callback_token=t) for i, s, at, t in rows]

    async def process_waiting_for(self, token: str) -> str | None:
        row = await self.lookup_one("SELECT id FROM processes WHERE callback_token = ?", (token,))
        if row is None:
            # A branch's wait (README "Parallel branches"): the token names the branch's process.
            row = await self.lookup_one(
                "SELECT p.id FROM branches b JOIN processes p ON p.rowid = b.process "
                "WHERE b.callback_token = ?",
                (token,),
            )
        return None if row is None else str(row[0])

    async def steps(self, pk: int) -> list[StepRow]:
        rows = await self.lookup(
            "SELECT name, status, started_at, finished_at, error, traceback, delta, key, actor, "
            "reason, branch FROM steps WHERE process = ? ORDER BY seq",
            (pk,),
        )
        return [
            StepRow(
                name=name,
                status=status,
                started_at=started,
                finished_at=finished,
                error=error,
                traceback=tb,
                delta=delta,
                key=key,
                by=by,
                reason=reason,
                branch=branch,
            )
            for name, status, started, finished, error, tb, delta, key, by, reason, branch in (rows)
        ]

    async def branches(self, pk: int) -> list[BranchRow]:
        rows = await self.lookup(
            "SELECT process, path, status, step_key, step_occurrence, changes, error, attempts, "
            "next_retry_at, callback_token FROM branches WHERE process = ?",
            (pk,),
        )
        return [msgspec.convert(tuple(row), BranchRow) for row in rows]

    async def fork_records(self, pk: int) -> list[tuple[str | None, str, float]]:
        rows = await self.lookup(
            "SELECT branch, status, started_at FROM steps WHERE process = ? AND seq > "
            "(SELECT coalesce(max(seq), -1) FROM steps WHERE process = ? AND branch IS NULL "
            "AND status <> 'failed') ORDER BY seq",
            (pk, pk),
        )
        return [(branch, status, float(started)) for branch, status, started in rows]

    async def actions(self, pk: int) -> list[ActionRow]:
        rows = await self.lookup(
            "SELECT at, action, actor, detail FROM actions WHERE process = ? ORDER BY rowid",
            (pk,),
        )
        return [ActionRow(at=at, action=a, by=who, detail=d) for at, a, who, d in rows]

    async def children(self, parent_id: str, group: int | None = None) -> list[ProcessRow]:
        if group is None:
            rows = await self.lookup(
                f"{SELECT_PROCESS} WHERE parent_id = ? ORDER BY rowid", (parent_id,)
            )
        else:
            rows = await self.lookup(
                f"{SELECT_PROCESS} WHERE parent_id = ? AND child_group = ? ORDER BY child_index",
                (parent_id, group),
            )
        return [process_row(row) for row in rows]

    async def child_links(self, parent_id: str) -> list[LinkedProcess]:
        rows = await self.lookup(
            "SELECT id, workflow, status, child_group, child_index FROM processes "
            "WHERE parent_id = ? ORDER BY child_group, child_index, rowid",
            (parent_id,),
        )
        # A fan-out's group is the parent's step count when it started: numbered 0, 1, ...
        groups = {g: n for n, g in enumerate(sorted({r[3] for r in rows if r[3] is not None}))}
        return [
            LinkedProcess(
                id=i,
                workflow=w,
                status=ProcessStatus(s),
                fan_out=None if g is None else groups[g],
                element=n,
            )
            for i, w, s, g, n in rows
        ]

    async def records(self, row: ProcessRow, *, branches: bool) -> ProcessRecords:
        if self.READS_OVERLAP:
            steps, actions, standing, children = await asyncio.gather(
                self.steps(row.pk),
                self.actions(row.pk),
                self.branches(row.pk) if branches else _no_branches(),
                self.child_links(row.id),
            )
        else:
            steps = await self.steps(row.pk)
            actions = await self.actions(row.pk)
            standing = await self.branches(row.pk) if branches else []
            children = await self.child_links(row.id)
        return ProcessRecords(steps=steps, actions=actions, branches=standing, children=children)

    async def unfinished_children_of_aborted(self) -> list[tuple[str, str]]:
        rows = await self.fetchall(
            "SELECT c.id, c.parent_id FROM processes c JOIN processes p ON p.id = c.parent_id "
            "WHERE p.status = 'aborted' AND c.status NOT IN ('completed', 'aborted')"
        )
        return [(str(child), str(parent)) for child, parent in rows]

    async def counts(self) -> dict[str, int]:
        rows = await self.fetchall("SELECT status, count(*) FROM processes GROUP BY status")
        return {status: n for status, n in rows}

    async def counts_by_workflow(self) -> dict[tuple[str, str], int]:
        rows = await self.fetchall(
            "SELECT workflow, status, count(*) FROM processes GROUP BY workflow, status"
        )
        return {(workflow, status): n for workflow, status, n in rows}

    async def _page(
        self,
        table: str,
        columns: str,
        filters: dict[str, str],
        limit: int,
        before: int | None,
        conditions: Sequence[tuple[str, tuple[Any, ...]]] = (),
    ) -> tuple[list[Any], int | None]:
        """One page of ``table``, newest first; the cursor is the last row's rowid.
        ``conditions``: more conditions (SQL with placeholders, and their values)."""
        for column in filters:
            if column not in _FILTERABLE:
                raise ValueError(f"not a filter: {column}")
        where = [f"{column} = ?" for column in filters]
        params: list[Any] = list(filters.values())
        for sql, values in conditions:
            where.append(sql)
            params.extend(values)
        if before is not None:
            where.append("rowid < ?")
            params.append(min(before, 2**63 - 1))  # integers are 64-bit on both backends
        rows = await self.fetchall(
            f"SELECT rowid, {columns} FROM {table}"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY rowid DESC LIMIT ?",
            (*params, limit + 1),
        )
        more = len(rows) > limit
        return rows[:limit], rows[limit - 1][0] if more else None

    async def process_page(
        self,
        filters: dict[str, str],
        limit: int,
        before: int | None,
        q: str | None = None,
        top_level: bool = False,
    ) -> tuple[list[ProcessSummary], int | None]:
        conditions: list[tuple[str, tuple[Any, ...]]] = []
        if top_level:
            conditions.append(("parent_id IS NULL", ()))
        if q:
            # A process id as `show` prints it (its first characters), a workflow's name, or
            # the text of its subscription as the subscriptions' search finds it.
            text = _literal(q)
            conditions.append(
                (
                    "(id LIKE ? ESCAPE '\\' OR lower(workflow) LIKE ? ESCAPE '\\' "
                    "OR subscription_id IN "
                    "(SELECT id FROM subscriptions WHERE search LIKE ? ESCAPE '\\'))",
                    (f"{text}%", f"%{text}%", f"%{text}%"),
                )
            )
        rows, cursor = await self._page(
            "processes", _SUMMARY_COLUMNS, filters, limit, before, conditions
        )
        return [_summary(tuple(r)[1:]) for r in rows], cursor

    async def prunable(self, retention: Retention) -> Pruned:
        where, params = prunable_where(retention)
        if where is None:
            return Pruned()
        row = await self.fetchone(
            f"""SELECT count(*), coalesce(sum(steps), 0), coalesce(sum(actions), 0) FROM (
                SELECT (SELECT count(*) FROM steps WHERE process = p.rowid) AS steps,
                       (SELECT count(*) FROM actions WHERE process = p.rowid) AS actions
                FROM processes AS p WHERE {where}) AS counted""",
            params,
        )
        assert row is not None
        # PostgreSQL sums to numeric.
        return Pruned(processes=row[0], steps=int(row[1]), actions=int(row[2]))

    # -- subscriptions --

    async def subscription(self, sid: str) -> Subscription | None:
        row = await self.lookup_one(SELECT_SUBSCRIPTION, (sid,))
        return None if row is None else Subscription(**subscription_from_row(row))

    async def subscription_processes(self, sid: str) -> list[LinkedProcess]:
        rows = await self.lookup(
            "SELECT p.id, p.workflow, p.status FROM subscription_processes l "
            "JOIN processes p ON p.id = l.process_id WHERE l.subscription_id = ? "
            "ORDER BY p.rowid",
            (sid,),
        )
        return [LinkedProcess(id=i, workflow=w, status=ProcessStatus(s)) for i, w, s in rows]

    async def subscription_page(
        self, filters: dict[str, str], limit: int, before: int | None, q: str | None = None
    ) -> tuple[list[Subscription], int | None]:
        columns = ", ".join(SUBSCRIPTION_FIELDS)
        text: list[tuple[str, tuple[Any, ...]]] = []
        if q:
            # The search column holds the lower-cased text values.
            text.append(("search LIKE ? ESCAPE '\\'", (f"%{_literal(q)}%",)))
        rows, cursor = await self._page("subscriptions", columns, filters, limit, before, text)
        return [Subscription(**subscription_from_row(tuple(r)[1:])) for r in rows], cursor

    async def relations(self, sid: str) -> tuple[list[Related], list[Related]]:
        depends = await self.lookup(
            "SELECT s.id, s.product, s.status, s.description, r.path "
            "FROM subscription_relations r JOIN subscriptions s ON s.id = r.depends_on "
            "WHERE r.subscription_id = ? ORDER BY r.path",
            (sid,),
        )
        users = await self.lookup(
            "SELECT s.id, s.product, s.status, s.description, r.path "
            "FROM subscription_relations r JOIN subscriptions s ON s.id = r.subscription_id "
            "WHERE r.depends_on = ? ORDER BY s.rowid, r.path",
            (sid,),
        )

        def related(rows: list[Any]) -> list[Related]:
            return [
                Related(id=i, product=p, status=SubscriptionStatus(st), description=d, path=at)
                for i, p, st, d, at in rows
            ]

        return related(depends), related(users)

    async def subscription_choices(
        self, product: str, statuses: tuple[str, ...] | None, unused: bool, limit: int
    ) -> list[tuple[str, str]]:
        """(id, description) of the subscriptions of ``product`` (in ``statuses``; with
        ``unused``, those no live subscription depends on), oldest first."""
        where, params = ["product = ?"], [product]
        if statuses:
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        if unused:
            where.append(
                "NOT EXISTS (SELECT 1 FROM subscription_relations r JOIN subscriptions u "
                "ON u.id = r.subscription_id WHERE r.depends_on = s.id "
                "AND u.status != 'terminated')"
            )
        rows = await self.fetchall(
            f"SELECT s.id, s.description FROM subscriptions s WHERE {' AND '.join(where)} "
            "ORDER BY s.rowid LIMIT ?",
            (*params, limit),
        )
        return [(str(i), str(d)) for i, d in rows]

    async def subscription_actions(self, sid: str) -> list[SubscriptionAction]:
        rows = await self.lookup(
            "SELECT at, action, actor, detail FROM subscription_actions "
            "WHERE subscription_id = ? ORDER BY at",
            (sid,),
        )
        return [
            SubscriptionAction(at=utc(at), action=a, actor=who, detail=d) for at, a, who, d in rows
        ]

    async def holder(self, sid: str) -> str | None:
        row = await self.lookup_one(SELECT_HOLDER, (sid,))
        return None if row is None else str(row[0])

    # -- schedules --

    async def schedules(self) -> list[ScheduleRow]:
        rows = await self.fetchall(
            "SELECT name, last_process_id, last_fire_at, next_fire_at, skipped FROM schedules"
        )
        return [
            ScheduleRow(
                name=n, last_process_id=p, last_fire_at=last, next_fire_at=nxt, skipped=skipped
            )
            for n, p, last, nxt, skipped in rows
        ]

    async def latest_started_by(self, reporter: str, after_pid: str | None) -> ProcessRow | None:
        row = await self.fetchone(
            f"{SELECT_PROCESS} WHERE reporter = ? AND rowid > "
            "coalesce((SELECT rowid FROM processes WHERE id = ?), 0) ORDER BY rowid DESC LIMIT 1",
            (reporter, after_pid),
        )
        return None if row is None else process_row(row)

    async def events_after(self, after: int, limit: int) -> list[Event]:
        rows = await self.fetchall(
            "SELECT id, data FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        )
        return [msgspec.structs.replace(_decode_event(data), id=eid) for eid, data in rows]

    async def placements(self) -> list[Placement]:
        """Every unfinished process, oldest first, with where it and its started branches
        stand (``orchd check --workflows``)."""
        finished = ", ".join(f"'{s.value}'" for s in FINAL)
        rows = await self.fetchall(
            "SELECT rowid, id, workflow, status, pc, current_step, step_key, step_occurrence "
            f"FROM processes WHERE status NOT IN ({finished}) ORDER BY rowid"
        )
        places: dict[int, list[tuple[str, str, int]]] = {}
        for pk, path, key, occurrence in await self.fetchall(
            "SELECT b.process, b.path, b.step_key, b.step_occurrence FROM branches b "
            f"JOIN processes p ON p.rowid = b.process WHERE p.status NOT IN ({finished}) "
            "AND b.step_key IS NOT NULL ORDER BY b.process, b.path"
        ):
            places.setdefault(pk, []).append((path, key, occurrence or 0))
        return [
            Placement(
                id=pid, workflow=name, status=status, pc=pc, current_step=current,
                step_key=key, step_occurrence=occurrence or 0, branches=places.get(pk, []),
            )
            for pk, pid, name, status, pc, current, key, occurrence in rows
        ]  # fmt: skip
