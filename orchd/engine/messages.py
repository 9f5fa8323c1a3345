"""The messages an actor takes, and the envelope that carries a reply back.

Every action on a process (a resume, a retry, a callback, ...) is one of these, posted to the
process's actor; the actor handles them one at a time, so nothing else changes a process.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from orchd.errors import OrchdError, ShuttingDown


class Run(msgspec.Struct, frozen=True, tag=True):
    """Start running (after a start or a restart)."""


class Resume(msgspec.Struct, frozen=True, tag=True):
    answer: Any
    #: Who acted. Each message keeps ``actor`` as its name in the mail between nodes, so that
    #: nodes of the version before this name read it during an upgrade.
    by: str = msgspec.field(name="actor")


class Retry(msgspec.Struct, frozen=True, tag=True):
    #: Sent by the engine's own retry timer (not recorded as an action), not by a person.
    automatic: bool = False
    by: str = msgspec.field(default="engine", name="actor")
    #: After a callback's validate step failed: ask the external system again (a new token).
    reissue: bool = False


class Skip(msgspec.Struct, frozen=True, tag=True):
    """Record the failing step skipped and go on with the next (operator remediation)."""

    reason: str
    by: str = msgspec.field(name="actor")


class Abort(msgspec.Struct, frozen=True, tag=True):
    by: str = msgspec.field(name="actor")


class Callback(msgspec.Struct, frozen=True, tag=True):
    """An answer to the process's callback wait: from the external system, which knows the
    token (``digest`` is its ``token_digest``), or from an operator by process id (None)."""

    digest: str | None
    payload: Any
    by: str = msgspec.field(name="actor")


class Expire(msgspec.Struct, frozen=True, tag=True):
    """A callback's deadline passed (``digest``: the wait's token digest)."""

    digest: str


class Stop(msgspec.Struct, frozen=True, tag=True):
    """Finish the current step, commit, and retire (shutdown)."""


Message = Run | Resume | Retry | Skip | Abort | Callback | Expire | Stop


class Envelope:
    __slots__ = ("message", "reply")

    def __init__(self, message: Message, reply: asyncio.Future[Any] | None) -> None:
        self.message = message
        self.reply = reply


def respond(envelope: Envelope, value: Any = None, error: BaseException | None = None) -> None:
    """Send the action's outcome to whoever waits for it (once; later answers are dropped)."""
    fut = envelope.reply
    if fut is None or fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


def stopped() -> ShuttingDown:
    """What a sender is told when the engine stopped before its message was done."""
    return ShuttingDown("the engine stopped before this was done; send it again")


def fail(envelope: Envelope, exc: BaseException) -> None:
    """Tell the sender that handling its message ended with ``exc`` (which the caller
    raises on): a shutdown, a refusal, or a bug it only learns was internal."""
    if isinstance(exc, asyncio.CancelledError):
        respond(envelope, error=stopped())
    elif isinstance(exc, OrchdError):
        respond(envelope, error=exc)
    else:
        respond(envelope, error=OrchdError("internal error"))
