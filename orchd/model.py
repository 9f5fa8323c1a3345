"""Records and statuses that cross module boundaries (engine, API, CLI, store).

The process status machine lives here, in one table, checked in one place.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import msgspec

from orchd.errors import InvalidTransition

# The statuses are written once, in orchd.status (standard library only, for the CLI); they are
# re-exported here with the records that carry them.
from orchd.status import ACTIVE as ACTIVE
from orchd.status import FINAL as FINAL
from orchd.status import ProcessStatus as ProcessStatus
from orchd.status import StepStatus as StepStatus


class Target(enum.StrEnum):
    """What a workflow does to a subscription."""

    CREATE = "CREATE"  # makes a new subscription
    MODIFY = "MODIFY"  # changes an existing one, holding its lock
    TERMINATE = "TERMINATE"  # ends an existing one, holding its lock
    SYSTEM = "SYSTEM"  # a task: no subscription, may be scheduled
    VALIDATE = "VALIDATE"  # checks one against the outside world, holding its lock; no form
    RECONCILE = "RECONCILE"  # a MODIFY without a form


#: The targets whose process holds an existing subscription (its lock) from start to ``done``.
HOLDS_SUBSCRIPTION = frozenset({Target.MODIFY, Target.TERMINATE, Target.VALIDATE, Target.RECONCILE})
#: The targets that take no input form.
FORMLESS = frozenset({Target.SYSTEM, Target.VALIDATE, Target.RECONCILE})


P = ProcessStatus

#: State keys the engine sets; input cannot supply them.
RESERVED_KEYS = frozenset(
    {
        "process_id",
        "workflow_name",
        "workflow_target",
        "reporter",
        "subscription",
        "subscription_id",
        "callback_token",
        "callback_result",
    }
)


#: Items on a page of a list when the client does not say, and the most it may ask for.
DEFAULT_PAGE = 50
MAX_PAGE = 500


def utc(epoch: float) -> datetime:
    """A stored time (epoch seconds) as the models show it."""
    return datetime.fromtimestamp(epoch, UTC)


#: Where a step that ran can leave a process: anywhere but back to created.
_AFTER_A_STEP = frozenset(
    {P.RUNNING, P.SUSPENDED, P.WAITING, P.AWAITING_CALLBACK, P.AWAITING_CHILDREN, P.FAILED,
     P.ABORTED, P.COMPLETED}
)  # fmt: skip

#: Every allowed status change. A status may also "change" to itself only where listed.
TRANSITIONS: dict[ProcessStatus, frozenset[ProcessStatus]] = {
    P.CREATED: _AFTER_A_STEP,
    P.RUNNING: _AFTER_A_STEP,
    # RUNNING when its last child finishes (the store wakes it); FAILED when its code changed.
    P.AWAITING_CHILDREN: frozenset({P.RUNNING, P.FAILED, P.ABORTED}),
    # FAILED: the code loaded now no longer has its step (README "Changing workflows safely").
    P.SUSPENDED: frozenset({P.RUNNING, P.FAILED, P.ABORTED}),
    P.WAITING: frozenset({P.RUNNING, P.FAILED, P.ABORTED}),
    P.AWAITING_CALLBACK: frozenset({P.RUNNING, P.FAILED, P.ABORTED}),
    P.FAILED: frozenset({P.RUNNING, P.ABORTED}),
    P.ABORTED: frozenset(),
    P.COMPLETED: frozenset(),
}


class Action(enum.StrEnum):
    """What a user (or the scheduler) can ask of a process."""

    RESUME = "resume"
    RETRY = "retry"
    SKIP = "skip"
    ABORT = "abort"
    CALLBACK = "callback"


#: The action recorded when a process is created (any status check is moot then).
START = "start"

#: The statuses in which each action is allowed.
ALLOWED: dict[Action, frozenset[ProcessStatus]] = {
    Action.RESUME: frozenset({P.SUSPENDED}),
    Action.RETRY: frozenset({P.FAILED, P.WAITING}),
    Action.SKIP: frozenset({P.FAILED, P.WAITING}),
    Action.ABORT: frozenset(
        {
            P.CREATED,
            P.RUNNING,
            P.SUSPENDED,
            P.WAITING,
            P.AWAITING_CALLBACK,
            P.AWAITING_CHILDREN,
            P.FAILED,
        }
    ),  # fmt: skip
    Action.CALLBACK: frozenset({P.AWAITING_CALLBACK}),
}


def check_transition(current: ProcessStatus, new: ProcessStatus) -> None:
    """Raise InvalidTransition unless ``current -> new`` is in the table."""
    if new not in TRANSITIONS[current]:
        raise InvalidTransition(f"a {current} process cannot become {new}")


def check_action(action: Action, current: ProcessStatus, process_id: str) -> None:
    """Raise InvalidTransition unless ``action`` is allowed in ``current``."""
    if current not in ALLOWED[action]:
        allowed = ", ".join(sorted(ALLOWED[action]))
        raise InvalidTransition(
            f"cannot {action} process {process_id}: it is {current} (allowed when {allowed})"
        )


class ActionRecord(msgspec.Struct, kw_only=True):
    """Who asked for what (README "The HTTP API"); ``actor`` is ``uid:N`` on the socket, ``token``
    over
    TCP, either followed by the client's label in parentheses."""

    at: datetime
    action: str
    actor: str
    detail: str | None = None


class StepRecord(msgspec.Struct, kw_only=True):
    """One entry of a process's audit log."""

    name: str
    #: The step's identity across code changes (README "Changing workflows safely").
    key: str | None = None
    status: StepStatus
    started_at: datetime
    finished_at: datetime
    error: str | None = None
    traceback: str | None = None
    #: For a step an operator skipped: who, and why.
    actor: str | None = None
    reason: str | None = None
    #: The keys this step changed in State (not the whole State).
    state_delta: dict[str, Any] = msgspec.field(default_factory=dict)
    #: The branch it ran in (README "Parallel branches"): the fork's key and the branch's index,
    #: nested
    #: forks joined by "/" ("Gather facts/1", "A/0/B/3"); None on the main line.
    branch: str | None = None


class BranchSummary(msgspec.Struct, kw_only=True):
    """One branch of a fork, as ``GET /api/processes/{id}`` shows it."""

    branch: str
    #: ``running``, ``waiting``, ``awaiting_callback``, ``failed``, ``forked`` (inside a
    #: nested fork) or ``done``.
    status: str
    #: Its last recorded step, and that step's error when the branch failed or waits.
    step: str | None = None
    error: str | None = None


class ForkSummary(msgspec.Struct, kw_only=True):
    """A fork of a process and its branches: every branch while there are few, else the
    counts by status and the branches that did not finish well (a foreach over thousands)."""

    #: The fork's path: its key, under its branch for a nested fork ("A/0/B").
    fork: str
    #: The branch it runs in (None on the main line).
    parent_branch: str | None = None
    #: Whether it has joined (its branches' changes are in State).
    joined: bool
    #: Started branches by status.
    counts: dict[str, int]
    branches: list[BranchSummary]
    #: True when ``branches`` leaves finished branches out.
    abridged: bool = False


class BlockedOn(msgspec.Struct, kw_only=True):
    """What a running process waits for before its step runs (README "Limits on shared resources"):
    the limit, the
    key (what its ``uses=`` filled in from State) and since when."""

    resource: str
    key: str
    since: datetime


class ResourceHolder(msgspec.Struct, kw_only=True):
    """A step holding a key of a limit."""

    process_id: str
    step: str
    since: datetime
    #: The node it runs on (a cluster on PostgreSQL), else None.
    node: str | None = None


class ResourceKey(msgspec.Struct, kw_only=True):
    """One key of a limit that is in use or waited for."""

    key: str
    holders: list[ResourceHolder]
    waiting: int = 0


class ResourceLimit(msgspec.Struct, kw_only=True):
    """A limit of ``[limits]`` as ``GET /api/resources`` shows it: its bounds, and its keys
    in use or waited for (with several nodes, the whole cluster's)."""

    resource: str
    #: Steps at once per key (None: no bound), and starts per key ("10/s"; None: no rate).
    concurrency: int | None = None
    rate: str | None = None
    in_use: int = 0
    waiting: int = 0
    keys: list[ResourceKey] = msgspec.field(default_factory=list)


class Process(msgspec.Struct, kw_only=True):
    """A process as the API and ``Engine.get`` show it."""

    id: str
    #: Its W3C trace (README "Traces"): 32 lowercase hex digits, the trace its start request's
    #: ``traceparent`` named (a child: its parent's), else one of its own.
    trace_id: str = ""
    workflow: str
    target: Target
    status: ProcessStatus
    state: dict[str, Any]
    steps: list[StepRecord]
    #: Who started, resumed, retried, skipped, aborted or answered it, oldest first.
    actions: list[ActionRecord]
    created_at: datetime
    updated_at: datetime
    reporter: str | None = None
    #: The step that runs, or would run, next (None once finished).
    current_step: str | None = None
    #: The last failure's message, for failed and waiting processes.
    error: str | None = None
    #: The form's JSON Schema while suspended.
    form: dict[str, Any] | None = None
    subscription_id: str | None = None
    #: Attempts of the current retrystep so far, and when the next automatic one is due.
    attempts: int = 0
    next_retry_at: datetime | None = None
    #: README "Child processes": the parent of a child process, and a parent's children (every
    #: fan-out).
    parent_id: str | None = None
    children: list[LinkedProcess] = msgspec.field(default_factory=list)
    #: README "Parallel branches": the process's forks and their branches, outermost first.
    branches: list[ForkSummary] = msgspec.field(default_factory=list)
    #: README "Limits on shared resources": the limit its step waits for while running (null when
    #: it waits for none).
    blocked_on: BlockedOn | None = None
    #: On PostgreSQL, the node that owns it: runs it now, or ran it last; null on SQLite,
    #: and while no node holds it (its node stopped cleanly and no request has come since).
    node: str | None = None


class ProcessSummary(msgspec.Struct, kw_only=True):
    """A row of the process list."""

    id: str
    workflow: str
    target: Target
    status: ProcessStatus
    created_at: datetime
    updated_at: datetime
    reporter: str | None = None
    current_step: str | None = None
    subscription_id: str | None = None
    error: str | None = None
    parent_id: str | None = None
    #: README "Limits on shared resources": the limit its step waits for while running (null when
    #: none).
    blocked_on: BlockedOn | None = None
    #: Its subscription's customer and description (null without one).
    customer_id: str | None = None
    subscription_description: str | None = None


class SubscriptionStatus(enum.StrEnum):
    INITIAL = "initial"
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    DISABLED = "disabled"
    TERMINATED = "terminated"


class Subscription(msgspec.Struct, kw_only=True):
    """A product instance for a customer (README "Guarantees")."""

    id: str
    product: str
    customer_id: str
    description: str = ""
    status: SubscriptionStatus = SubscriptionStatus.INITIAL
    insync: bool = False
    start_date: datetime | None = None
    end_date: datetime | None = None
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    #: One more with every saved change of its content (not its lock, not its note): a
    #: MODIFY started with the version it was read at is refused when it has moved on.
    version: int = 0
    #: An operator's note (``PUT /api/subscriptions/{id}/note``); no workflow writes it.
    note: str | None = None


#: A subscription's fields, in the order they are stored and shown.
SUBSCRIPTION_FIELDS: tuple[str, ...] = Subscription.__struct_fields__


class LinkedProcess(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    workflow: str
    status: ProcessStatus
    #: For a parent's child (README "Child processes"): its fan-out (one per children step
    #: that started children, in the order they started) and the element of that step's list
    #: it was started for (0 first).
    fan_out: int | None = None
    element: int | None = None


class Related(msgspec.Struct, kw_only=True):
    """A subscription on the other end of a relation (``depends_on`` / ``in_use_by``)."""

    id: str
    product: str
    status: SubscriptionStatus
    description: str = ""
    #: Where the relation is written: the Ref's path in the subscription that depends.
    path: str = ""


class UsableWorkflow(msgspec.Struct, kw_only=True):
    """A workflow of the subscription's product, and whether it may start on it now."""

    name: str
    target: Target
    description: str = ""
    usable: bool
    #: Why not, when not: ``locked``, ``status`` or ``in_use``.
    reason: str | None = None
    detail: str | None = None


class SubscriptionAction(msgspec.Struct, kw_only=True):
    """Who did what to a subscription outside a process (setting its note)."""

    at: datetime
    action: str
    actor: str
    detail: str | None = None


class SubscriptionDetail(Subscription, kw_only=True):
    processes: list[LinkedProcess] = msgspec.field(default_factory=list)
    depends_on: list[Related] = msgspec.field(default_factory=list)
    in_use_by: list[Related] = msgspec.field(default_factory=list)
    workflows: list[UsableWorkflow] = msgspec.field(default_factory=list)
    actions: list[SubscriptionAction] = msgspec.field(default_factory=list)


class ProductInfo(msgspec.Struct, kw_only=True):
    """A registered product: its JSON Schema and the workflows tied to it."""

    name: str
    description: str
    schema: dict[str, Any]
    workflows: list[str] = msgspec.field(default_factory=list)


class WorkflowInfo(msgspec.Struct, kw_only=True):
    name: str
    description: str
    target: Target
    form: dict[str, Any] | None
    steps: list[str] = msgspec.field(default_factory=list)
    #: The form is asked in pages (``POST /api/workflows/{name}/form``); ``form`` is null.
    paged: bool = False
    #: The product it is tied to, if any.
    product: str | None = None


class Page(msgspec.Struct, kw_only=True):
    """A page of a list; pass ``next_cursor`` back as ``cursor`` for the next one."""

    items: list[Any]
    next_cursor: str | None = None


class Event(msgspec.Struct, kw_only=True):
    """A change the engine announces (server-sent events, waiters, metrics)."""

    id: int
    kind: str  # "process" (status change) or "step" (a step record was committed)
    process_id: str
    workflow: str
    status: ProcessStatus
    #: The parent, for a child process (README "Child processes").
    parent_id: str | None = None
    step: str | None = None
    step_status: StepStatus | None = None
    #: For a step that ran in a branch: the branch (README "Parallel branches").
    branch: str | None = None
    at: datetime | None = None


class Reset(msgspec.Struct, kw_only=True):
    """Sent (``event: reset``) instead of events a client asked for that are no longer kept,
    or that this database never gave: reload what you show, then follow from ``id``."""

    id: int
    kind: str = "reset"
    reload: bool = True
    reason: str


class LastRun(msgspec.Struct, kw_only=True):
    process_id: str
    status: ProcessStatus | None
    at: datetime


class ScheduleInfo(msgspec.Struct, kw_only=True):
    """A scheduler entry as ``GET /api/schedules`` shows it."""

    name: str
    workflow: str
    every: str | None = None
    cron: str | None = None
    timezone: str = "UTC"
    enabled: bool = True
    running: bool = False
    last_run: LastRun | None = None
    next_run: datetime | None = None
    #: Ticks skipped because the previous run had not finished.
    skipped: int = 0


class NodeInfo(msgspec.Struct, kw_only=True):
    """A node of a cluster whose lease holds, as ``/api/health`` lists it (times are the
    database's clock, epoch seconds)."""

    node_id: str
    started_at: float
    heartbeat_at: float
    lease_until: float
