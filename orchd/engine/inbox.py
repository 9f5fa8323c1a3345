"""What a process's actor does with a message taken from its mailbox (README "Architecture"):
resume, retry, skip, abort, a callback or a timer, each checked against where the process stands
and handed to the actor's side of it (``orchd.engine.actions``; a fork's branches:
``orchd.engine.forkstep``), and its sender answered. A running process answers some messages at
once, before its step ends: that is ``Actor.post``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from orchd.dsl import StepKind
from orchd.engine import actions, forkstep
from orchd.engine.messages import (
    Abort,
    Callback,
    Envelope,
    Expire,
    Resume,
    Retry,
    Run,
    Skip,
    Stop,
    respond,
    stopped,
)
from orchd.errors import CallbackNotFound, OrchdError, StoreError
from orchd.model import ACTIVE, Action, ProcessStatus, check_action

if TYPE_CHECKING:
    from orchd.engine.actor import Actor

P = ProcessStatus


async def handle(actor: Actor, envelope: Envelope) -> None:
    """Take ``envelope``, taken from the actor's mailbox, and answer its sender."""
    message = envelope.message
    try:
        match message:
            case Run() | Stop():
                respond(envelope)
            case Resume(answer=answer, by=by):
                await actions.resume(actor, answer, by)
                respond(envelope, actor.status)
            case Retry(automatic=automatic, by=by, reissue=reissue):
                await actions.retry(actor, automatic, by, reissue)
                respond(envelope, actor.status)
            case Skip(reason=reason, by=by):
                await actions.skip(actor, reason, by)
                respond(envelope, actor.status)
            case Abort(by=by):
                check_action(Action.ABORT, actor.status, actor.pid)
                await actions.abort(actor, by, requested=True)
                respond(envelope, actor.status)
            case Callback(digest=digest, payload=payload, by=by) if actor.at_fork():
                await forkstep.callback(actor, digest, payload, by)
                respond(envelope)
            case Callback(digest=digest, payload=payload, by=by):
                if digest is not None and _callback_pending(actor, digest):
                    waits = actor.host.waits
                    waits.begin(digest, actor.pid)  # (it stands already: begun at load)
                    waits.hold(digest, envelope)  # the wait step answers it
                    return
                if digest is not None and digest != actor.callback_token:
                    # An old or used token, or a made-up one: it answers no wait.
                    raise CallbackNotFound("no process waits for this callback token")
                check_action(Action.CALLBACK, actor.status, actor.pid)
                await actions.take_callback(actor, payload, by)
                respond(envelope)
            case Expire(digest=digest):
                if actor.status is P.AWAITING_CALLBACK and digest == actor.callback_token:
                    await actions.fail_wait(actor)
                respond(envelope)
    except asyncio.CancelledError:
        respond(envelope, error=stopped())  # the engine stops: see run
        raise
    except StoreError:
        refusal = StoreError(f"process {actor.pid}: the database refused the write")
        respond(envelope, error=refusal)
        raise
    except OrchdError as exc:
        respond(envelope, error=exc)


def _callback_pending(actor: Actor, digest: str) -> bool:
    """A callback that arrived before the action's checkpoint: keep it for the wait step."""
    return (
        actor.status in ACTIVE
        and digest == actor.callback_token
        and actor.workflow is not None
        and actor.pc < len(actor.workflow.steps)
        and actor.workflow.steps[actor.pc].kind is StepKind.CALLBACK_WAIT
    )
