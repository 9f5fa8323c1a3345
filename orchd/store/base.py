"""What the engine needs of a database: the records it reads and writes, and one interface.

A backend (SQLite, PostgreSQL) implements :class:`Store`. Writes are named operations (the
``Op`` union below), each committed by the backend in one transaction with whatever else is
queued, so many processes share one commit (their statements: ``orchd.store.plans``);
reads return the typed records here or the models of ``orchd.model``. Nothing above this
layer sees SQL or a row as a tuple or a dict.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol, overload

import msgspec

from orchd.model import (
    Event,
    LinkedProcess,
    ProcessSummary,
    Related,
    Subscription,
    SubscriptionAction,
)
from orchd.tracing import trace_id_of

log = logging.getLogger("orchd.store")


def new_callback_token() -> str:
    """A token for one callback wait. Never starting with "-": a script passes it to
    `orchd callback TOKEN`, where a leading dash would read as an option (1 token in 64 did)."""
    while (token := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return token


def token_digest(token: str) -> str:
    """What the store keeps of a callback token: enough to find the wait, not to answer it."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class ProcessRow(msgspec.Struct, kw_only=True):
    """A process as stored: what an actor loads to continue it."""

    #: The row's integer key, which the step records use too.
    pk: int
    id: str
    workflow: str
    target: str
    status: str
    pc: int
    seq: int
    state: dict[str, Any]
    #: Where the process stands: its next step's key and that key's occurrence in the list
    #: (None once finished, and for rows from before step keys, which ``pc`` still places).
    step_key: str | None = None
    step_occurrence: int = 0
    #: For a child: its parent, its fan-out and element; for a parent waiting for a fan-out:
    #: that fan-out and how many of its children are unfinished.
    parent_id: str | None = None
    child_group: int | None = None
    child_index: int | None = None
    children_group: int | None = None
    children_pending: int | None = None
    #: A child waiting as created for a free slot (not started at a restart).
    held: bool = False
    reporter: str | None = None
    subscription_id: str | None = None
    current_step: str | None = None
    error: str | None = None
    #: The form's JSON Schema (encoded) while suspended.
    form: bytes | None = None
    #: The digest of the token of the callback the process waits for (``token_digest``).
    callback_token: str | None = None
    attempts: int = 0
    next_retry_at: float | None = None
    created_at: float
    updated_at: float
    #: The W3C trace it belongs to (README "Traces"): stored at its start; for a row from before
    #: traces (NULL) derived from its id when read (``orchd.tracing.trace_id_of``).
    trace_id: str = ""
    #: Who asked to abort it while it ran, committed (applied at its next step boundary).
    abort_requested: str | None = None


class ActionRow(msgspec.Struct, kw_only=True):
    """Who asked for what, and when (the audit trail of README "The HTTP API")."""

    at: float
    action: str
    by: str
    detail: str | None = None


class StepRow(msgspec.Struct, kw_only=True):
    """One step record as stored; ``delta`` is the encoded change it made to State."""

    name: str
    status: str
    started_at: float
    finished_at: float
    error: str | None = None
    traceback: str | None = None
    delta: bytes | None = None
    key: str | None = None
    #: Who skipped the step, and why (an operator's skip).
    by: str | None = None
    reason: str | None = None
    #: The branch it ran in ("Gather facts/1"), None on the main line.
    branch: str | None = None


class BranchRow(msgspec.Struct, kw_only=True, array_like=True):
    """Where one started branch of a forked process stands (README "Parallel branches"), until its
    fork
    joins. ``path`` names it ("A/0", nested "A/0/B/3"); ``changes`` is what it changed in State
    since it started (encoded); ``step_key`` and ``step_occurrence`` its next step's position
    in the branch's steps (None once it is done). Fields in the order the writer binds them."""

    pk: int
    path: str
    status: str
    step_key: str | None = None
    step_occurrence: int = 0
    changes: bytes | None = None
    error: str | None = None
    attempts: int = 0
    next_retry_at: float | None = None
    #: The digest of the token its callback wait answers to.
    callback_token: str | None = None


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    """Where an unfinished process stands, for ``orchd check --workflows`` to place under new
    code (README "Changing workflows safely"): its own position and, at a fork, its started
    branches' positions as ``(path, step_key, step_occurrence)``."""

    id: str
    workflow: str
    status: str
    pc: int
    current_step: str | None = None
    step_key: str | None = None
    step_occurrence: int = 0
    branches: list[tuple[str, str, int]] = []


class ProcessRecords(msgspec.Struct, kw_only=True):
    """Everything a process's detail shows beside its row, read together."""

    steps: list[StepRow]
    actions: list[ActionRow]
    #: Its standing branches (asked only while it is unfinished).
    branches: list[BranchRow]
    children: list[LinkedProcess]


class TimedProcess(msgspec.Struct, kw_only=True):
    """A waiting process with a deadline: a retry due, or a callback that may expire."""

    id: str
    status: str
    at: float
    callback_token: str | None


class ScheduleRow(msgspec.Struct, kw_only=True):
    """What the scheduler keeps of one schedule across restarts."""

    name: str
    last_process_id: str | None
    last_fire_at: float | None
    next_fire_at: float | None
    skipped: int


class StoreStats(msgspec.Struct, kw_only=True):
    """The writer's counters, for health and metrics."""

    batches: int = 0
    committed: int = 0
    last_batch: int = 0
    commit_seconds: float = 0.0
    queue: int = 0
    #: Why writes fail right now (None while they succeed).
    failing: str | None = None


class CommitCounters:
    """What a backend's writer counts of its commits, and why they fail right now: the base
    of each writer, so both count and say it alike."""

    def __init__(self) -> None:
        self.batches = 0
        self.committed = 0
        self.last_batch = 0
        self.commit_seconds = 0.0
        #: Why commits fail right now (None while they succeed).
        self.failing: str | None = None

    def failed(self, reason: str) -> None:
        """A commit failed; logged once per new reason."""
        if reason != self.failing:
            log.error("checkpoint commit failed: %s", reason)
        self.failing = reason

    def succeeded(self, size: int, started: float) -> None:
        """A batch of ``size`` operations committed; ``started`` is its perf_counter()."""
        if self.failing is not None:
            log.info("checkpoint commits succeed again after: %s", self.failing)
        self.failing = None
        self.batches += 1
        self.committed += size
        self.last_batch = size
        self.commit_seconds += time.perf_counter() - started

    def counted(self, queue: int, trouble: Callable[[], str | None] | None = None) -> StoreStats:
        """The counters as health and metrics read them; ``trouble`` is asked when no commit
        has failed (an idle writer notices nothing by itself)."""
        failing = self.failing
        if failing is None and trouble is not None:
            failing = trouble()
        return StoreStats(
            batches=self.batches,
            committed=self.committed,
            last_batch=self.last_batch,
            commit_seconds=self.commit_seconds,
            queue=queue,
            failing=failing,
        )


# -- writes ---------------------------------------------------------------------------------


class ProcessWrite(msgspec.Struct, kw_only=True, array_like=True):
    """The whole mutable part of a process row, as a checkpoint sets it.

    ``array_like``: the SQLite writer binds the fields in this order as its parameters.
    """

    status: str
    pc: int
    seq: int
    state: bytes
    current_step: str | None
    error: str | None = None
    form: bytes | None = None
    callback_token: str | None = None
    attempts: int = 0
    next_retry_at: float | None = None
    subscription_id: str | None = None
    step_key: str | None = None
    step_occurrence: int = 0
    children_group: int | None = None
    children_pending: int | None = None
    updated_at: float
    pk: int


class StepWrite(msgspec.Struct, kw_only=True, array_like=True):
    """One step record, fields in the order the SQLite writer binds them."""

    pk: int
    seq: int
    name: str
    status: str
    started_at: float
    finished_at: float
    error: str | None = None
    traceback: str | None = None
    delta: bytes | None = None
    key: str | None = None
    by: str | None = None
    reason: str | None = None
    branch: str | None = None


class ProcessTouch(msgspec.Struct, kw_only=True, array_like=True):
    """What a step in a branch changes of its process row: the status, the step count and the
    time, never State (which stays as it was at the fork until the join), so a large State is
    not written again with each branch step. Fields in the order the writer binds them."""

    status: str
    seq: int
    error: str | None = None
    next_retry_at: float | None = None
    updated_at: float
    pk: int


class ActionWrite(msgspec.Struct, kw_only=True, array_like=True):
    """An action to record, fields in the order the SQLite writer binds them."""

    pk: int
    at: float
    action: str
    by: str
    detail: str | None = None


class Checkpoint(msgspec.Struct, kw_only=True):
    """Everything one step changes, committed in one transaction."""

    process_id: str
    process: ProcessWrite | ProcessTouch
    steps: list[StepWrite] = []
    #: Branches of a forked process whose place changed (inserted or replaced).
    branches: list[BranchRow] = []
    #: Branches that go: every branch whose path starts with one of these prefixes ("" for
    #: all of the process's), when their fork joins or the process ends.
    drop_branches: list[str] = []
    #: The action that led to this checkpoint (resume, retry, ...), recorded with it.
    actions: list[ActionWrite] = []
    #: ``state["subscription"]`` to save (insert or update), when the step changed it.
    subscription: dict[str, Any] | None = None
    #: With a typed subscription: what its Refs name now (path -> subscription id), which
    #: replace its relations in the same transaction. None leaves them as they are.
    relations: dict[str, str] | None = None
    #: A subscription to mark insync again without touching State (abort of MODIFY/TERMINATE).
    release: str | None = None
    #: What to announce once committed; stored in the same transaction, which gives each its
    #: id (``id`` here is ignored), so a client resumes from the database after a restart.
    events: list[Event] = []
    #: For a child that finishes here (completed or aborted): its parent and fan-out, whose
    #: count goes down in the same transaction (waking the parent at zero, starting a held
    #: sibling). The write then answers a ``ChildFinished``.
    child_of: ChildOf | None = None


class ChildOf(msgspec.Struct, kw_only=True):
    parent_id: str
    group: int


class ChildFinished(msgspec.Struct, kw_only=True):
    """What a child's last checkpoint set going: the parent it woke, the sibling it started."""

    woke: str | None = None
    started: str | None = None
    #: The started sibling's row, read in the same transaction (its actor needs no load).
    started_row: ProcessRow | None = None


class ChildRefused(Exception):
    """Raised when a child cannot be created (its subscription locked or missing)."""

    def __init__(self, index: int | None, reason: str) -> None:
        super().__init__(f"element {index}: {reason}")
        self.index = index


class NewProcess(msgspec.Struct, kw_only=True):
    """A process to create; for MODIFY/TERMINATE it locks ``lock`` in the same transaction.

    The write answers the new :class:`ProcessRow` (its State holds the locked subscription).
    """

    id: str
    workflow: str
    target: str
    reporter: str | None
    state: dict[str, Any]
    lock: str | None = None
    #: The first step's name and key (the process's position).
    first_step: str
    first_key: str
    created_at: float
    #: Who started it, recorded as the process's first action.
    by: str
    #: For a child: its parent, fan-out and element; ``held``: it waits for a free slot.
    parent_id: str | None = None
    child_group: int | None = None
    child_index: int | None = None
    held: bool = False
    #: With a key, a process that holds it already is answered instead (its row, whose ``id``
    #: differs from this op's); one of another workflow is refused (IdempotencyConflict).
    idempotency_key: str | None = None
    #: What the start's input was (``engine.starts.input_digest``), set with a key: the key's
    #: process answers only a start with the same input (else IdempotencyKeyReused).
    idempotency_digest: str | None = None
    #: Stored (and announced) only when the process is created; see ``Checkpoint.events``.
    events: list[Event] = []
    #: The trace it joins (a start's ``traceparent``, a child's parent's) or begins; None:
    #: left NULL, read as the one derived from its id.
    trace_id: str | None = None
    #: For a workflow of a product: the product the locked subscription must be of, and the
    #: statuses it may start on; ``expect_version``: the version the start was made at.
    product: str | None = None
    usable_when: tuple[str, ...] | None = None
    expect_version: int | None = None

    def created_row(self, pk: int, state: dict[str, Any]) -> ProcessRow:
        """The row this start creates, as a store answers it: key ``pk``, and ``state`` (the
        input's, with the locked subscription when there is one)."""
        return ProcessRow(
            pk=pk,
            id=self.id,
            workflow=self.workflow,
            target=self.target,
            status="created",
            pc=0,
            seq=0,
            state=state,
            reporter=self.reporter,
            subscription_id=self.lock,
            current_step=self.first_step,
            step_key=self.first_key,
            parent_id=self.parent_id,
            child_group=self.child_group,
            child_index=self.child_index,
            held=self.held,
            created_at=self.created_at,
            updated_at=self.created_at,
            trace_id=self.trace_id or trace_id_of(self.id),
        )


class StartChildren(msgspec.Struct, kw_only=True):
    """A parent's checkpoint (now ``awaiting_children``) and every child it starts, committed
    together or not at all. Answers the new children's rows; a child refused (its subscription
    locked or missing) raises ChildRefused naming its element."""

    parent: Checkpoint
    children: list[NewProcess]


class ReplaceChildren(msgspec.Struct, kw_only=True):
    """A retried parent's fan-out: the aborted children detached, new ones for their elements."""

    parent: Checkpoint
    detach: list[str]
    children: list[NewProcess]


class ScheduleRun(msgspec.Struct, kw_only=True):
    """Record that one fire time ran or was skipped; answers False when it was recorded
    before (a replay after a crash)."""

    name: str
    fire_at: float
    process_id: str | None
    next_fire_at: float | None
    skipped: bool = False


class ScheduleClaim(msgspec.Struct, kw_only=True):
    """Claim a fire time and move the plan on to ``next_fire_at``, before the run starts;
    answers False when the fire time was claimed before (a replay)."""

    name: str
    fire_at: float
    next_fire_at: float


class ScheduleStarted(msgspec.Struct, kw_only=True):
    """The process a claimed fire time started."""

    name: str
    fire_at: float
    process_id: str


class Positions(msgspec.Struct, kw_only=True):
    """Positions of processes from before step keys, translated from ``pc`` (once)."""

    #: (process key, step key, occurrence)
    rows: list[tuple[int, str, int]]


class SchedulePlan(msgspec.Struct, kw_only=True):
    """The next fire time of each named schedule, kept so a restart keeps the plan."""

    next_fire_at: dict[str, float]


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    """Which finished (completed or aborted) processes may go: those whose last change is
    before these epoch seconds; None keeps them for ever."""

    #: SYSTEM-target processes (tasks).
    tasks_before: float | None
    #: Every other target.
    workflows_before: float | None


class Prune(msgspec.Struct, kw_only=True):
    """Delete up to ``limit`` processes that ``retention`` lets go, with their step records,
    actions, subscription links and schedule runs; answers :class:`Pruned`. Small batches keep
    each write short, so checkpoints queued beside it wait little."""

    retention: Retention
    limit: int


class Pruned(msgspec.Struct, kw_only=True):
    """What a prune deleted (or, for a dry run, would delete)."""

    processes: int = 0
    steps: int = 0
    actions: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(
            processes=self.processes + other.processes,
            steps=self.steps + other.steps,
            actions=self.actions + other.actions,
        )


class RequestAbort(msgspec.Struct, kw_only=True):
    """Commit an abort asked of a running process (who asked, and an ``abort`` action whose
    detail is ``requested``) before it is acknowledged; answers whether the process was still
    unfinished."""

    pk: int
    by: str
    at: float


class SetNote(msgspec.Struct, kw_only=True):
    """Set a subscription's note and record who did; answers whether it exists."""

    subscription_id: str
    note: str
    by: str
    at: float


#: Every write a store takes.
Op = (
    Checkpoint
    | NewProcess
    | ScheduleRun
    | ScheduleClaim
    | ScheduleStarted
    | SchedulePlan
    | Positions
    | StartChildren
    | ReplaceChildren
    | Prune
    | SetNote
    | RequestAbort
)


# -- the interface --------------------------------------------------------------------------


class Store(Protocol):
    """A database for the engine. Every write commits durably before ``write`` returns."""

    #: Where the data lives, for messages (a path or a URL).
    path: str

    async def open(self) -> None:
        """Connect, create or migrate the schema; raise StoreError when that fails."""
        ...

    async def close(self) -> None: ...

    # ``write`` commits ``op`` (with others queued beside it) and answers what the op answers,
    # typed per operation below. Refusals raise the op's error (SubscriptionLocked, ...); a
    # database failure raises StoreError. Cancelling the caller never cancels a commit that
    # has begun.

    @overload
    async def write(self, op: Checkpoint) -> ChildFinished | None:
        """A child's last checkpoint answers what it set going; any other, None."""

    @overload
    async def write(self, op: NewProcess) -> ProcessRow: ...

    @overload
    async def write(self, op: StartChildren | ReplaceChildren) -> list[ProcessRow]: ...

    @overload
    async def write(self, op: ScheduleRun | ScheduleClaim | SetNote | RequestAbort) -> bool: ...

    @overload
    async def write(self, op: ScheduleStarted | SchedulePlan | Positions) -> None: ...

    @overload
    async def write(self, op: Prune) -> Pruned: ...

    def commit_now(self, op: Checkpoint) -> tuple[bool, ChildFinished | None]:
        """Commit ``op`` on the calling thread, blocking it, if that is cheaper than queueing
        (nothing else waits): ``(True, answer)``; else ``(False, None)`` and ``write`` it.
        Equally durable; a store that cannot always answers ``(False, None)``."""
        ...

    def stats(self) -> StoreStats: ...

    async def ping(self) -> None:
        """Raise unless the database answers a read."""
        ...

    # -- processes, for the engine --

    async def process(self, pid: str) -> ProcessRow | None: ...

    async def unplaced_processes(self) -> list[ProcessRow]:
        """Unfinished processes without a step key (from before step keys)."""
        ...

    async def active_processes(self) -> list[ProcessRow]:
        """Every process that was created or running: what a restart continues."""
        ...

    async def timed_processes(self) -> list[TimedProcess]: ...

    async def process_waiting_for(self, token: str) -> str | None:
        """The id of the process whose current wait this callback token belongs to."""
        ...

    async def steps(self, pk: int) -> list[StepRow]:
        """A process's step records, oldest first."""
        ...

    async def actions(self, pk: int) -> list[ActionRow]:
        """A process's actions, oldest first."""
        ...

    async def branches(self, pk: int) -> list[BranchRow]:
        """The started branches of a forked process (none when it is not forked)."""
        ...

    async def fork_records(self, pk: int) -> list[tuple[str | None, str, float]]:
        """``(branch, status, started_at)`` of the step records a process standing at a fork
        committed since its last main-line record that did not fail, oldest first: what
        tells when that fork (and each fork nested in it) first started."""
        ...

    async def records(self, row: ProcessRow, *, branches: bool) -> ProcessRecords:
        """The step records, actions, children and (when ``branches``) standing branches of
        the process of ``row``: what its detail shows, read as cheaply as the backend can."""
        ...

    async def statuses(self, pids: list[str]) -> dict[str, str]: ...

    async def children(self, parent_id: str, group: int | None = None) -> list[ProcessRow]:
        """A parent's children (of one fan-out, when given), in element order."""
        ...

    async def child_links(self, parent_id: str) -> list[LinkedProcess]:
        """Every child of a parent (of every fan-out), in element order."""
        ...

    async def unfinished_children_of_aborted(self) -> list[tuple[str, str]]:
        """Children still unfinished whose parent was aborted (a cascade a crash cut short)."""
        ...

    async def counts_by_workflow(self) -> dict[tuple[str, str], int]:
        """Processes by workflow and status."""
        ...

    async def counts(self) -> dict[str, int]:
        """Processes by status (statuses with none are left out)."""
        ...

    async def process_page(
        self,
        filters: dict[str, str],
        limit: int,
        before: int | None,
        q: str | None = None,
        top_level: bool = False,
    ) -> tuple[list[ProcessSummary], int | None]:
        """Up to ``limit`` processes matching ``filters`` (column: value), newest first,
        older than the cursor ``before``; and the cursor of the next page, if any. ``q``: an
        id's first characters, or text in the workflow's name or the subscription (as
        ``subscription_page``'s); ``top_level``: no children."""
        ...

    # -- subscriptions --

    async def keyed_process(self, key: str) -> ProcessRow | None:
        """The process an Idempotency-Key started, if it still exists."""
        ...

    async def subscription(self, sid: str) -> Subscription | None: ...

    async def subscription_processes(self, sid: str) -> list[LinkedProcess]: ...

    async def subscription_page(
        self, filters: dict[str, str], limit: int, before: int | None, q: str | None = None
    ) -> tuple[list[Subscription], int | None]:
        """As ``process_page``; ``q``: text found in the description or any text value."""
        ...

    async def relations(self, sid: str) -> tuple[list[Related], list[Related]]:
        """What the subscription depends on, and what uses it."""
        ...

    async def subscription_actions(self, sid: str) -> list[SubscriptionAction]: ...

    async def subscription_choices(
        self, product: str, statuses: tuple[str, ...] | None, unused: bool, limit: int
    ) -> list[tuple[str, str]]:
        """What a choices field offers: (id, description), oldest first."""
        ...

    async def holder(self, sid: str) -> str | None:
        """The unfinished process that holds the subscription, if any."""
        ...

    # -- schedules --

    async def schedules(self) -> list[ScheduleRow]: ...

    async def latest_started_by(self, reporter: str, after_pid: str | None) -> ProcessRow | None:
        """The newest process started by ``reporter`` after ``after_pid`` (or at all)."""
        ...

    async def processes_with_prefix(self, prefix: str, limit: int) -> list[str]:
        """Ids of processes that start with ``prefix`` (at most ``limit``)."""
        ...

    # -- retention and events --

    async def prunable(self, retention: Retention) -> Pruned:
        """What pruning with ``retention`` would delete now (a dry run)."""
        ...

    def on_events(self, sink: Callable[[list[Event]], None]) -> None:
        """Call ``sink`` on the event loop with the events of each commit, ids set, in id
        order, before anyone waiting for that commit wakes."""
        ...

    async def event_bounds(self) -> tuple[int, int]:
        """The oldest event id kept and the newest id given (oldest > newest: none kept)."""
        ...

    async def events_after(self, after: int, limit: int) -> list[Event]:
        """Up to ``limit`` kept events with ids after ``after``, oldest first."""
        ...
