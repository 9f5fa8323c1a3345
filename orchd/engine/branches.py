"""What a fork and its branches are (README "Parallel branches"): ``Fork`` (one run of a
``parallel`` or
``foreach`` step) and ``Branch`` (where one of its branches stands, what it changed).

A branch's State is the fork's State, plus a foreach element, plus what the branch changed; the
join merges (``parallel``) or collects (``foreach``) what each changed. How a process's forks
run is ``orchd.engine.forks``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

from orchd.dsl import Step, StepKind
from orchd.engine.interpreter import Move
from orchd.engine.outcome import StepCrash
from orchd.state import decode, encode
from orchd.status import BranchStatus
from orchd.store.base import BranchRow

B = BranchStatus
#: Keys a foreach branch starts with that are not its changes.
_ELEMENT_KEYS = ("item", "item_index")
_MISSING: Any = object()


class Broken(Exception):
    """Raised when a branch's position does not exist in the code loaded now (README "Changing
    workflows safely")."""


class Fork:
    """One run of a ``parallel`` or ``foreach`` step: its branches, started or not."""

    __slots__ = (
        "step", "path", "owner", "base", "items", "count", "branches", "pending", "unfinished",
        "limit", "started",
    )  # fmt: skip

    def __init__(self, step: Step, owner: Branch | None, base: Mapping[str, Any]) -> None:
        self.step = step
        self.owner = owner
        self.path: str = step.key if owner is None else f"{owner.path}/{step.key}"
        self.base = base
        self.items: list[Any] | None = None
        if step.kind is StepKind.FOREACH:
            items = base.get(step.items_key)
            if not isinstance(items, list):
                raise StepCrash(
                    f"foreach {step.name!r}: state[{step.items_key!r}] must be a list, "
                    f"not {type(items).__name__}"
                )
            self.items = items
            self.count = len(items)
        else:
            self.count = len(step.branches)
        self.branches: dict[int, Branch] = {}
        self.pending: deque[int] = deque()
        #: Started branches not yet done: what max_concurrency counts.
        self.unfinished = 0
        self.limit = step.max_concurrency or self.count
        #: When the fork first started: now for a new one; None for one a previous run of
        #: the process started (its branches committed rows), read from its records at the
        #: join (``began_at``), so its record covers the whole fork across waits and restarts.
        self.started: float | None = time.time()

    def start_state(self, index: int) -> dict[str, Any]:
        """What a branch adds to the fork's State when it starts: a foreach element."""
        if self.items is None:
            return {}
        item = self.items[index]
        extra = dict(item) if isinstance(item, dict) else {}
        return {**extra, "item": item, "item_index": index}

    @property
    def complete(self) -> bool:
        return not self.pending and self.unfinished == 0

    def walk(self) -> Iterator[Branch]:
        """Every started branch, nested ones included."""
        for b in self.branches.values():
            yield b
            if b.nested is not None:
                yield from b.nested.walk()

    def joined_changes(self) -> dict[str, Any]:
        """What the join puts into State; raises StepCrash on a conflict (parallel)."""
        step = self.step
        ordered = [self.branches[i] for i in range(self.count)]
        if step.kind is StepKind.FOREACH:
            if step.into is None:
                return {}
            return {step.into: [b.own_changes() for b in ordered]}
        merged: dict[str, Any] = {}
        setter: dict[str, int] = {}
        for b in ordered:
            for key, value in b.own_changes().items():
                if key in merged and merged[key] != value:
                    raise StepCrash(
                        f"parallel {step.name!r}: branches {self.path}/{setter[key]} and "
                        f"{b.path} both set {key!r}, to different values"
                    )
                merged[key] = value
                setter.setdefault(key, b.index)
        return merged


class Branch:
    """One branch of a fork: where it stands and what it changed."""

    __slots__ = (
        "fork", "index", "path", "steps", "pc", "changes", "status", "error", "attempts",
        "next_retry_at", "token", "nested",
    )  # fmt: skip

    def __init__(self, fork: Fork, index: int) -> None:
        self.fork = fork
        self.index = index
        self.path = f"{fork.path}/{index}"
        step = fork.step
        self.steps = step.branches[0 if step.kind is StepKind.FOREACH else index]
        self.pc = 0
        self.changes: dict[str, Any] = {}
        self.status = B.RUNNING
        self.error: str | None = None
        self.attempts = 0
        self.next_retry_at: float | None = None
        #: The digest of the token its callback action handed out, while its wait lasts
        #: (the wait itself, and an answer it holds: ``orchd.engine.waits``).
        self.token: str | None = None
        self.nested: Fork | None = None

    def apply(self, move: Move) -> None:
        """Take the place a transition gives (orchd.engine.interpreter)."""
        if move.changes.values:
            self.changes.update(move.changes.values)
        self.pc, self.attempts = move.pc, move.attempts
        self.error, self.next_retry_at = move.error, move.next_retry_at
        self.status = move.line

    def state(self) -> dict[str, Any]:
        """The branch's State: the fork's, its element's keys, then what it changed (a new
        dict of references: a step's arguments are copies, so nothing is shared by mistake)."""
        return {**self.fork.base, **self.fork.start_state(self.index), **self.changes}

    def own_changes(self) -> dict[str, Any]:
        """What the branch changed relative to how it started (the join's input)."""
        start = {**self.fork.base, **self.fork.start_state(self.index)}
        own = {k: v for k, v in self.changes.items() if start.get(k, _MISSING) != v}
        if self.fork.items is not None:
            for key in _ELEMENT_KEYS:
                own.pop(key, None)
        return own

    def row(self, pk: int) -> BranchRow:
        key, occurrence = (None, 0)
        if self.status is not B.DONE and self.pc < len(self.steps):
            key, occurrence = self.fork.step.branch_positions[self._which()].at(self.pc)
        return BranchRow(
            pk=pk,
            path=self.path,
            status=B.RUNNING if self.status is B.FORKED else self.status,
            step_key=key,
            step_occurrence=occurrence,
            changes=encode(self.changes) if self.changes else None,
            error=self.error,
            attempts=self.attempts,
            next_retry_at=self.next_retry_at,
            callback_token=self.token if self.status is B.AWAITING_CALLBACK else None,
        )

    def _which(self) -> int:
        return 0 if self.fork.step.kind is StepKind.FOREACH else self.index

    def place(self, row: BranchRow) -> None:
        """Take the place a committed row gives; raises Broken when the code lost its step."""
        self.status = B(row.status)
        self.changes = decode(row.changes) if row.changes else {}
        self.error = row.error
        self.attempts = row.attempts
        self.next_retry_at = row.next_retry_at
        self.token = row.callback_token
        if self.status is B.DONE or row.step_key is None:
            self.status, self.pc = B.DONE, len(self.steps)
            return
        found = self.fork.step.branch_positions[self._which()].index(
            row.step_key, row.step_occurrence
        )
        if found is None:
            raise Broken(f"workflow changed: step key {row.step_key!r} no longer exists")
        self.pc = found


def began_at(fork: Fork, records: list[tuple[str | None, str, float]]) -> float | None:
    """When ``fork`` first started, from ``(branch, status, started_at)`` of the records its
    process committed while standing at its outermost fork (``Store.fork_records``): its
    branches' first step, or an earlier failed attempt of the fork itself (a join that failed).
    Records of its owner before its last one that did not fail belong to steps before it."""
    owner = None if fork.owner is None else fork.owner.path
    since = 0
    for i, (branch, status, _) in enumerate(records):
        if branch == owner and status != "failed":
            since = i + 1
    prefix = fork.path + "/"
    times = [
        started
        for branch, _, started in records[since:]
        if branch == owner or (branch is not None and branch.startswith(prefix))
    ]
    return min(times, default=None)


def fill_pending(fork: Fork) -> None:
    """Every branch of a new fork is still to start."""
    fork.pending.extend(range(fork.count))


__all__ = ["Branch", "Broken", "Fork", "began_at", "fill_pending"]
