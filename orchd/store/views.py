"""The read side: processes and subscriptions as the API and ``Engine.get`` show them.

Reads go through the store's reader connection (WAL lets them run beside the writer) and
never touch an actor: what they show is what has been committed.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from orchd.errors import BadRequest, ProcessNotFound, SubscriptionNotFound
from orchd.model import (
    LinkedProcess,
    Page,
    Process,
    ProcessStatus,
    ProcessSummary,
    StepRecord,
    StepStatus,
    Subscription,
    SubscriptionDetail,
    SubscriptionStatus,
    Target,
)
from orchd.state import decode
from orchd.store.sqlite import SUBSCRIPTION_FIELDS, Store, subscription_from_row

P = ProcessStatus

#: The most items one page of a list holds, whatever the client asks for.
MAX_PAGE = 500


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _dt(epoch: float | None) -> datetime | None:
    return None if epoch is None else _at(epoch)


def uuid_or_none(text: str) -> str | None:
    try:
        return str(uuid.UUID(text))
    except (ValueError, TypeError, AttributeError):
        return None


_ROW_COLUMNS = (
    "rowid", "id", "workflow", "target", "status", "pc", "seq", "state", "reporter",
    "subscription_id", "current_step", "error", "form", "callback_token", "attempts",
    "next_retry_at", "created_at", "updated_at",
)  # fmt: skip
_ROW_NAMES = ("pk", *_ROW_COLUMNS[1:])


class Views:
    """Queries over committed state."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def load_row(self, pid: str) -> dict[str, Any] | None:
        rows = await self.load_rows("id = ?", (pid,))
        return rows[0] if rows else None

    async def load_rows(self, where: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        rows = await self.store.fetchall(
            f"SELECT {', '.join(_ROW_COLUMNS)} FROM processes WHERE {where}", params
        )
        result = []
        for row in rows:
            fields = dict(zip(_ROW_NAMES, row, strict=True))
            fields["state"] = decode(fields["state"])
            result.append(fields)
        return result

    async def get(self, pid: str) -> Process:
        """The process as committed, with its whole step log."""
        if uuid_or_none(pid) is None:
            raise ProcessNotFound(f"process {pid!r} does not exist (not a process id)")
        row = await self.load_row(pid)
        if row is None:
            raise ProcessNotFound(f"process {pid} does not exist")
        steps = await self.store.fetchall(
            "SELECT name, status, started_at, finished_at, error, traceback, delta FROM steps "
            "WHERE process = ? ORDER BY seq",
            (row["pk"],),
        )
        return Process(
            id=row["id"],
            workflow=row["workflow"],
            target=Target(row["target"]),
            status=P(row["status"]),
            state=row["state"],
            steps=[
                StepRecord(
                    name=name,
                    status=StepStatus(status),
                    started_at=_at(started),
                    finished_at=_at(finished),
                    error=error,
                    traceback=tb,
                    state_delta=decode(delta) if delta else {},
                )
                for name, status, started, finished, error, tb, delta in steps
            ],
            created_at=_at(row["created_at"]),
            updated_at=_at(row["updated_at"]),
            reporter=row["reporter"],
            current_step=row["current_step"],
            error=row["error"],
            form=decode(row["form"]) if row["form"] else None,
            subscription_id=row["subscription_id"],
            callback_token=row["callback_token"] if row["status"] == P.AWAITING_CALLBACK else None,
            attempts=row["attempts"],
            next_retry_at=_dt(row["next_retry_at"]) if row["status"] == P.WAITING else None,
        )

    async def _page(
        self,
        table: str,
        columns: str,
        filters: dict[str, str | None],
        limit: int,
        cursor: str | None,
    ) -> tuple[list[Any], str | None]:
        """One page of ``table``, newest first; the cursor is the last row's rowid."""
        where = [f"{column} = ?" for column, value in filters.items() if value is not None]
        params: list[Any] = [value for value in filters.values() if value is not None]
        after = _cursor(cursor)
        if after is not None:
            where.append("rowid < ?")
            params.append(after)
        limit = _limit(limit)
        rows = await self.store.fetchall(
            f"SELECT rowid, {columns} FROM {table}"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY rowid DESC LIMIT ?",
            (*params, limit + 1),
        )
        more = len(rows) > limit
        return rows[:limit], str(rows[limit - 1][0]) if more else None

    async def list_processes(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        _known(P, status, "status")
        rows, next_cursor = await self._page(
            "processes",
            "id, workflow, target, status, created_at, updated_at, reporter, current_step, "
            "subscription_id, error",
            {"status": status, "workflow": workflow},
            limit,
            cursor,
        )
        items = [
            ProcessSummary(
                id=r[1],
                workflow=r[2],
                target=Target(r[3]),
                status=P(r[4]),
                created_at=_at(r[5]),
                updated_at=_at(r[6]),
                reporter=r[7],
                current_step=r[8],
                subscription_id=r[9],
                error=r[10],
            )
            for r in rows
        ]
        return Page(items=items, next_cursor=next_cursor)

    async def get_subscription(self, sid: str) -> SubscriptionDetail:
        canonical = uuid_or_none(sid)
        row = None
        if canonical is not None:
            row = await self.store.fetchone(
                f"SELECT {', '.join(SUBSCRIPTION_FIELDS)} FROM subscriptions WHERE id = ?",
                (canonical,),
            )
        if row is None:
            raise SubscriptionNotFound(f"subscription {sid} does not exist")
        links = await self.store.fetchall(
            "SELECT p.id, p.workflow, p.status FROM subscription_processes l "
            "JOIN processes p ON p.id = l.process_id WHERE l.subscription_id = ? "
            "ORDER BY p.rowid",
            (canonical,),
        )
        sub = subscription_from_row(row)
        return SubscriptionDetail(
            **sub,
            processes=[LinkedProcess(id=i, workflow=w, status=P(s)) for i, w, s in links],
        )

    async def list_subscriptions(
        self,
        *,
        status: str | None = None,
        customer_id: str | None = None,
        product: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        _known(SubscriptionStatus, status, "status")
        rows, next_cursor = await self._page(
            "subscriptions",
            ", ".join(SUBSCRIPTION_FIELDS),
            {"status": status, "customer_id": customer_id, "product": product},
            limit,
            cursor,
        )
        items = [Subscription(**subscription_from_row(r[1:])) for r in rows]
        return Page(items=items, next_cursor=next_cursor)

    async def counts(self) -> dict[str, int]:
        rows = await self.store.fetchall("SELECT status, count(*) FROM processes GROUP BY status")
        counts = {s.value: 0 for s in P}
        counts.update({status: n for status, n in rows})
        return counts


def _known(kind: type[enum.Enum], value: str | None, parameter: str) -> None:
    if value is not None and value not in kind._value2member_map_:
        choices = ", ".join(str(m.value) for m in kind)
        raise BadRequest(f"{parameter}: unknown value {value!r} (one of {choices})")


def _cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit()):
        raise BadRequest(f"cursor: {cursor!r} is not a cursor from a previous page")
    return min(int(cursor), 2**63 - 1)  # SQLite integers are 64-bit


def _limit(limit: int) -> int:
    if limit < 1:
        raise BadRequest("limit: must be at least 1")
    return min(limit, MAX_PAGE)
