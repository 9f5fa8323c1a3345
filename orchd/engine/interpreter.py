"""One step for a cursor: the process's line of steps or a branch's (README "Architecture").

Whichever line a step stands on, it runs the same way, and each rule exists here once: whether
its condition lets it run, calling it (its arguments from the line's State, its callback token,
its resources, its trace, what a CancelledError means), the retry policy and when attempts reset,
a wait's answer and its deadline (back to the action), a skip (a callback step is three steps),
and the records a step leaves.

Every transition is a function that returns a ``Move``: where the line stands next and the
records to commit. It changes nothing; the line's owner applies it (the actor to its own fields,
the fork to its branch) and commits it (``orchd.engine.actor``, ``orchd.engine.forks``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from orchd import _faults as faults
from orchd.dsl import Step, StepKind
from orchd.engine import lease
from orchd.engine.calls import call_step, cancelled_from_outside
from orchd.engine.host import Host
from orchd.engine.limits import Halted, slots_of
from orchd.engine.outcome import NO_CHANGES, Changes, StepCrash, changes_of, failure_of, retry_delay
from orchd.model import StepStatus
from orchd.settings import EngineSettings
from orchd.state import clone, inject, to_json_values
from orchd.status import BranchStatus
from orchd.store.base import StepWrite, new_callback_token, token_digest
from orchd.tracing import enter_step, leave_step

#: How a line stands after a transition: running, waiting (a retrystep's backoff),
#: awaiting_callback or failed; a branch's row says the same (its owner's status follows).
Line = BranchStatus


class Record(NamedTuple):
    """A step record as a transition leaves it; its owner numbers it and names its branch."""

    name: str
    key: str | None
    status: StepStatus
    started: float
    finished: float
    error: str | None = None
    traceback: str | None = None
    delta: bytes | None = None
    by: str | None = None
    reason: str | None = None


class Cursor(Protocol):
    """Where a line stands, as a transition reads it: the actor for the process's line, a
    ``Branch`` for a branch's (read, never changed: their owners apply the Move)."""

    @property
    def steps(self) -> Sequence[Step]: ...

    @property
    def pc(self) -> int: ...

    @property
    def attempts(self) -> int: ...


class Move(NamedTuple):
    """A transition: where the line stands next, what it changed, and the records to commit."""

    line: Line
    pc: int
    attempts: int
    error: str | None
    next_retry_at: float | None
    changes: Changes
    records: tuple[Record, ...]


def step_writes(
    records: tuple[Record, ...], pk: int, seq: Callable[[], int], branch: str | None = None
) -> list[StepWrite]:
    """A transition's records as the process's next step records (``seq`` numbers each)."""
    return [
        StepWrite(
            pk=pk,
            seq=seq(),
            name=r.name,
            key=r.key,
            status=r.status,
            started_at=r.started,
            finished_at=r.finished,
            error=r.error,
            traceback=r.traceback,
            delta=r.delta,
            by=r.by,
            reason=r.reason,
            branch=branch,
        )
        for r in records
    ]


def _record(step: Step, status: StepStatus, started: float, finished: float, **kw: Any) -> Record:
    return Record(step.name, step.key, status, started, finished, **kw)


# -- transitions ---------------------------------------------------------------------------


def ended(
    at: Cursor,
    step: Step,
    started: float,
    finished: float,
    changes: Changes = NO_CHANGES,
    status: StepStatus = StepStatus.SUCCESS,
) -> Move:
    """The step is done (it succeeded, its condition skipped it, its answer came): on to the
    next. A retrystep's attempts count on while it has not succeeded."""
    counting = step.kind is StepKind.RETRY and status is not StepStatus.SUCCESS
    attempts = at.attempts if counting else 0
    record = Record(step.name, step.key, status, started, finished, None, None, changes.encoded)
    return Move(Line.RUNNING, at.pc + 1, attempts, None, None, changes, (record,))


def raised(
    at: Cursor, step: Step, exc: BaseException, started: float, settings: EngineSettings
) -> Move:
    """The step raised: a retrystep waits for its backoff until its attempts are spent; any
    other step fails."""
    message, tb = failure_of(exc)
    finished = time.time()
    if step.kind is StepKind.RETRY:
        attempts = at.attempts + 1
        if attempts < (step.max_attempts or settings.retry_max_attempts):
            due = finished + retry_delay(settings, step, attempts)
            record = _record(
                step, StepStatus.WAITING, started, finished, error=message, traceback=tb
            )
            return Move(Line.WAITING, at.pc, attempts, message, due, NO_CHANGES, (record,))
        error = f"gave up after {attempts} attempts: {message}"
    else:
        attempts, error = at.attempts, message
    record = _record(step, StepStatus.FAILED, started, finished, error=message, traceback=tb)
    return Move(Line.FAILED, at.pc, attempts, error, None, NO_CHANGES, (record,))


def waiting(at: Cursor, step: Step, started: float) -> Move:
    """A callback's wait begins (with its deadline, when the step has one)."""
    due = started + step.callback_timeout if step.callback_timeout else None
    record = _record(step, StepStatus.AWAITING_CALLBACK, started, time.time())
    return Move(Line.AWAITING_CALLBACK, at.pc, at.attempts, None, due, NO_CHANGES, (record,))


def stays(at: Cursor, step: Step, status: StepStatus, started: float) -> Move:
    """The step waits where it stands (for a person's answer): only its record."""
    record = _record(step, status, started, time.time())
    return Move(Line.RUNNING, at.pc, at.attempts, None, None, NO_CHANGES, (record,))


def answered(
    at: Cursor, step: Step, state: Mapping[str, Any], delta: dict[str, Any], now: float
) -> Move:
    """An answer (a callback's, a form's) completes the step that waited for it."""
    return ended(at, step, now, now, changes_of(state, step.name, delta))


def expired(at: Cursor, step: Step, now: float) -> Move:
    """A callback's wait is past its deadline: it fails, back at its action, so a retry asks
    the external system again with a new token."""
    error = f"{step.name}: no callback arrived before the deadline"
    record = _record(step, StepStatus.FAILED, now, now, error=error)
    return Move(Line.FAILED, at.pc - 1, at.attempts, error, None, NO_CHANGES, (record,))


def skip_width(at: Cursor) -> int:
    """How many steps a skip passes: a callback step whose action failed is three steps (the
    action, the wait, the validate step)."""
    return 3 if at.steps[at.pc].kind is StepKind.CALLBACK_ACTION else 1


def skipped(at: Cursor, by: str, reason: str, now: float) -> Move:
    """Someone skips the failing step (a whole callback step): recorded skipped, State as it
    is, on to the next."""
    width = skip_width(at)
    records = tuple(
        _record(s, StepStatus.SKIPPED, now, now, by=by, reason=reason)
        for s in at.steps[at.pc : at.pc + width]
    )
    return Move(Line.RUNNING, at.pc + width, 0, None, None, NO_CHANGES, records)


def retried(at: Cursor, failed: bool, back_to: int | None = None) -> Move:
    """A retry: the failing step runs again (or the step at ``back_to``: a callback's action,
    asked again); a failed one has all its attempts again."""
    pc = at.pc if back_to is None else back_to
    return Move(Line.RUNNING, pc, 0 if failed else at.attempts, None, None, NO_CHANGES, ())


# -- running a step ------------------------------------------------------------------------


async def begin(host: Host) -> float:
    """When a step of a line (the process's or a branch's) starts: in a cluster, only once
    this node's lease holds by its margin (``orchd.engine.lease``; raises ``LeaseLost`` when it
    was lost), so a step never starts where the node that takes the process over may run it."""
    gate = lease.gate(host)
    if gate is not None:
        await gate.admit()
    return time.time()


def should_run(step: Step, state: Mapping[str, Any]) -> bool:
    """Whether the step's conditions let it run; StepCrash when one raises (the step fails)."""
    if not step.predicates:
        return True
    try:
        return step.should_run(clone(dict(state)))
    except Exception as exc:
        raise StepCrash(f"step {step.name!r}: its condition raised {exc!r}") from exc


class Failed(NamedTuple):
    """The step (or ``finish``) raised ``exc``: a failure of the step, never of orchd."""

    exc: BaseException


class Token(NamedTuple):
    """A callback action's token: the step sees ``token``, the engine keeps ``digest``."""

    token: str
    digest: str


def new_token() -> Token:
    token = new_callback_token()
    return Token(token, token_digest(token))


class Returned(NamedTuple):
    """What the step returned, ready to commit: what it changed, and its subscription as
    saved (with a typed one's relations) when it changed that."""

    changes: Changes
    sub: dict[str, Any] | None = None
    relations: dict[str, str] | None = None


#: Checks a subscription a step put into State before it is committed (the process line's;
#: README "Products"): the subscription as saved, and a typed one's relations.
SubscriptionCheck = Callable[
    [Step, dict[str, Any]], Awaitable[tuple[dict[str, Any] | None, dict[str, str] | None]]
]


async def call(
    host: Host,
    pid: str,
    trace_id: str,
    branch: str | None,
    step: Step,
    attempt: int,
    view: Mapping[str, Any],
    state: Callable[[], Mapping[str, Any]],
    check: SubscriptionCheck | None = None,
) -> Returned | Failed | None:
    """Call the step with its arguments from ``view``, and answer what it changed in the
    line's ``state`` (read once it returned; ``check`` checks a subscription it changed);
    Failed when it (or what it returned) failed; None when it never ran (halted while it
    waited for its resources, README "Limits on shared resources"). Only this actor's own
    cancellation propagates (the step runs again at the next start)."""
    if faults.ENABLED:
        faults.point("before_step")
    # Its requests carry the process's trace and this call's span (README "Traces").
    traced = enter_step(host.tracing, pid, trace_id, branch, step.key, attempt)
    try:
        kwargs = inject(step.name, step.params, view, host.resources)
        uses = slots_of(step, view)
        # Thousands of branches may wait in their steps at once: each keeps its arguments,
        # not a reference to its State.
        del view
        result = await call_step(host, pid, step, kwargs, uses)
        delta = to_json_values(step.name, result)
        sub = relations = None
        if check is not None and "subscription" in delta:
            sub, relations = await check(step, delta)
        changes = changes_of(state(), step.name, delta)
    except Halted:
        return None
    except asyncio.CancelledError as exc:
        if cancelled_from_outside():
            raise
        return Failed(exc)  # step code raised it itself (or cancelled what it awaited)
    except BaseException as exc:  # SystemExit in workflow code fails the step, not orchd
        return Failed(exc)
    finally:
        leave_step(traced)
    if faults.ENABLED:
        faults.point("after_step")
    return Returned(changes, sub, relations)


__all__ = [
    "Cursor", "Failed", "Line", "Move", "Record", "Returned", "Token", "answered", "begin", "call",
    "ended",
    "expired", "new_token", "raised", "retried", "should_run", "skip_width", "skipped", "stays",
    "step_writes", "waiting",
]  # fmt: skip
