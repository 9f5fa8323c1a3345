"""Crash points for the fault-injection tests; inert unless ``$ORCHD_FAULTS`` is set.

``ORCHD_FAULTS="after_step@3,in_commit@2"`` SIGKILLs the process the 3rd time it reaches
``after_step`` and the 2nd time it reaches ``in_commit``; ``name%0.01`` kills with probability
0.01 at each pass (seeded by ``$ORCHD_FAULTS_SEED``); ``in_commit@2!`` raises FaultInjected
there instead, as a bug would. The points, in the order a step meets them:

- ``before_step``: an actor is about to run a step
- ``after_step``: the step returned; its checkpoint is not yet submitted
- ``subscription_save``: the writer is saving a subscription, inside the transaction
- ``in_commit``: the writer has written a batch, before COMMIT
- ``after_commit``: COMMIT returned; the actors are not yet told
- ``parent_woken``: a child's last commit woke its parent; the parent is not yet told
- ``cascade_read``: the engine reads an aborted parent's children, to abort them
- ``shutdown``: the engine is closing

In-process tests set points with ``arm(spec)`` (the same syntax) and clear them with
``arm("")``; ``hits(name)`` says how often a point was reached since.
"""

from __future__ import annotations

import os
import random
import signal
import threading

_SPEC = os.environ.get("ORCHD_FAULTS", "")
#: Checked before every call, so a disabled point costs one global lookup.
ENABLED = bool(_SPEC)

_hits: dict[str, int] = {}
_at: dict[str, int] = {}
_odds: dict[str, float] = {}
#: Points that raise FaultInjected instead of killing (``name@n!``): a bug, not a crash.
_raise: set[str] = set()
_lock = threading.Lock()
_random = random.Random(int(os.environ.get("ORCHD_FAULTS_SEED", "0")))


def _parse(spec: str) -> None:
    for item in filter(None, (part.strip() for part in spec.split(","))):
        if "@" in item:
            name, n = item.split("@", 1)
            if n.endswith("!"):
                _raise.add(name)
            _at[name] = int(n.rstrip("!"))
        elif "%" in item:
            name, p = item.split("%", 1)
            _odds[name] = float(p)
        else:
            _at[item] = 1


_parse(_SPEC)


def arm(spec: str, seed: int = 0) -> None:
    """Replace the points by ``spec`` (``$ORCHD_FAULTS``'s syntax; "" for none) and count
    passes from zero: for tests that run an engine in their own process."""
    global ENABLED
    with _lock:
        _hits.clear()
        _at.clear()
        _odds.clear()
        _raise.clear()
        _random.seed(seed)
        _parse(spec)
        ENABLED = bool(spec)


def hits(name: str) -> int:
    """How many times ``name`` was reached (counted while any point is set)."""
    with _lock:
        return _hits.get(name, 0)


class FaultInjected(Exception):
    """Raised at a point whose spec ends in ``!``: an unexpected bug at that place."""


def point(name: str) -> None:
    """Die here (SIGKILL, no clean-up at all) when the spec says so, or raise for ``!``."""
    with _lock:
        hits = _hits[name] = _hits.get(name, 0) + 1
        die = _at.get(name) == hits or (name in _odds and _random.random() < _odds[name])
    if die and name in _raise:
        raise FaultInjected(f"fault injected at {name} (pass {hits})")
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
