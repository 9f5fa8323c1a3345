"""``run_step``: run one step the way the engine runs it, without an engine or a database.

Calling a ``Step`` object directly calls the bare function: no arguments from State, no
conversion to the annotations, no check that the result fits in State. ``run_step`` goes
through the same functions the engine uses (``orchd.state.inject`` and
``orchd.state.to_json_values``), so what passes here passes in a process, and what fails here
fails there with the same message.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from typing import Any

from orchd.dsl import Step, StepKind
from orchd.engine.limits import slots_of
from orchd.state import StepOutputError, inject, to_json_values

#: Kinds whose function returns what is merged into State.
_RUNNABLE = frozenset({StepKind.PLAIN, StepKind.RETRY, StepKind.CALLBACK_ACTION})


async def run_step(
    step: Step,
    state: Mapping[str, Any],
    *,
    resources: Mapping[Any, Any] | None = None,
) -> dict[str, Any]:
    """Run ``step`` on ``state``; return the JSON values it would merge into State.

    Arguments come from ``state`` by name, converted to their annotations; parameters
    annotated with a type in ``resources`` receive that instance (as with
    ``Engine(resources=...)``). A sync step runs in a worker thread, an async one is awaited.
    ``state`` is first turned into JSON values, as a checkpoint would hold it.

    Raises ``orchd.state.StepInputError`` for a missing key or a value that does not convert,
    ``orchd.state.StepOutputError`` for a result State cannot hold (the messages the engine
    records as the step's error), and whatever the step itself raises. The step's timeout is
    not applied, nor are limits on the resources its ``uses=`` names (README "Limits on shared
    resources"), though
    their keys are filled in from ``state`` as the engine does (a missing key raises the
    engine's StepInputError): run the workflow in an engine to test them.
    """
    if not isinstance(step, Step):
        raise TypeError(f"run_step() takes a step (made with @step), not {type(step).__name__}")
    if step.func is None or step.kind not in _RUNNABLE:
        raise TypeError(
            f"run_step() runs steps that return State; {step.name!r} is a {step.kind.value} "
            "step: run its workflow with workflow_engine() instead"
        )
    try:
        view = to_json_values(step.name, dict(state))
    except StepOutputError as exc:
        raise TypeError(f"run_step(): the state given cannot be State: {exc}") from None
    kwargs = inject(step.name, step.params, view, resources)
    slots_of(step, view)
    if step.is_async:
        result = await step.func(**kwargs)
    else:
        result = await asyncio.to_thread(functools.partial(step.func, **kwargs))
    return to_json_values(step.name, result)
