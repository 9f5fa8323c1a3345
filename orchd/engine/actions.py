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

from orchd.dsl import Step, StepKind, callback_action_of
from orchd.engine import forkstep, formpages
from orchd.engine.messages import Retry
from orchd.engine.outcome import Outcome, changes_of
from orchd.engine.waits import End
from orchd.errors import FormValidationError, InvalidTransition
from orchd.model import Action, ProcessStatus, StepStatus, Target, check_action
from orchd.store.base import ActionWrite, StepWrite

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
    await answered(actor, step, values, actor.action(Action.RESUME, by))


async def answered(actor: Actor, step: Step, delta: dict[str, Any], action: ActionWrite) -> None:
    """An answer (a form's, a callback's) completes the step that waited for it."""
    now = time.time()
    changes = changes_of(actor.state, step.name, delta)
    outcome = Outcome(P.RUNNING, StepStatus.SUCCESS, now, now, changes, advance=True, action=action)
    await actor.commit(step, outcome)


async def retry(actor: Actor, automatic: bool, by: str, reissue: bool) -> None:
    if automatic and actor.at_fork():
        await forkstep.timer(actor)
        return
    if automatic:
        if actor.status is not P.WAITING or (actor.next_retry_at or 0) > time.time() + 0.01:
            return  # a stale timer: the process moved on or was retried by hand
    else:
        check_action(Action.RETRY, actor.status, actor.pid)
        if actor.status is P.FAILED:
            actor.attempts = 0
    await actor.fail_if_broken()
    running = actor.host.still_running(actor.pid)
    if running is not None:
        # One step never runs twice at once (README "Guarantees"): not while a timed-out sync
        # call of it still runs in its thread.
        if automatic:
            actor.next_retry_at = time.time() + 1.0
            actor.host.later(actor.pid, actor.next_retry_at, Retry(automatic=True))
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
    if reissue:
        _back_to_callback_action(actor)
    # A retried children step starts new children for its aborted elements only.
    actor.replace_aborted = actor.children_group is not None
    actor.error = None
    actor.next_retry_at = None
    detail = "reissue" if reissue else None
    actions = [] if automatic else [actor.action(Action.RETRY, by, detail)]
    rows = forks.rerun() if forks is not None else []
    await actor.write(P.RUNNING, steps=[], actions=actions, branches=rows)


async def skip(actor: Actor, reason: str, by: str) -> None:
    """Record the failing step (a whole callback_step, when its action or wait failed) as
    skipped, keep State as it is, and go on with the next step."""
    check_action(Action.SKIP, actor.status, actor.pid)
    if not reason.strip():
        raise FormValidationError(
            "skip needs a reason", [{"loc": ["reason"], "msg": "a reason is required"}]
        )
    await actor.fail_if_broken()
    assert actor.workflow is not None
    forks = await forkstep.standing(actor)
    if forks is not None:
        rows, records = forks.skip(reason, by, time.time())
        if records:  # else the fork itself failed (a conflict): skip it whole, below
            actor.error, actor.attempts, actor.next_retry_at = None, 0, None
            action = actor.action(Action.SKIP, by, reason)
            await actor.write(P.RUNNING, steps=records, actions=[action], branches=rows)
            return
    steps = actor.workflow.steps
    skipped = [steps[actor.pc]]
    if (
        skipped[0].func is None
        and skipped[0].kind is not StepKind.CALLBACK_WAIT
        and not skipped[0].forks
    ):
        raise InvalidTransition(f"cannot skip the built-in step {skipped[0].name!r}")
    if skipped[0].kind is StepKind.CALLBACK_ACTION:
        skipped = list(steps[actor.pc : actor.pc + 3])  # the action, the wait, the validate
    now = time.time()
    records = []
    for s in skipped:
        records.append(
            StepWrite(
                pk=actor.pk,
                seq=actor.next_seq(),
                name=s.name,
                key=s.key,
                status=StepStatus.SKIPPED,
                started_at=now,
                finished_at=now,
                actor=by,
                reason=reason,
            )  # fmt: skip
        )
    actor.pc += len(skipped)
    actor.current_step = steps[actor.pc].name
    actor.error = None
    actor.attempts = 0
    actor.next_retry_at = None
    actor.end_wait(End.SKIPPED)
    action = actor.action(Action.SKIP, by, reason)
    drops = [""] if skipped[0].forks else []
    actor.forks = None
    await actor.write(P.RUNNING, steps=records, actions=[action], drops=drops)


def _back_to_callback_action(actor: Actor) -> None:
    """``retry --reissue``: after a callback's validate step failed, go back to its action so
    the external system is asked again, with a new token."""
    assert actor.workflow is not None
    steps = actor.workflow.steps
    action = callback_action_of(steps, actor.pc)
    if action is None:
        raise InvalidTransition(
            f"cannot reissue process {actor.pid}: its failed step {steps[actor.pc].name!r} "
            "is not part of a callback_step"
        )
    actor.pc = action
    actor.current_step = steps[actor.pc].name


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
    actor.current_step = None
    release = actor.subscription_id if actor.target is not Target.SYSTEM else None
    actor.form = None
    actor.next_retry_at = None
    actor.end_wait(End.ABORTED)
    if actor.forks is not None:
        actor.forks.forget_tokens(End.ABORTED)
        actor.forks = None
    actions = [actor.action(Action.ABORT, by)] if requested else []
    # Branches of a fork it stood at go with it (none, mostly: the delete finds nothing).
    await actor.write(P.ABORTED, steps=[record], release=release, actions=actions, drops=[""])


async def take_callback(actor: Actor, payload: Any, by: str) -> None:
    step = actor.step_now()
    actor.next_retry_at = None
    actor.end_wait(End.ANSWERED)
    action = actor.action(Action.CALLBACK, by)
    await answered(actor, step, {"callback_result": payload}, action)


async def fail_wait(actor: Actor, reason: str) -> None:
    """A callback's wait ends without an answer (its deadline passed): the step fails."""
    step = actor.step_now()
    now = time.time()
    actor.error = f"{step.name}: {reason}"
    # Back to the action, so a retry issues the request again with a fresh token.
    actor.pc -= 1
    actor.next_retry_at = None
    actor.end_wait(End.EXPIRED)
    await actor.commit(step, Outcome(P.FAILED, StepStatus.FAILED, now, now, error=actor.error))
