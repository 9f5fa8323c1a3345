"""A process's actor: runs its steps one at a time and is the only writer of its row.

An actor lives only while its process has work: it runs steps while the process is created or
running, handles the messages in its mailbox, and retires as soon as the process waits for
someone else (a user, a callback, a retry timer) or has finished. The process then exists only
in the database until a message re-activates it.

The step at its position runs in ``orchd.engine.line`` (through the step interpreter,
``orchd.engine.interpreter``); a message taken from its mailbox goes through
``orchd.engine.inbox``; the actor's side of someone acting on the process (resume,
retry, skip, abort, a callback) is in ``orchd.engine.actions``; of a children step in
``orchd.engine.children``; of a fork in ``orchd.engine.forkstep``. Each of them hands the actor
a transition (a ``Move`` or a ``Change``): only this module assigns an actor's fields, and the
runtime is handed values (which process it runs, ``Identity``; what a commit committed,
``Committed``), never the actor to read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from orchd.dsl import Step, StepKind, Stranded, Workflow
from orchd.engine import actions, formpages, inbox, line, subscribing
from orchd.engine import interpreter as step_rules
from orchd.engine.change import FIELDS, UNSET, Change
from orchd.engine.forks import Forks
from orchd.engine.host import Committed, Host, Identity
from orchd.engine.messages import (
    Abort,
    Callback,
    Envelope,
    Expire,
    Message,
    Resume,
    Retry,
    Run,
    Skip,
    Stop,
    respond,
    stopped,
)
from orchd.engine.waits import End
from orchd.errors import (
    InvalidTransition,
    OrchdError,
    ProcessNotFound,
    StoreError,
)
from orchd.model import (
    ACTIVE,
    FINAL,
    Action,
    ProcessStatus,
    StepStatus,
    Target,
    check_action,
    check_transition,
)
from orchd.state import (
    encode,
)
from orchd.store.base import (
    ActionWrite,
    BranchRow,
    Checkpoint,
    ChildOf,
    ProcessRow,
    ProcessTouch,
    ProcessWrite,
    StepWrite,
)

log = logging.getLogger("orchd.engine.actor")
P = ProcessStatus


def _refused(action: Action, status: ProcessStatus, pid: str) -> InvalidTransition:
    try:
        check_action(action, status, pid)
    except InvalidTransition as exc:
        return exc
    raise AssertionError(f"{action} is allowed in {status}")  # pragma: no cover


SKIPPED = StepStatus.SKIPPED


class Actor:
    """The loop of one process; the engine routes every message for the process here."""

    # Thousands of actors may be alive at once (polling an OSS): keep each one small.
    __slots__ = (
        "host", "pid", "mailbox", "loaded", "stopping", "abort_requested", "workflow",
        "identity", "pk", "target", "status", "pc", "seq", "state", "current_step", "error",
        "form", "callback_token", "attempts", "position", "next_retry_at", "subscription_id",
        "broken", "task", "child_group", "children_group", "children_pending",
        "replace_aborted", "forks", "committing",
    )  # fmt: skip

    def __init__(self, host: Host, pid: str, row: ProcessRow | None = None) -> None:
        self.host = host
        self.pid = pid
        self.mailbox: list[Envelope] = []  # rarely more than one: a list is smallest
        self.task: asyncio.Task[None] | None = None
        self.loaded = False
        self.stopping = False
        self.abort_requested: str | None = None
        self.forks: Forks | None = None
        #: A checkpoint is being committed: a reader may see what it writes (a new status)
        #: before this actor is told that it committed.
        self.committing = False
        if row is not None:
            self._load(row)

    # -- the loop -------------------------------------------------------------------------

    def post(self, message: Message, reply: asyncio.Future[Any] | None) -> None:
        envelope = Envelope(message, reply)
        if self.loaded and self.status in ACTIVE and not self.committing:
            # A running process answers at once instead of after its current step: abort is
            # noted for the next step boundary; resume, retry and a stray callback are refused.
            # Not while a checkpoint commits: a client that has read what it writes (reads see
            # a commit before its actor wakes) must find the action taken, so it waits.
            forks = self.forks
            match message:
                case Abort(by=by):
                    # Committed before it is acknowledged, so a restart applies it too; it
                    # takes effect at the step boundary (README "Guarantees"): the running
                    # step ends first, and its outcome is committed.
                    self.abort_requested = by
                    self.host.background(
                        self._request_abort(envelope, by), f"process={self.pid} abort request"
                    )
                    if forks is not None:
                        forks.wake.set()
                    return
                case Callback(digest=str(digest)) if forks is not None and forks.owns(digest):
                    self.mailbox.append(envelope)  # a branch's callback: its fork takes it
                    forks.wake.set()
                    return
                case Resume():
                    respond(envelope, error=_refused(Action.RESUME, self.status, self.pid))
                    return
                case Retry(automatic=False):
                    respond(envelope, error=_refused(Action.RETRY, self.status, self.pid))
                    return
                case Skip():
                    respond(envelope, error=_refused(Action.SKIP, self.status, self.pid))
                    return
                case Callback(digest=digest) if digest is None or digest != self.callback_token:
                    respond(envelope, error=_refused(Action.CALLBACK, self.status, self.pid))
                    return
        if isinstance(message, Stop):
            self.stopping = True
        self.mailbox.append(envelope)
        if self.forks is not None and self.forks.running:
            self.forks.wake.set()

    @property
    def active(self) -> bool:
        """Whether it has loaded its process and the process is created or running."""
        return self.loaded and self.status in ACTIVE

    def start(self, group: asyncio.TaskGroup) -> None:
        """Run the loop as a task of ``group``; RuntimeError when the group is ending."""
        run = self.run()
        try:
            self.task = group.create_task(run)
        except RuntimeError:
            run.close()
            raise

    async def run(self) -> None:
        try:
            if not self.loaded:
                row = await self.host.load(self.pid)
                if row is None:
                    self._fail_all(ProcessNotFound(f"process {self.pid} does not exist"))
                    return
                self._load(row)
            while True:
                if self.abort_requested is not None and self.status not in FINAL:
                    by, self.abort_requested = self.abort_requested, None
                    await actions.abort(self, by, requested=True)
                    continue
                if self.mailbox:
                    await inbox.handle(self, self.mailbox.pop(0))
                    continue
                if self.stopping:
                    return
                if self.status in ACTIVE:
                    await line.advance(self)
                    continue
                return
        except asyncio.CancelledError:
            # The engine stops (the grace period is over): whoever waits for an answer from
            # this actor is told so now; the process goes on at the next start.
            self._fail_all(stopped())
            raise
        except StoreError as exc:
            self._fail_all(exc)
            attempt = self.host.store_failed(self.pid)
            # The store logs the failure itself; say once per process that it will go on.
            (log.warning if attempt == 1 else log.debug)(
                "process=%s checkpoint not committed, will run again from its last commit: %s",
                self.pid,
                exc,
            )
        except Exception:
            # A bug, not the database: the process still must not stay active with nobody
            # running it, so it runs again from its last commit later, like after a failed write.
            log.exception("process=%s actor crashed; it runs again from its last commit", self.pid)
            self._fail_all(OrchdError(f"process {self.pid}: internal error"))
            self.host.store_failed(self.pid)
        finally:
            if self.loaded:
                self.host.retire(self, self.identity, self.status)
            else:  # its process was not found
                self.host.retire(self, None, None)

    async def _request_abort(self, envelope: Envelope, by: str) -> None:
        """Commit the abort asked, then answer: ``running`` (requested) while it runs."""
        try:
            unfinished = await self.host.request_abort(self.pk, by)
        except Exception as exc:
            respond(envelope, error=exc)
            return
        # Finished meanwhile (nothing was requested): the answer says how it ended.
        respond(envelope, self.status if unfinished or self.status in FINAL else P.ABORTED)

    def leftovers(self) -> list[Envelope]:
        """The messages that came in while it retired, taken out of its mailbox."""
        pending, self.mailbox = self.mailbox, []
        return pending

    def _fail_all(self, error: BaseException) -> None:
        while self.mailbox:
            respond(self.mailbox.pop(0), error=error)
        self.host.waits.refuse_held(self.pid, error)

    def _load(self, row: ProcessRow) -> None:
        self.workflow: Workflow | None = self.host.workflow(row.workflow)
        self.identity = Identity(self.pid, row.workflow, row.trace_id, row.parent_id)
        self.pk = row.pk
        self.target = Target(row.target)
        self.status = P(row.status)
        self.pc = row.pc
        self.seq = row.seq
        self.state: dict[str, Any] = row.state
        self.current_step = row.current_step
        self.error = row.error
        self.form = row.form
        self.callback_token = row.callback_token
        if row.callback_token is not None and self.status not in FINAL:
            # An answer may come before its wait step runs again (README "Guarantees").
            self.host.waits.begin(row.callback_token, self.pid)
        self.attempts = row.attempts
        self.next_retry_at = row.next_retry_at
        self.subscription_id = row.subscription_id
        self.position = None if row.step_key is None else (row.step_key, row.step_occurrence)
        self.child_group = row.child_group
        self.children_group = row.children_group
        self.children_pending = row.children_pending
        self.replace_aborted = False
        # An abort asked while it ran and committed, not applied yet (a restart came first).
        self.abort_requested = None if self.status in FINAL else row.abort_requested
        self.loaded = True
        self.broken = self._place()

    def _place(self) -> str | None:
        """Find the process's position in the workflow code loaded now (setting ``pc``);
        why it cannot go on, if it cannot (README "Changing workflows safely")."""
        if self.workflow is None:
            return f"workflow {self.identity.workflow!r} is not registered"
        if self.status in FINAL:
            return None
        key, occurrence = self.position or (None, 0)
        try:
            self.pc = self.workflow.locate(key, occurrence, self.pc, self.current_step)
        except Stranded as exc:
            return str(exc)
        return None

    def action(self, action: Action, by: str, detail: str | None = None) -> ActionWrite:
        return ActionWrite(pk=self.pk, at=time.time(), action=action, by=by, detail=detail)

    def end_wait(self, how: End) -> None:
        """A callback token answers one wait only: forget it once the wait is over."""
        if self.callback_token is not None:
            self.host.waits.end(self.callback_token, how)
            self.callback_token = None

    async def fail_if_broken(self) -> None:
        """A process whose step the code loaded now lacks fails, and nothing runs (README "Changing
        workflows safely")."""
        if self.broken is None:
            return
        if self.status is not P.FAILED:
            self.error = self.broken
            self.next_retry_at = None
            await self.write(P.FAILED, steps=[])
        raise InvalidTransition(f"process {self.pid} cannot go on: {self.broken}")

    # -- running steps --------------------------------------------------------------------

    def step_now(self) -> Step:
        if self.workflow is None or self.broken is not None:
            raise InvalidTransition(f"process {self.pid} cannot go on: {self.broken}")
        return self.workflow.steps[self.pc]

    def hand_out(self) -> str:
        """A callback action's new token: its wait begins. The token is a capability: the
        action step sees it while it runs; the process keeps only its digest (never in State,
        a step record or the API)."""
        token = step_rules.new_token()
        self.end_wait(End.SKIPPED)
        self.callback_token = token.digest
        self.host.waits.begin(token.digest, self.pid)
        return token.token

    async def step_raised(self, step: Step, exc: BaseException, started: float) -> None:
        if step.kind is StepKind.CALLBACK_ACTION:
            # Its wait never begins: the token it handed out answers nothing (a retry makes
            # a new one), and an answer that came while it ran is refused now.
            self.end_wait(End.FAILED)
        move = step_rules.raised(self, step, exc, started, self.host.settings)
        waits = move.line is step_rules.Line.WAITING
        await self.commit(step, move, P.WAITING if waits else P.FAILED)
        if waits and self.next_retry_at is not None:
            self.host.later(self.pid, self.next_retry_at, Retry(automatic=True))

    async def form_page(
        self, step: Step, answers: list[Any]
    ) -> tuple[formpages.FormPage, dict[str, Any] | None]:
        """The inputstep's form after ``answers``: the next page, or done and the answer."""
        pages = await formpages.inputstep_pages(step, self.state, self.host.resources)
        return await formpages.replay(pages, answers, self.host.choices)

    def state_now(self) -> dict[str, Any]:
        """The process's State (what a step changed is read against it)."""
        return self.state

    async def subscription_change(
        self, step: Step, delta: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, dict[str, str] | None]:
        """A subscription the step put into State, checked and completed (README "Products")."""
        own = self.subscription_id
        sub, relations = await subscribing.changed(
            self.host, step, delta, self.state, own, self.target
        )
        if sub is not None and own is None:
            self.subscription_id = sub["id"]
        return sub, relations

    # -- forks (README "Parallel branches"; the branches themselves run in orchd.engine.forks) -----

    def at_fork(self) -> bool:
        """Whether the process stands at a parallel or foreach step."""
        wf = self.workflow
        return (
            wf is not None
            and self.broken is None
            and self.status not in FINAL
            and self.pc < len(wf.steps)
            and wf.steps[self.pc].forks
        )

    def next_seq(self) -> int:
        """The number of the process's next step record."""
        self.seq += 1
        return self.seq

    @property
    def concurrent(self) -> bool:
        """Whether several of its branches may be committing at once."""
        return self.forks is not None and self.forks.running

    async def touch(
        self,
        steps: list[StepWrite],
        branches: list[BranchRow],
        *,
        drops: list[str] | None = None,
        actions: list[ActionWrite] | None = None,
    ) -> None:
        """Commit steps of branches: their records and rows, and the process's step count
        and time (never its State, which the join alone changes)."""
        touch = ProcessTouch(status=self.status, seq=self.seq, updated_at=time.time(), pk=self.pk)
        checkpoint = Checkpoint(
            process_id=self.pid,
            process=touch,
            steps=steps,
            branches=branches,
            drop_branches=drops or [],
            actions=actions or [],
        )
        await self.host.checkpoint(checkpoint, self.identity, self.status, self.concurrent)
        seconds = steps[-1].finished_at - steps[-1].started_at if steps else None
        self.host.committed(self._committed(self.status, steps, seconds))

    # -- checkpoints (also what the children and fork steps commit through: their sides of
    # the actor are orchd.engine.children and orchd.engine.forkstep) ---------------------

    @property
    def steps(self) -> Sequence[Step]:
        """The process's line of steps (the step interpreter's cursor is the actor itself)."""
        assert self.workflow is not None
        return self.workflow.steps

    def apply(self, move: step_rules.Move) -> None:
        """Take the place a transition gives (orchd.engine.interpreter): the one place the
        process's line moves."""
        changed = move.changes.values
        if changed:
            self.state.update(changed)
        if move.pc != self.pc:
            self.form = None  # a form belongs to its step
            steps = self.steps
            self.current_step = steps[move.pc].name if move.pc < len(steps) else None
        self.pc, self.attempts = move.pc, move.attempts
        self.error, self.next_retry_at = move.error, move.next_retry_at

    def take(self, change: Change) -> None:
        """Set the fields a change names (``orchd.engine.change``)."""
        for name in FIELDS:
            value = getattr(change, name)
            if value is not UNSET:
                setattr(self, name, value)

    def retry_at(self, at: float) -> None:
        """Retry the step at ``at`` (a timer), not now."""
        self.next_retry_at = at
        self.host.later(self.pid, at, Retry(automatic=True))

    async def commit(
        self,
        step: Step,
        move: step_rules.Move,
        status: ProcessStatus = P.RUNNING,
        *,
        subscription: dict[str, Any] | None = None,
        relations: dict[str, str] | None = None,
        action: ActionWrite | None = None,
        change: Change | None = None,
    ) -> None:
        """Apply a step's transition and commit it, moving the process to ``status``."""
        advances = move.pc > self.pc
        self.apply(move)
        if change is not None:
            self.take(change)
        if step.forks and advances:
            self.forks = None  # it left the fork (joined or skipped)
        records = step_rules.step_writes(move.records, self.pk, self.next_seq)
        last = move.records[-1] if move.records else None
        await self.write(
            status,
            steps=records,
            subscription=subscription,
            relations=relations,
            step_seconds=None if last is None else last.finished - last.started,
            actions=[] if action is None else [action],
            # A fork joins, is skipped (or its condition skips it): its branches' rows go with it.
            drops=[""] if step.forks and advances else [],
        )

    async def write(
        self,
        status: ProcessStatus,
        *,
        steps: list[StepWrite],
        subscription: dict[str, Any] | None = None,
        relations: dict[str, str] | None = None,
        release: str | None = None,
        step_seconds: float | None = None,
        actions: list[ActionWrite] | None = None,
        branches: list[BranchRow] | None = None,
        drops: list[str] | None = None,
        move: step_rules.Move | None = None,
        change: Change | None = None,
    ) -> None:
        """Commit the process moving to ``status``, after a transition (``move``) or a
        change of its fields, if any."""
        if move is not None:
            self.apply(move)
        if change is not None:
            self.take(change)
        checkpoint = self.checkpoint_of(
            status, steps=steps, subscription=subscription, release=release, actions=actions
        )
        checkpoint.relations = relations
        checkpoint.branches = branches or []
        checkpoint.drop_branches = drops or []
        self.committing = True
        try:
            await self.host.checkpoint(checkpoint, self.identity, self.status, self.concurrent)
        finally:
            self.committing = False
        self.committed_as(status, steps, step_seconds)

    def checkpoint_of(
        self,
        status: ProcessStatus,
        *,
        steps: list[StepWrite],
        subscription: dict[str, Any] | None = None,
        release: str | None = None,
        actions: list[ActionWrite] | None = None,
    ) -> Checkpoint:
        """The process as it is now, moving to ``status``, as one write."""
        # The one place a status changes: the table in orchd.model says what is allowed.
        check_transition(self.status, status)
        if status in FINAL:
            self.position = None
        elif self.broken is None and self.workflow is not None:
            # A broken process keeps the position it had: fixed code may find it again.
            self.position = self.workflow.positions.at(self.pc)
        key, occurrence = self.position or (None, 0)
        child_of = None
        parent_id = self.identity.parent_id
        if status in FINAL and parent_id is not None and self.child_group is not None:
            child_of = ChildOf(parent_id=parent_id, group=self.child_group)
        return Checkpoint(
            process_id=self.pid,
            process=ProcessWrite(
                pk=self.pk,
                status=status,
                pc=self.pc,
                seq=self.seq,
                state=encode(self.state),
                current_step=self.current_step,
                error=self.error,
                form=self.form,
                callback_token=self.callback_token,
                attempts=self.attempts,
                next_retry_at=self.next_retry_at,
                subscription_id=self.subscription_id,
                step_key=key,
                step_occurrence=occurrence,
                children_group=self.children_group,
                children_pending=self.children_pending,
                updated_at=time.time(),
            ),
            steps=steps,
            actions=actions or [],
            subscription=subscription,
            release=release,
            child_of=child_of,
        )

    def committed_as(
        self, status: ProcessStatus, steps: list[StepWrite], step_seconds: float | None
    ) -> None:
        previous, self.status = self.status, status
        self.host.committed(self._committed(previous, steps, step_seconds))

    def _committed(
        self, previous: ProcessStatus, steps: list[StepWrite], step_seconds: float | None
    ) -> Committed:
        # Positional (in Committed's field order): this runs at every commit.
        return Committed(
            self.identity,
            previous,
            self.status,
            self.current_step,
            self.error,
            self.children_group is not None,
            steps,
            step_seconds,
        )


__all__ = [
    "Actor", "Host", "Message", "Run", "Resume", "Retry", "Abort", "Callback", "Expire", "Stop"
]  # fmt: skip
