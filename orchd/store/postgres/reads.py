"""The PostgreSQL read side: the queries of ``orchd.store.base.Store``, on a connection pool.

Rows are turned into records by the same functions as SQLite's (``process_row``, ...): the
process columns are selected in the order ``SELECT_PROCESS`` names them, so a column added to
both schemas is read the same way on both backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from orchd.errors import StoreError
from orchd.model import (
    SUBSCRIPTION_FIELDS,
    Event,
    LinkedProcess,
    ProcessStatus,
    ProcessSummary,
    Subscription,
    Target,
    utc,
)
from orchd.store.base import (
    ActionRow,
    BranchRow,
    ProcessRow,
    Pruned,
    Retention,
    ScheduleRow,
    StepRow,
    TimedProcess,
)
from orchd.store.sqlite.reads import SELECT_PROCESS, process_row, subscription_from_row

_SUMMARY_COLUMNS = (
    "id, workflow, target, status, created_at, updated_at, reporter, current_step, "
    "subscription_id, error, parent_id"
)
SELECT_SUBSCRIPTION = f"SELECT {', '.join(SUBSCRIPTION_FIELDS)} FROM subscriptions WHERE id = $1"
_decode_event = msgspec.json.Decoder(Event).decode
#: Filters the API may pass to a page (column names, never user text).
_FILTERABLE = frozenset({"status", "workflow", "parent_id", "customer_id", "product"})


def numbered(sql: str) -> str:
    """``?`` placeholders (SQLite's, which tests and tools write) as ``$1, $2, ...``."""
    out: list[str] = []
    n = 0
    quoted = False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
        if ch == "?" and not quoted:
            n += 1
            out.append(f"${n}")
        else:
            out.append(ch)
    return "".join(out)


def prunable_where(retention: Retention, first: int = 1) -> tuple[str | None, list[float]]:
    """The condition on ``processes`` rows that ``retention`` lets go (None: none); its
    parameters are numbered from ``first``."""
    ages: list[str] = []
    params: list[float] = []
    if retention.tasks_before is not None:
        ages.append(f"(target = 'SYSTEM' AND updated_at < ${first + len(params)})")
        params.append(retention.tasks_before)
    if retention.workflows_before is not None:
        ages.append(f"(target != 'SYSTEM' AND updated_at < ${first + len(params)})")
        params.append(retention.workflows_before)
    if not ages:
        return None, []
    # A finished child of a parent still waiting stays: the parent collects it when it joins.
    where = (
        f"status IN ('completed', 'aborted') AND ({' OR '.join(ages)}) AND (parent_id IS NULL "
        "OR parent_id NOT IN (SELECT id FROM processes WHERE status NOT IN "
        "('completed', 'aborted')))"
    )
    return where, params


def _summary(row: Sequence[Any]) -> ProcessSummary:
    pid, workflow, target, status, created, updated, reporter, current, sid, error, parent = row
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
    )


class PgReads:
    """Queries over committed state, each on a connection borrowed from the pool."""

    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[asyncpg.Record]:
        """Run a query (also for tests and tools that inspect the database)."""
        if self._pool is None:
            raise StoreError("the store is closed")
        if "?" in sql:
            sql = numbered(sql)
        try:
            return list(await self._pool.fetch(sql, *params))
        except (asyncpg.PostgresError, OSError) as exc:
            raise StoreError(f"database read failed: {exc}") from None

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> asyncpg.Record | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def ping(self) -> None:
        await self.fetchone("SELECT 1")

    # -- processes --

    async def process(self, pid: str) -> ProcessRow | None:
        row = await self.fetchone(f"{SELECT_PROCESS} WHERE id = $1", (pid,))
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
        row = await self.fetchone("SELECT id FROM processes WHERE callback_token = $1", (token,))
        if row is None:
            # A branch's wait (contract §8): the token names the branch's process.
            row = await self.fetchone(
                "SELECT p.id FROM branches b JOIN processes p ON p.rowid = b.process "
                "WHERE b.callback_token = $1",
                (token,),
            )
        return None if row is None else str(row[0])

    async def steps(self, pk: int) -> list[StepRow]:
        rows = await self.fetchall(
            "SELECT name, status, started_at, finished_at, error, traceback, delta, key, actor, "
            "reason, branch FROM steps WHERE process = $1 ORDER BY seq",
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
                actor=actor,
                reason=reason,
                branch=branch,
            )
            for name, status, started, finished, error, tb, delta, key, actor, reason, branch in (
                rows
            )
        ]

    async def branches(self, pk: int) -> list[BranchRow]:
        rows = await self.fetchall(
            "SELECT process, path, status, step_key, step_occurrence, changes, error, attempts, "
            "next_retry_at, callback_token FROM branches WHERE process = $1",
            (pk,),
        )
        return [msgspec.convert(tuple(row), BranchRow) for row in rows]

    async def actions(self, pk: int) -> list[ActionRow]:
        rows = await self.fetchall(
            "SELECT at, action, actor, detail FROM actions WHERE process = $1 ORDER BY rowid",
            (pk,),
        )
        return [ActionRow(at=at, action=a, actor=who, detail=d) for at, a, who, d in rows]

    async def children(self, parent_id: str, group: int | None = None) -> list[ProcessRow]:
        if group is None:
            rows = await self.fetchall(
                f"{SELECT_PROCESS} WHERE parent_id = $1 ORDER BY rowid", (parent_id,)
            )
        else:
            rows = await self.fetchall(
                f"{SELECT_PROCESS} WHERE parent_id = $1 AND child_group = $2 ORDER BY child_index",
                (parent_id, group),
            )
        return [process_row(row) for row in rows]

    async def child_links(self, parent_id: str) -> list[LinkedProcess]:
        rows = await self.fetchall(
            "SELECT id, workflow, status FROM processes WHERE parent_id = $1 "
            "ORDER BY child_index, rowid",
            (parent_id,),
        )
        return [LinkedProcess(id=i, workflow=w, status=ProcessStatus(s)) for i, w, s in rows]

    async def unfinished_children_of_aborted(self) -> list[tuple[str, str]]:
        rows = await self.fetchall(
            "SELECT c.id, c.parent_id FROM processes c JOIN processes p ON p.id = c.parent_id "
            "WHERE p.status = 'aborted' AND c.status NOT IN ('completed', 'aborted')"
        )
        return [(str(child), str(parent)) for child, parent in rows]

    async def statuses(self, pids: list[str]) -> dict[str, str]:
        if not pids:
            return {}
        rows = await self.fetchall(
            "SELECT id, status FROM processes WHERE id = ANY($1::text[])", (pids,)
        )
        return {pid: status for pid, status in rows}

    async def counts(self) -> dict[str, int]:
        rows = await self.fetchall("SELECT status, count(*) FROM processes GROUP BY status")
        return {status: n for status, n in rows}

    async def counts_by_workflow(self) -> dict[tuple[str, str], int]:
        rows = await self.fetchall(
            "SELECT workflow, status, count(*) FROM processes GROUP BY workflow, status"
        )
        return {(workflow, status): n for workflow, status, n in rows}

    async def _page(
        self, table: str, columns: str, filters: dict[str, str], limit: int, before: int | None
    ) -> tuple[list[asyncpg.Record], int | None]:
        """One page of ``table``, newest first; the cursor is the last row's rowid."""
        where = []
        params: list[Any] = []
        for column, value in filters.items():
            if column not in _FILTERABLE:
                raise ValueError(f"not a filter: {column}")
            params.append(value)
            where.append(f"{column} = ${len(params)}")
        if before is not None:
            params.append(min(before, 2**63 - 1))
            where.append(f"rowid < ${len(params)}")
        params.append(limit + 1)
        rows = await self.fetchall(
            f"SELECT rowid, {columns} FROM {table}"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY rowid DESC LIMIT ${len(params)}",
            params,
        )
        more = len(rows) > limit
        return rows[:limit], rows[limit - 1][0] if more else None

    async def process_page(
        self, filters: dict[str, str], limit: int, before: int | None
    ) -> tuple[list[ProcessSummary], int | None]:
        rows, cursor = await self._page("processes", _SUMMARY_COLUMNS, filters, limit, before)
        return [_summary(list(r)[1:]) for r in rows], cursor

    # -- subscriptions --

    async def subscription(self, sid: str) -> Subscription | None:
        row = await self.fetchone(SELECT_SUBSCRIPTION, (sid,))
        return None if row is None else Subscription(**subscription_from_row(row))

    async def subscription_processes(self, sid: str) -> list[LinkedProcess]:
        rows = await self.fetchall(
            "SELECT p.id, p.workflow, p.status FROM subscription_processes l "
            "JOIN processes p ON p.id = l.process_id WHERE l.subscription_id = $1 "
            "ORDER BY p.rowid",
            (sid,),
        )
        return [LinkedProcess(id=i, workflow=w, status=ProcessStatus(s)) for i, w, s in rows]

    async def subscription_page(
        self, filters: dict[str, str], limit: int, before: int | None
    ) -> tuple[list[Subscription], int | None]:
        columns = ", ".join(SUBSCRIPTION_FIELDS)
        rows, cursor = await self._page("subscriptions", columns, filters, limit, before)
        return [Subscription(**subscription_from_row(list(r)[1:])) for r in rows], cursor

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
            f"{SELECT_PROCESS} WHERE reporter = $1 AND rowid > "
            "coalesce((SELECT rowid FROM processes WHERE id = $2), 0) "
            "ORDER BY rowid DESC LIMIT 1",
            (reporter, after_pid),
        )
        return None if row is None else process_row(row)

    async def processes_with_prefix(self, prefix: str, limit: int) -> list[str]:
        rows = await self.fetchall(
            "SELECT id FROM processes WHERE id LIKE $1 ORDER BY id LIMIT $2",
            (prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%", limit),
        )
        return [r[0] for r in rows]

    # -- retention and events --

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
        return Pruned(processes=row[0], steps=int(row[1]), actions=int(row[2]))

    async def event_bounds(self) -> tuple[int, int]:
        row = await self.fetchone(
            "SELECT (SELECT min(id) FROM events), (SELECT max(id) FROM events), "
            "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM events_id_seq)"
        )
        assert row is not None
        oldest, newest_kept, given = row
        # Ids taken by a transaction still open are not "given" yet: the newest committed
        # one counts, or the sequence when every event was pruned.
        newest = newest_kept if newest_kept is not None else given
        return (oldest if oldest is not None else newest + 1), newest

    async def events_after(self, after: int, limit: int) -> list[Event]:
        rows = await self.fetchall(
            "SELECT id, data FROM events WHERE id > $1 ORDER BY id LIMIT $2", (after, limit)
        )
        return [msgspec.structs.replace(_decode_event(data), id=eid) for eid, data in rows]
