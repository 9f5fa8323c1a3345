"""What a step changed in State (encoded once, its record's delta), the retry backoff, how a
failure is worded, and the errors engine-side evaluation of a step raises."""

from __future__ import annotations

import math
import os
import random
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any, NamedTuple

from orchd.dsl import Step
from orchd.settings import EngineSettings
from orchd.state import StepInputError, StepOutputError, decode, encode, non_finite
from orchd.subscriptions import SubscriptionError

_MISSING: Any = object()


class Changes(NamedTuple):
    """What a step changed in State: the changed keys, and the same encoded once."""

    values: dict[str, Any]
    encoded: bytes | None


NO_CHANGES = Changes({}, None)


def changes_of(state: Mapping[str, Any], step_name: str, delta: dict[str, Any] | None) -> Changes:
    """The keys ``delta`` changes in ``state``, encoded once: the step record keeps these
    bytes. Raises StepOutputError for a value JSON cannot hold faithfully."""
    if not delta:
        return NO_CHANGES
    values = {k: v for k, v in delta.items() if state.get(k, _MISSING) != v}
    if not values:
        return NO_CHANGES
    encoded = encode(values)
    # JSON has no NaN or Infinity: the encoder would store them as null, silently. Only an
    # encoding with a null in it can hide one; then the encoding read back differs from the
    # values only if it does (compared in C, where walking the values in Python cost a typed
    # subscription's step about a sixth of its time), and only then is the value walked.
    if (
        b"null" in encoded
        and decode(encoded) != values
        and (where := non_finite(values)) is not None
    ):
        raise StepOutputError(
            f"step {step_name!r} returned {where}, which JSON (and State) cannot hold"
        )
    return Changes(values, encoded)


def retry_delay(settings: EngineSettings, step: Step, attempt: int) -> float:
    """Exponential backoff with jitter; never sooner than the base delay."""
    base = step.backoff if step.backoff is not None else settings.retry_delay
    delay = min(settings.retry_max_delay, base * math.pow(2, attempt - 1))
    return delay * (1 + 0.25 * random.random())


class StepCrash(Exception):
    """Raised when engine-side evaluation for a step (its condition, its deadline) fails."""


class StepTimeout(StepCrash):
    """Raised when a step runs past its timeout (the step's own or the engine's default)."""


def failure_of(exc: BaseException) -> tuple[str, str]:
    """A failed step's error and traceback, as its record keeps them: an error orchd words
    itself (bad input or output, a refused subscription, the engine's own) by its message,
    anything else by its type and message. The traceback starts at the step's own code."""
    if isinstance(exc, StepInputError | StepOutputError | SubscriptionError | StepCrash):
        message = str(exc)
    else:
        message = f"{type(exc).__name__}: {exc}"
    shown = traceback.TracebackException(type(exc), exc, _from_user_code(exc.__traceback__))
    # A message may hold U+0000 (a byte string decoded, a device's answer), which no backend
    # may store (PostgreSQL's text refuses it, and the failure would never be recorded): it is
    # shown escaped, as repr() shows it.
    return message.replace("\x00", "\\x00"), "".join(shown.format()).replace("\x00", "\\x00")


#: orchd's own code; its bundled examples are workflow code like anyone's.
_ORCHD = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_EXAMPLES = os.path.join(_ORCHD, "examples") + os.sep


def _from_user_code(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` without the engine's frames that called the step (the actor, the thread pool),
    which come first and say nothing about the failure; all of it when no frame is another's
    (the engine's own error)."""
    first = tb
    while first is not None:
        path = first.tb_frame.f_code.co_filename
        if not path.startswith(_ORCHD) or path.startswith(_EXAMPLES):
            return first
        first = first.tb_next
    return tb
