"""Calling a step's function: on the event loop or in the step threads, within its timeout.

A step that names resources takes them here first (``orchd.engine.limits``), on the main line
and in branches alike. Only the engine's own deadline becomes a StepTimeout; a TimeoutError the
step raises itself is a failure like any other. Only the actor's own cancellation may
propagate: whatever step code raises, CancelledError included, is the step's failure (README
"Guarantees").
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from orchd.dsl import Step
from orchd.engine.host import Host
from orchd.engine.limits import Slot
from orchd.engine.outcome import StepTimeout


async def call_step(
    host: Host, pid: str, step: Step, kwargs: dict[str, Any], uses: tuple[Slot, ...] = ()
) -> Any:
    """Call the step; with ``uses`` (``limits.slots_of``), first take those slots, waiting
    for them (README "Limits on shared resources"): the wait counts toward no timeout, and an abort
    or a stop ends
    it with ``Halted`` before anything ran."""
    assert step.func is not None
    if uses:
        wait = host.limits.acquire(pid, step.name, uses)
        if wait is not None:
            await wait
    timeout = step.timeout if step.timeout is not None else host.settings.step_timeout
    if not timeout:
        if step.is_async:  # the common case, one coroutine frame less per waiting actor
            return await step.func(**kwargs)
        return await _invoke(host, pid, step, kwargs)
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await _invoke(host, pid, step, kwargs)
    except TimeoutError:
        if not deadline.expired():
            raise  # the step's own TimeoutError: a failure like any other
    raise StepTimeout(f"step {step.name!r} did not finish within {timeout:g} s")


async def _invoke(host: Host, pid: str, step: Step, kwargs: dict[str, Any]) -> Any:
    assert step.func is not None
    if step.is_async:
        return await step.func(**kwargs)
    return await host.in_thread(pid, step.name, functools.partial(step.func, **kwargs))


def cancelled_from_outside() -> bool:
    """Whether the running task itself is being cancelled (not just an exception in it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
