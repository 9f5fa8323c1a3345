"""The step at the process's position (README "Architecture"): what its actor does by the step's
kind. A step whose function runs, its condition, its retries and its records go through the step
interpreter (``orchd.engine.interpreter``); a children step and a fork have their own sides
(``orchd.engine.children``, ``orchd.engine.forkstep``). Each outcome is a transition the actor
applies and commits (``Actor.commit``): nothing here assigns the actor's fields.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from orchd.dsl import Step, StepKind
from orchd.engine import actions, forkstep, subscribing
from orchd.engine import children as childstep
from orchd.engine import interpreter as step_rules
from orchd.engine.change import Change
from orchd.engine.messages import Callback, Expire, fail, respond
from orchd.engine.outcome import StepCrash, changes_of
from orchd.model import ProcessStatus, StepStatus
from orchd.state import encode

if TYPE_CHECKING:
    from orchd.engine.actor import Actor

P = ProcessStatus
SKIPPED = StepStatus.SKIPPED


async def advance(actor: Actor) -> None:
    """Run the step at the program counter and commit its outcome."""
    started = await step_rules.begin(actor.host)  # in a cluster, while the lease holds
    if actor.broken is not None:
        await actor.write(P.FAILED, steps=[], change=Change(error=actor.broken))
        return
    step = actor.step_now()
    try:
        run = not step.predicates or step_rules.should_run(step, actor.state)
    except StepCrash as exc:
        await actor.step_raised(step, exc, started)
        return
    if not run:
        skipped = step_rules.ended(actor, step, started, time.time(), status=SKIPPED)
        await actor.commit(step, skipped, P.RUNNING)
        return
    match step.kind:
        case StepKind.INIT:
            await actor.commit(step, step_rules.ended(actor, step, started, started))
        case StepKind.DONE:
            await _done(actor, step, started)
        case StepKind.ABORT:
            await actions.abort(actor, "workflow", requested=False)
        case StepKind.INPUT:
            await _suspend(actor, step, started)
        case StepKind.CALLBACK_WAIT:
            await _wait_for_callback(actor, step, started)
        case StepKind.CHILDREN:
            await childstep.run(actor, step, started)
        case StepKind.PARALLEL | StepKind.FOREACH:
            await forkstep.run(actor, step, started)
        case _:
            await _run_function(actor, step, started)


async def _run_function(actor: Actor, step: Step, started: float) -> None:
    view = actor.state
    if step.kind is StepKind.CALLBACK_ACTION:
        view = {**actor.state, "callback_token": actor.hand_out()}
    ran = await step_rules.call(
        actor.host,
        actor.pid,
        actor.identity.trace_id,
        None,
        step,
        actor.attempts + 1,
        view,
        actor.state_now,
        actor.subscription_change,
    )
    if ran is None:
        return  # halted before it ran
    if isinstance(ran, step_rules.Failed):
        await actor.step_raised(step, ran.exc, started)
        return
    move = step_rules.ended(actor, step, started, time.time(), ran.changes)
    await actor.commit(step, move, subscription=ran.sub, relations=ran.relations)


async def _suspend(actor: Actor, step: Step, started: float) -> None:
    try:
        # The first page of its form (the only one of a one-page form), choices read now.
        page, _ = await actor.form_page(step, [])
    except Exception as exc:
        await actor.step_raised(step, exc, started)
        return
    move = step_rules.stays(actor, step, StepStatus.SUSPENDED, started)
    await actor.commit(step, move, P.SUSPENDED, change=Change(form=encode(page.form)))


async def _wait_for_callback(actor: Actor, step: Step, started: float) -> None:
    early = actor.host.waits.take(actor.callback_token)
    if early is not None:
        assert isinstance(early.message, Callback)
        try:
            await actions.take_callback(actor, early.message.payload, early.message.by)
        except BaseException as exc:
            fail(early, exc)  # its sender must not wait for ever
            raise
        respond(early)
        return
    await actor.commit(step, step_rules.waiting(actor, step, started), P.AWAITING_CALLBACK)
    if actor.next_retry_at is not None and actor.callback_token:
        actor.host.later(actor.pid, actor.next_retry_at, Expire(digest=actor.callback_token))


async def _done(actor: Actor, step: Step, started: float) -> None:
    change = subscribing.at_done(actor.state, actor.subscription_id, actor.target)
    changes = changes_of(actor.state, step.name, {"subscription": change} if change else None)
    move = step_rules.ended(actor, step, started, time.time(), changes)
    await actor.commit(step, move, P.COMPLETED, subscription=change)
