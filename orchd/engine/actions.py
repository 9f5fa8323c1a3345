"""What a process's actor does when someone acts on it (README "The HTTP API"'s actions): resume a
suspended step with a form's answer, retry a failed or waiting step, skip it, abort the process,
answer a callback or let its wait expire.

Each is the actor's own transition: it runs inside the actor (the only writer of its row), is
checked against the table of allowed actions in ``orchd.model``, and commits as one checkpoint
that records who acted (``by``). Branches of a fork take the fork's side in
``orchd.engine.forkstep``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from orchd.dsl import StepKind, callback_action_of
from orchd.engine import forkstep, formpages
from orchd.engine import interpreter as step_rules
from orchd.engine.change import Change
from orchd.engine.waits import End
from orchd.errors import FormValidationError, InvalidTransition
from orchd.model import Action, ProcessStatus, StepStatus, Target, check_action
from orchd.store.base import StepWrite

if TYPE_CHECKING:
    from orchd.engine.actor import Actor

P = ProcessStatus


async def resume(actor: Actor, answer: Any, by: str) -> None:
    check_action(Action.RESUME, actor.status, actor.pid)
    await actor.fail_if_broken()
    step = actor.step_now()
    # The answer of a one-page form (an object), or the list of every page's answer.
    with formpages.located(answer):
        page, values = await actor.form_page(step, formpages.answers_of(answer))
    if values is None:
        raise formpages.incomplete(page)
    move = step_rules.answered(actor, step, actor.state, values, time.time())
    await actor.commit(step, move, action=actor.action(Action.RESUME, by))


async def retry(actor: Actor, automatic: bool, by: str, reissue: bool) -> None:
    if automatic and actor.at_fork():
        await forkstep.timer(actor)
        return
    if automatic:
        if actor.status is not P.WAITING or (actor.next_retry_at or 0) > time.time() + 0.01:
            return  # a stale timer: the process moved on or was retried by hand
    else:
        check_action(Action.RETRY, actor.status, actor.pid)
    await actor.fail_if_broken()
    running = actor.host.still_running(actor.pid)
    if running is not None:
        # One step never runs twice at once (README "Guarantees"): not while a timed-out sync
        # call of it still runs in its thread.
        if automatic:
            actor.retry_at(time.time() + 1.0)
            return
        raise InvalidTransition(
            f"cannot retry process {actor.pid}: step {running!r} timed out but its call "
            "still runs in its thread; retry once it has returned"
        )
    forks = await forkstep.standing(actor)
    if reissue and forks is not None:
        raise InvalidTransition(
            f"cannot reissue process {actor.pid}: it stands at a fork; retry re-runs its "
            "failed branches"
        )
    back_to = _callback_action(actor) if reissue else None
    move = step_rules.retried(actor, actor.status is P.FAILED, back_to)
    detail = "reissue" if reissue else None
    actions = [] if automatic else [actor.action(Action.RETRY, by, detail)]
    rows = forks.rerun() if forks is not None else []
    # A retried children step starts new children for its aborted elements only.
    change = Change(replace_aborted=actor.children_group is not None)
    await actor.write(P.RUNNING, steps=[], actions=actions, branches=rows, move=move, change=change)


async def skip(actor: Actor, reason: str, by: str) -> None:
    """Record the failing step (a whole callback_step, when its action or wait failed) as
    skipped, keep State as it is, and go on with the next step."""
    check_action(Action.SKIP, actor.status, actor.pid)
    if not reason.strip():
        raise FormValidationError(
            "skip needs a reason", [{"loc": ["reason"], "msg": "a reason is required"}]
        )
    await actor.fail_if_broken()
    forks = await forkstep.standing(actor)
    action = actor.action(Action.SKIP, by, reason)
    if forks is not None:
        rows, records = forks.skip(reason, by, time.time())
        if records:  # else the fork itself failed (a conflict): skip it whole, below
            move = step_rules.retried(actor, True)
            await actor.write(P.RUNNING, steps=records, actions=[action], branches=rows, move=move)
            return
    step = actor.step_now()
    if step.func is None and step.kind is not StepKind.CALLBACK_WAIT and not step.forks:
        raise InvalidTransition(f"cannot skip the built-in step {step.name!r}")
    actor.end_wait(End.SKIPPED)
    move = step_rules.skipped(actor, by, reason, time.time())
    await actor.commit(step, move, action=action)


def _callback_action(actor: Actor) -> int:
    """``retry --reissue``: after a callback's validate step failed, where its action is, so
    the external system is asked again, with a new token."""
    assert actor.workflow is not None
    steps = actor.workflow.steps
    action = callback_action_of(steps, actor.pc)
    if action is None:
        raise InvalidTransition(
            f"cannot reissue process {actor.pid}: its failed step {steps[actor.pc].name!r} "
            "is not part of a callback_step"
        )
    return action


async def abort(actor: Actor, by: str, *, requested: bool) -> None:
    """End the process as aborted; ``requested``: by someone (recorded as an action), not by
    the workflow's own abort step."""
    now = time.time()
    record = StepWrite(
        pk=actor.pk,
        seq=actor.next_seq(),
        name="abort",
        status=StepStatus.ABORTED,
        started_at=now,
        finished_at=now,
        error=f"aborted by {by}",
    )
    release = actor.subscription_id if actor.target is not Target.SYSTEM else None
    actor.end_wait(End.ABORTED)
    if actor.forks is not None:
        actor.forks.forget_tokens(End.ABORTED)
    actions = [actor.action(Action.ABORT, by)] if requested else []
    # Branches of a fork it stood at go with it (none, mostly: the delete finds nothing).
    change = Change(current_step=None, form=None, next_retry_at=None, forks=None)
    await actor.write(
        P.ABORTED, steps=[record], release=release, actions=actions, drops=[""], change=change
    )


async def take_callback(actor: Actor, payload: Any, by: str) -> None:
    step = actor.step_now()
    actor.end_wait(End.ANSWERED)
    delta = {"callback_result": payload}
    move = step_rules.answered(actor, step, actor.state, delta, time.time())
    await actor.commit(step, move, action=actor.action(Action.CALLBACK, by))


async def fail_wait(actor: Actor) -> None:
    """A callback's wait ends without an answer (its deadline passed): the step fails, back
    at its action, so a retry issues the request again with a fresh token."""
    step = actor.step_now()
    actor.end_wait(End.EXPIRED)
    await actor.commit(step, step_rules.expired(actor, step, time.time()), P.FAILED)
