"""The actor's side of a fork step (README "Parallel branches"): open or load the fork, run it
until no
branch can run, then join it or take the status README "Parallel branches" gives; and the actions
(a timer, a callback)
that reach a process whose fork is blocked. The branches themselves run in
``orchd.engine.forks``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from orchd.dsl import Step
from orchd.engine import interpreter as step_rules
from orchd.engine.change import Change
from orchd.engine.forks import Broken, Forks
from orchd.engine.messages import Retry
from orchd.engine.outcome import StepCrash, changes_of
from orchd.errors import CallbackNotFound
from orchd.model import Action, ProcessStatus
from orchd.state import StepOutputError
from orchd.status import BranchStatus
from orchd.subscriptions import SubscriptionError

if TYPE_CHECKING:
    from orchd.engine.actor import Actor

P = ProcessStatus


async def _opened(actor: Actor, step: Step) -> Forks:
    """The fork at ``step``, with the branches the process committed (loaded once). Raises
    StepCrash when the fork cannot open, Broken when code lost a branch's step."""
    if actor.forks is None or actor.forks.top.step is not step:
        forks = Forks(actor, step, actor.state)
        forks.load(await actor.host.branches(actor.pk))
        actor.take(Change(forks=forks))
        return forks
    return actor.forks


async def standing(actor: Actor) -> Forks | None:
    """The fork the process stands at; None when it stands at none, or its fork could not
    even open (its step failed)."""
    if not actor.at_fork():
        return None
    try:
        return await _opened(actor, actor.step_now())
    except StepCrash:
        return None
    except Broken as exc:
        actor.take(Change(broken=str(exc)))
        await actor.fail_if_broken()  # raises: the process cannot go on
        raise


async def run(actor: Actor, step: Step, started: float) -> None:
    """Run the fork's branches until none can run; then join, or wait as README "Parallel branches"
    says."""
    try:
        forks = await _opened(actor, step)
    except StepCrash as exc:
        await actor.step_raised(step, exc, started)
        return
    except Broken as exc:
        await actor.write(P.FAILED, steps=[], change=Change(broken=str(exc), error=str(exc)))
        return
    await forks.drive()
    if actor.abort_requested is not None or actor.stopping:
        return  # the loop aborts, or the actor stops; the branches' commits stand
    if not forks.top.complete:
        status, error, due = forks.blocked()
        await actor.write(status, steps=[], change=Change(error=error, next_retry_at=due))
        return
    began = await forks.began(forks.top)  # the whole fork, across waits and restarts
    try:
        delta = forks.top.joined_changes()
        sub, relations = await actor.subscription_change(step, delta)
        changes = changes_of(actor.state, step.name, delta)
    except (StepCrash, StepOutputError, SubscriptionError) as exc:
        await actor.step_raised(step, exc, began)
        return
    move = step_rules.ended(actor, step, began, time.time(), changes)
    await actor.commit(step, move, subscription=sub, relations=relations)


async def timer(actor: Actor) -> None:
    """A retry timer of a blocked fork: branches due run again, expired waits fail."""
    if actor.status not in (P.WAITING, P.AWAITING_CALLBACK):
        return  # failed: a person decides; running: the running fork takes its timers
    forks = await standing(actor)
    if forks is None:
        return
    rows, records = forks.tick(time.time())
    if not rows:
        due = forks.due()
        if due is not None:
            actor.host.later(actor.pid, due, Retry(automatic=True))
        return
    if any(b.status is BranchStatus.RUNNING for b in forks.leaves()):
        status, error, due = P.RUNNING, None, None
    else:
        status, error, due = forks.blocked()
    change = Change(error=error, next_retry_at=due)
    await actor.write(status, steps=records, branches=rows, change=change)
    forks.schedule_timer()  # for the branches still waiting


async def callback(actor: Actor, digest: str | None, payload: Any, who: str) -> None:
    """A callback for a branch's wait, while no branch runs: the branch goes on."""
    forks = await standing(actor)
    if forks is None:
        raise CallbackNotFound("no process waits for this callback token")
    branch = forks.awaiting(digest)
    row, record = forks.answer(branch, payload, time.time())
    action = actor.action(Action.CALLBACK, who, f"branch {branch.path}")
    change = Change(error=None, next_retry_at=None)
    await actor.write(P.RUNNING, steps=[record], actions=[action], branches=[row], change=change)
