"""The read side: processes and subscriptions as the API and ``Engine.get`` show them.

Built on the typed reads of any ``Store``: what they show is what has been committed, and they
never touch an actor. Query parameters are checked here, once for every backend.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable
from datetime import datetime

from orchd.branchpaths import path_order
from orchd.errors import BadRequest, ProcessNotFound, SubscriptionNotFound
from orchd.model import (
    DEFAULT_PAGE,
    MAX_PAGE,
    SUBSCRIPTION_FIELDS,
    ActionRecord,
    BranchSummary,
    ForkSummary,
    Page,
    Process,
    ProcessStatus,
    StepRecord,
    StepStatus,
    SubscriptionDetail,
    SubscriptionStatus,
    Target,
    utc,
)
from orchd.state import decode
from orchd.status import BranchStatus
from orchd.store.base import BranchRow, StepRow, Store

P = ProcessStatus
FINAL_NAMES = frozenset({P.COMPLETED.value, P.ABORTED.value})
DONE = BranchStatus.DONE.value
#: A fork lists each branch up to this many; beyond, the counts and the unfinished ones.
LISTED_BRANCHES = 20


def fork_summaries(steps: list[StepRow], live: list[BranchRow]) -> list[ForkSummary]:
    """The forks of a process and their branches, from its step records and the branches
    still standing (README "Parallel branches"): a tree a person can read, even for a foreach over
    10,000."""
    last: dict[str, StepRow] = {}
    joins: set[tuple[str | None, str | None]] = set()
    for s in steps:
        if s.branch is not None:
            last[s.branch] = s
        if s.status == StepStatus.SUCCESS and s.key is not None:
            joins.add((s.branch, s.key))
    standing = {b.path: b for b in live}
    forks: dict[str, list[BranchSummary]] = {}
    for path in sorted({*last, *standing}, key=path_order):
        record, row = last.get(path), standing.get(path)
        if row is not None:
            status, error = row.status, row.error
        else:
            assert record is not None
            finished = record.status in (StepStatus.SUCCESS, StepStatus.SKIPPED)
            status, error = (DONE, None) if finished else (record.status, record.error)
        forks.setdefault(path.rsplit("/", 1)[0], []).append(
            BranchSummary(
                branch=path, status=status, step=record.name if record else None, error=error
            )
        )
    summaries = []
    for fork, branches in forks.items():
        parent_path, _, key = fork.rpartition("/")
        parent_branch = parent_path or None
        counts: dict[str, int] = {}
        for b in branches:
            counts[b.status] = counts.get(b.status, 0) + 1
        abridged = len(branches) > LISTED_BRANCHES
        if abridged:
            branches = [b for b in branches if b.status != DONE][:LISTED_BRANCHES]
        summaries.append(
            ForkSummary(
                fork=fork,
                parent_branch=parent_branch,
                joined=(parent_branch, key) in joins
                and not any(p.startswith(fork + "/") for p in standing),
                counts=counts,
                branches=branches,
                abridged=abridged,
            )
        )
    return summaries


def _dt(epoch: float | None) -> datetime | None:
    return None if epoch is None else utc(epoch)


def uuid_or_none(text: str) -> str | None:
    try:
        return str(uuid.UUID(text))
    except (ValueError, TypeError, AttributeError):
        return None


class Views:
    """Processes and subscriptions as the API shows them, over any ``Store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, pid: str) -> Process:
        """The process as committed, with its whole step log."""
        canonical = uuid_or_none(pid)
        if canonical is None:
            raise ProcessNotFound(f"process {pid!r} does not exist (not a process id)")
        row = await self.store.process(canonical)
        if row is None:
            raise ProcessNotFound(f"process {pid} does not exist")
        records = await self.store.records(row, branches=row.status not in FINAL_NAMES)
        steps = records.steps
        status = P(row.status)
        return Process(
            id=row.id,
            trace_id=row.trace_id,
            workflow=row.workflow,
            target=Target(row.target),
            status=status,
            state=row.state,
            steps=[
                StepRecord(
                    name=s.name,
                    key=s.key,
                    status=StepStatus(s.status),
                    started_at=utc(s.started_at),
                    finished_at=utc(s.finished_at),
                    error=s.error,
                    traceback=s.traceback,
                    actor=s.by,
                    reason=s.reason,
                    state_delta=decode(s.delta) if s.delta else {},
                    branch=s.branch,
                )
                for s in steps
            ],
            actions=[
                ActionRecord(at=utc(a.at), action=a.action, actor=a.by, detail=a.detail)
                for a in records.actions
            ],
            created_at=utc(row.created_at),
            updated_at=utc(row.updated_at),
            reporter=row.reporter,
            current_step=row.current_step,
            error=row.error,
            form=decode(row.form) if row.form else None,
            subscription_id=row.subscription_id,
            attempts=row.attempts,
            next_retry_at=_dt(row.next_retry_at) if status is P.WAITING else None,
            parent_id=row.parent_id,
            children=records.children,
            branches=fork_summaries(steps, records.branches),
        )

    async def list_processes(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        parent: str | None = None,
        q: str | None = None,
        top_level: bool = False,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page:
        _known(P, status, "status")
        if parent is not None:
            canonical = uuid_or_none(parent)
            if canonical is None:
                raise BadRequest(f"parent: {parent!r} is not a process id")
            parent = canonical
        filters = _given(status=status, workflow=workflow, parent_id=parent)
        items, after = await self.store.process_page(
            filters, _limit(limit), _cursor(cursor), q.strip() if q else None, top_level
        )
        return Page(items=items, next_cursor=None if after is None else str(after))

    async def get_subscription(self, sid: str) -> SubscriptionDetail:
        canonical = uuid_or_none(sid)
        sub = None if canonical is None else await self.store.subscription(canonical)
        if canonical is None or sub is None:
            raise SubscriptionNotFound(f"subscription {sid} does not exist")
        links = await self.store.subscription_processes(canonical)
        depends_on, in_use_by = await self.store.relations(canonical)
        return SubscriptionDetail(
            **{f: getattr(sub, f) for f in SUBSCRIPTION_FIELDS},
            processes=links,
            depends_on=depends_on,
            in_use_by=in_use_by,
            actions=await self.store.subscription_actions(canonical),
        )

    async def list_subscriptions(
        self,
        *,
        status: str | None = None,
        customer_id: str | None = None,
        product: str | None = None,
        q: str | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page:
        _known(SubscriptionStatus, status, "status")
        filters = _given(status=status, customer_id=customer_id, product=product)
        items, after = await self.store.subscription_page(
            filters, _limit(limit), _cursor(cursor), q or None
        )
        return Page(items=items, next_cursor=None if after is None else str(after))

    async def counts(self) -> dict[str, int]:
        """Processes by status, every status named."""
        return every_status((await self.store.counts()).items())


def every_status(counts: Iterable[tuple[str, int]]) -> dict[str, int]:
    """``(status, count)`` pairs summed by status, every status named (0 where there are none)."""
    totals = {s.value: 0 for s in P}
    for status, n in counts:
        totals[status] += n
    return totals


def _given(**filters: str | None) -> dict[str, str]:
    return {key: value for key, value in filters.items() if value is not None}


def _known(kind: type[enum.Enum], value: str | None, parameter: str) -> None:
    if value is not None and value not in kind._value2member_map_:
        choices = ", ".join(str(m.value) for m in kind)
        raise BadRequest(f"{parameter}: unknown value {value!r} (one of {choices})")


def _cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit()):
        raise BadRequest(f"cursor: {cursor!r} is not a cursor from a previous page")
    return int(cursor)


def _limit(limit: int) -> int:
    if limit < 1:
        raise BadRequest("limit: must be at least 1")
    return min(limit, MAX_PAGE)
