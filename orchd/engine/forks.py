"""Running a process's fork (README "Parallel branches"): ``parallel`` and ``foreach`` inside its
actor.

A fork runs inside its process's actor. Each branch that can run is a small task running its
steps one at a time against its own view of State (the State at the fork, plus a foreach
element, plus what the branch changed), and each step commits with the group commit like any
other step: its record names the branch, and the branch's row says where it stands and what it
changed. The process's own State is not touched until the join, which merges (``parallel``) or
collects (``foreach``) what the branches changed in one checkpoint that also drops their rows:
a join happens once, and after a crash every branch goes on from its own last commit.

A branch that must wait (a retrystep's backoff, a callback) or that failed ends its task and
holds nothing but its row; the process runs while any branch can run, and when none can it
takes the status README "Parallel branches" gives (failed, else waiting, else awaiting_callback)
and its actor retires.
A retry, a skip, a callback or a retry timer makes branches runnable again.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from orchd.dsl import Step, StepKind
from orchd.engine import interpreter as step_rules
from orchd.engine.branches import Branch, Broken, Fork, began_at, fill_pending
from orchd.engine.messages import Callback, Envelope, Expire, Retry, Run, fail, respond
from orchd.engine.outcome import StepCrash, changes_of
from orchd.engine.waits import End, refusal
from orchd.errors import CallbackNotFound, InvalidTransition
from orchd.model import Action, ProcessStatus, StepStatus
from orchd.state import StepOutputError
from orchd.status import BranchStatus
from orchd.store.base import ActionWrite, BranchRow, StepWrite

if TYPE_CHECKING:
    from orchd.engine.actor import Actor

B = BranchStatus
P = ProcessStatus
SKIPPED = StepStatus.SKIPPED


class Forks:
    """The fork a process stands at, with its nested forks, run by the process's actor."""

    def __init__(self, actor: Actor, step: Step, base: Mapping[str, Any]) -> None:
        self.actor = actor
        self.top = Fork(step, None, base)
        #: Branch tasks running now, and branches ready to run.
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.ready: deque[Branch] = deque()
        self.wake = asyncio.Event()
        self.crash: BaseException | None = None
        self.running = False
        #: The callback waits of its branches (and an answer one holds) are the engine's.
        self.waits = actor.host.waits
        self.settings = actor.host.settings
        #: When the retry timer set last fires (a later due needs no new timer).
        self.timer_at: float | None = None
        fill_pending(self.top)

    # -- loading --------------------------------------------------------------------------

    def load(self, rows: list[BranchRow]) -> None:
        """Put back the branches a previous run committed. Raises Broken."""
        by_path = {r.path: r for r in rows}
        self._load_fork(self.top, by_path, sorted(by_path))

    def _load_fork(self, fork: Fork, rows: dict[str, BranchRow], paths: list[str]) -> None:
        fork.pending.clear()
        for index in range(fork.count):
            path = f"{fork.path}/{index}"
            row = rows.get(path)
            # A branch whose first step is a fork has no row of its own until that fork
            # joins, only its nested branches' rows: it has started all the same.
            if row is None and not _rows_under(paths, path + "/"):
                fork.pending.append(index)
                continue
            fork.started = None  # started by an earlier run: its records say when
            b = Branch(fork, index)
            if row is not None:
                b.place(row)
            fork.branches[index] = b
            if b.token is not None:
                self.waits.begin(b.token, self.actor.pid, b)
            if b.status is not B.DONE:
                fork.unfinished += 1
            if b.status is B.RUNNING and b.steps[b.pc].forks:
                b.nested = Fork(b.steps[b.pc], b, b.state())
                self._load_fork(b.nested, rows, paths)
                if not b.nested.complete:
                    b.status = B.FORKED

    # -- what the actor asks --------------------------------------------------------------

    def leaves(self) -> Iterator[Branch]:
        return (b for b in self.top.walk() if b.status is not B.FORKED)

    async def began(self, fork: Fork) -> float:
        """When ``fork`` first started (a fork loaded from rows: read from its records)."""
        if fork.started is None:
            records = await self.actor.host.fork_records(self.actor.pk)
            fork.started = began_at(fork, records) or time.time()
        return fork.started

    def owns(self, digest: str) -> Branch | None:
        """The branch of this process that handed out the token of ``digest``, if any."""
        wait = self.waits.of(digest)
        if wait is None or wait.pid != self.actor.pid:
            return None
        return wait.branch

    def blocked(self) -> tuple[ProcessStatus, str | None, float | None]:
        """The process's status once no branch can run (README "Parallel branches"), the error to
        show and
        when the next timer is due."""
        failed = waiting = None
        for b in self.leaves():
            if b.status is B.FAILED and failed is None:
                failed = b
            elif b.status is B.WAITING and waiting is None:
                waiting = b
        if failed is not None:
            return P.FAILED, f"branch {failed.path}: {failed.error}", None
        if waiting is not None:
            return P.WAITING, f"branch {waiting.path}: {waiting.error}", self.due()
        return P.AWAITING_CALLBACK, None, self.due()

    def rerun(self) -> list[BranchRow]:
        """A retry: failed branches (and waiting ones) run again from their failing step."""
        changed = []
        for b in list(self.leaves()):
            if b.status in (B.FAILED, B.WAITING):
                b.apply(step_rules.retried(b, b.status is B.FAILED))
                changed.append(b.row(self.actor.pk))
        return changed

    def tick(self, now: float) -> tuple[list[BranchRow], list[StepWrite]]:
        """A timer: waiting branches whose backoff is over run again; a callback wait past its
        deadline fails its branch (back at the action, so a retry asks again)."""
        rows, records = [], []
        for b in list(self.leaves()):
            if b.next_retry_at is None or b.next_retry_at > now + 0.01:
                continue
            if b.status is B.WAITING:
                b.apply(step_rules.retried(b, False))
                rows.append(b.row(self.actor.pk))
            elif b.status is B.AWAITING_CALLBACK:
                self._forget(b, End.EXPIRED)
                records += self._move(b, step_rules.expired(b, b.steps[b.pc], now))
                rows.append(b.row(self.actor.pk))
        return rows, records

    def skip(self, reason: str, by: str, now: float) -> tuple[list[BranchRow], list[StepWrite]]:
        """A skip: every failed branch (else every waiting one) records its failing step (a
        whole callback_step when its action or wait failed) skipped and goes on."""
        leaves = list(self.leaves())
        targets = [b for b in leaves if b.status is B.FAILED] or [
            b for b in leaves if b.status is B.WAITING
        ]
        rows: list[BranchRow] = []
        records: list[StepWrite] = []
        for b in targets:
            self._forget(b, End.SKIPPED)
            records += self._move(b, step_rules.skipped(b, by, reason, now))
            rows.append(b.row(self.actor.pk))
        return rows, records

    def awaiting(self, digest: str | None) -> Branch:
        """The branch a callback answers: by its token, or (an operator's answer by process
        id) the only branch awaiting one."""
        if digest is not None:
            b = self.owns(digest)
            if b is None or b.status is not B.AWAITING_CALLBACK:
                raise CallbackNotFound("no process waits for this callback token")
            return b
        waiting = [b for b in self.leaves() if b.status is B.AWAITING_CALLBACK]
        if len(waiting) != 1:
            names = ", ".join(b.path for b in waiting) or "none"
            raise InvalidTransition(
                f"process {self.actor.pid}: answer by token: branches awaiting a callback: {names}"
            )
        return waiting[0]

    def answer(self, b: Branch, payload: Any, now: float) -> tuple[BranchRow, StepWrite]:
        """A callback's answer completes the branch's wait step."""
        wait = b.steps[b.pc]
        self._forget(b, End.ANSWERED)
        delta = {"callback_result": payload}
        (record,) = self._move(b, step_rules.answered(b, wait, b.state(), delta, now))
        return b.row(self.actor.pk), record

    def forget_tokens(self, how: End) -> None:
        for b in self.leaves():
            self._forget(b, how)

    # -- running --------------------------------------------------------------------------

    async def drive(self) -> None:
        """Run every branch that can run until none can: all done (the join is the actor's),
        or each failed, waiting or halted (an abort, a shutdown)."""
        self.running = True
        self.crash = None
        self.ready.clear()
        self._prepare(self.top)
        try:
            while True:
                self._take_mail()
                if self.crash is not None:
                    raise self.crash
                if not self._halted():
                    self._hand_over_answers()
                    while self.ready:
                        self._launch(self.ready.popleft())
                if not self.tasks:
                    return
                self.wake.clear()
                await self.wake.wait()
        finally:
            self.running = False
            self.ready.clear()
            pending = list(self.tasks.values())
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            self._refuse_held_answers()
            self.schedule_timer()

    def _prepare(self, fork: Fork) -> None:
        """Before running: every runnable branch is ready, forks take their free slots, and
        a branch whose nested fork completed meanwhile (a skip) goes on to its join."""
        for b in list(fork.branches.values()):
            if b.status is B.FORKED and b.nested is not None:
                self._prepare(b.nested)
                if b.nested.complete:
                    b.status = B.RUNNING
            if b.status is B.RUNNING:
                self.ready.append(b)
        self._fill(fork)

    def _halted(self) -> bool:
        return self.actor.abort_requested is not None or self.actor.stopping

    def _launch(self, b: Branch, answer: Envelope | None = None) -> None:
        if b.path not in self.tasks:
            self._track(b.path, self._run(b, answer))

    def _track(self, key: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as one of the fork's tasks; its end wakes the driver, and what it
        raised (a bug, a store failure) ends the drive."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks[key] = task

        def ended(t: asyncio.Task[None]) -> None:
            if self.tasks.get(key) is t:
                del self.tasks[key]
            if not t.cancelled() and t.exception() is not None and self.crash is None:
                self.crash = t.exception()
            self.wake.set()

        task.add_done_callback(ended)

    def _take_mail(self) -> None:
        """Messages that came in while branches run: a callback for a branch, a timer."""
        mailbox = self.actor.mailbox
        keep = []
        while mailbox:
            envelope = mailbox.pop(0)
            match envelope.message:
                case Callback(digest=digest) if digest is not None:
                    self._callback_while_running(envelope, digest)
                case Retry(automatic=True):
                    before = [b for b in self.leaves() if b.status is B.WAITING]
                    rows, records = self.tick(time.time())
                    self.ready.extend(b for b in before if b.status is B.RUNNING)
                    self.schedule_timer()
                    if records:  # callback waits past their deadline
                        self._track(f"#expired{id(records)}", self.actor.touch(records, rows))
                    respond(envelope)
                case Expire() | Run():
                    respond(envelope)
                case _:
                    keep.append(envelope)
        mailbox.extend(keep)

    def _callback_while_running(self, envelope: Envelope, digest: str) -> None:
        b = self.owns(digest)
        wait = self.waits.of(digest)
        if b is None or wait is None or wait.taken or not _may_wait(b):
            # A token answers one wait: a second answer (a sender's retry) finds it used, and
            # one for a branch whose action failed finds that its wait never began.
            respond(envelope, error=refusal(End.ANSWERED))
            return
        if b.status is B.AWAITING_CALLBACK and b.path not in self.tasks:
            wait.taken = True
            self._launch(b, envelope)
        else:
            # Its action, or its wait's commit, is not done: the wait takes it (or, when its
            # task is ending, the driver hands it over once the task is gone).
            self.waits.hold(digest, envelope)

    def _hand_over_answers(self) -> None:
        """Run each branch whose answer came while its task was ending, once it has ended."""
        for wait in self.waits.held(self.actor.pid):
            b = wait.branch
            if b is not None and b.status is B.AWAITING_CALLBACK and b.path not in self.tasks:
                answer = self.waits.take(wait.digest)
                assert answer is not None
                self._launch(b, answer)

    def _refuse_held_answers(self) -> None:
        """An answer still held when the branches stop is refused, so its sender does not
        wait for ever: at a shutdown with 503 (the wait is committed, and the sender's retry
        is taken after the restart), after an abort or a crash as a token no wait holds."""
        how = End.SHUTDOWN if self.actor.stopping else End.ABORTED
        self.waits.refuse_held(self.actor.pid, refusal(how))

    async def _run(self, b: Branch, answer: Envelope | None) -> None:
        """Run one branch until it is done, blocked or halted; when that completes a nested
        fork, its join goes on with the branch that holds it, in this task."""
        if answer is not None:
            await self._take_callback(b, answer)
        while True:
            await self._steps(b)
            if b.status is not B.DONE:
                return
            owner = self._join_owner(b.fork)
            if owner is None:
                return
            b = owner

    async def _steps(self, b: Branch) -> None:
        while b.status is B.RUNNING and not self._halted():
            if b.pc >= len(b.steps):
                self._done(b)  # an empty branch
                return
            # Each step of a branch passes the lease's gate, as the process line's do.
            started = await step_rules.begin(self.actor.host)
            if self._halted():
                return  # an abort or a stop came while it waited there: the step never began
            step = b.steps[b.pc]
            try:
                # A branch's State is built for a condition only (most steps have none).
                run = not step.predicates or step_rules.should_run(step, b.state())
            except StepCrash as exc:
                await self._raised(b, step, exc, started)
                return
            if not run:
                skipped = step_rules.ended(b, step, started, time.time(), status=SKIPPED)
                await self._commit(b, skipped)
            elif step.forks:
                if not await self._enter(b, step, started):
                    return
            elif step.kind is StepKind.CALLBACK_WAIT:
                early = self.waits.take(b.token)
                if early is None:
                    await self._wait(b, step, started)
                    return
                await self._take_callback(b, early)
            else:
                await self._call(b, step, started)

    async def _enter(self, b: Branch, step: Step, started: float) -> bool:
        """A nested fork: open it (or take the one loaded), and join it at once when it has
        nothing to run (an empty foreach). Answers whether the branch goes on in this task."""
        if b.nested is None:
            try:
                b.nested = Fork(step, b, b.state())
            except StepCrash as exc:
                await self._raised(b, step, exc, started)
                return False
            fill_pending(b.nested)
        if b.nested.complete:
            await self._join(b, started)
            return True
        b.status = B.FORKED
        self._fill(b.nested)
        return False

    def _join_owner(self, fork: Fork) -> Branch | None:
        """After a branch of ``fork`` finished: the branch to go on with in this task, when
        the fork is nested and now complete (its join is next)."""
        if not fork.complete or fork.owner is None:
            self._fill(fork)
            return None
        owner = fork.owner
        if owner.status is not B.FORKED:
            return None  # another task joins it
        owner.status = B.RUNNING
        return owner

    async def _join(self, b: Branch, started: float) -> None:
        fork = b.nested
        assert fork is not None
        step = b.steps[b.pc]
        started = await self.began(fork)  # the whole fork, not this last turn of the branch
        try:
            delta = fork.joined_changes()
            changes = changes_of(b.state(), step.name, delta)
        except (StepCrash, StepOutputError) as exc:
            await self._raised(b, step, exc, started)
            return
        b.nested = None
        move = step_rules.ended(b, step, started, time.time(), changes)
        await self._commit(b, move, drop=fork.path + "/")

    async def _call(self, b: Branch, step: Step, started: float) -> None:
        actor = self.actor

        # The view is built in the call's arguments, not kept here: thousands of branches may
        # wait in their steps at once, each keeping its arguments, not a copy of its State.
        ran = await step_rules.call(
            actor.host,
            actor.pid,
            actor.identity.trace_id,
            b.path,
            step,
            b.attempts + 1,
            self._view(b, step),
            b.state,
        )
        if ran is None:
            return  # halted before it ran
        if isinstance(ran, step_rules.Failed):
            await self._raised(b, step, ran.exc, started)
            return
        await self._commit(b, step_rules.ended(b, step, started, time.time(), ran.changes))

    def _view(self, b: Branch, step: Step) -> Mapping[str, Any]:
        """What the branch's step is called with: its State, and a callback action's token."""
        if step.kind is not StepKind.CALLBACK_ACTION:
            return b.state()
        token = step_rules.new_token()
        self._forget(b, End.SKIPPED)
        b.token = token.digest
        self.waits.begin(token.digest, self.actor.pid, b)
        return {**b.state(), "callback_token": token.token}

    async def _raised(self, b: Branch, step: Step, exc: BaseException, started: float) -> None:
        if step.kind is StepKind.CALLBACK_ACTION:
            # Its wait never begins: the token it handed out answers nothing (a retry makes a
            # new one), and an answer that came while it ran is refused now, not kept.
            self._forget(b, End.FAILED)
        await self._commit(b, step_rules.raised(b, step, exc, started, self.settings))
        self._timer_for(b)

    async def _wait(self, b: Branch, step: Step, started: float) -> None:
        await self._commit(b, step_rules.waiting(b, step, started))
        self._timer_for(b)

    async def _take_callback(self, b: Branch, envelope: Envelope) -> None:
        message = envelope.message
        assert isinstance(message, Callback)
        row, record = self.answer(b, message.payload, time.time())
        action = ActionWrite(
            pk=self.actor.pk,
            at=time.time(),
            action=Action.CALLBACK,
            by=message.by,
            detail=f"branch {b.path}",
        )
        try:
            await self.actor.touch([record], [row], actions=[action])
        except BaseException as exc:
            fail(envelope, exc)  # its sender must not wait for ever
            raise
        respond(envelope)

    async def _commit(self, b: Branch, move: step_rules.Move, drop: str | None = None) -> None:
        records = self._move(b, move)
        drops = [] if drop is None else [drop]
        await self.actor.touch(records, [b.row(self.actor.pk)], drops=drops)

    def _move(self, b: Branch, move: step_rules.Move) -> list[StepWrite]:
        """Apply a transition to the branch (done once it passed its last step); its records
        as the process's next step records, naming the branch."""
        b.apply(move)
        if b.status is B.RUNNING and b.pc >= len(b.steps):
            self._done(b)
        return step_rules.step_writes(move.records, self.actor.pk, self.actor.next_seq, b.path)

    def _done(self, b: Branch) -> None:
        if b.status is B.DONE:
            return
        b.status = B.DONE
        b.fork.unfinished -= 1

    def _fill(self, fork: Fork) -> None:
        """Start the fork's next branches while it has free slots."""
        while fork.pending and fork.unfinished < fork.limit:
            index = fork.pending.popleft()
            b = Branch(fork, index)
            fork.branches[index] = b
            fork.unfinished += 1
            if self.running:
                self.ready.append(b)

    def _forget(self, b: Branch, how: End) -> None:
        if b.token is not None:
            self.waits.end(b.token, how)
            b.token = None

    def due(self) -> float | None:
        """When the next waiting branch is due, or the next callback wait expires."""
        times = [
            b.next_retry_at
            for b in self.leaves()
            if b.next_retry_at is not None and b.status in (B.WAITING, B.AWAITING_CALLBACK)
        ]
        return min(times) if times else None

    def schedule_timer(self) -> None:
        """A retry timer for the branch due first (waiting, or a callback wait's deadline)."""
        due = self.due()
        self.timer_at = due
        if due is not None:
            self.actor.host.later(self.actor.pid, due, Retry(automatic=True))

    def _timer_for(self, b: Branch) -> None:
        """A branch that now waits until ``next_retry_at``: a timer then, unless one is set
        sooner (a tick sets the next one). Keeps thousands of waiting branches cheap."""
        at = b.next_retry_at
        if self.timer_at is None:
            self.schedule_timer()  # the first here: others may have been set before a restart
        elif at is not None and at < self.timer_at - 0.001:
            self.timer_at = at
            self.actor.host.later(self.actor.pid, at, Retry(automatic=True))


def _rows_under(paths: list[str], prefix: str) -> bool:
    """Whether any of the sorted ``paths`` starts with ``prefix``."""
    at = bisect_left(paths, prefix)
    return at < len(paths) and paths[at].startswith(prefix)


def _may_wait(b: Branch) -> bool:
    """Whether the branch waits for its token's answer, or will once its action and the wait's
    commit are done: not when it failed, waits for a retry, or went on."""
    if b.status is B.AWAITING_CALLBACK:
        return True
    if b.status is not B.RUNNING or b.pc >= len(b.steps):
        return False
    return b.steps[b.pc].kind in (StepKind.CALLBACK_ACTION, StepKind.CALLBACK_WAIT)


__all__ = ["Broken", "Forks"]
