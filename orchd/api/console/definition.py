"""What the process page reads from the workflow's definition beside the process itself.

- Whether a retry may ask the external system again (``retry --reissue``): the engine's own
  rule, ``orchd.dsl.callback_action_of``, applied where the process stands; the form offers
  the choice only then, so it is not refused with 409 for a step that is no callback's.
- Which element of its children step's list each child was started for (README "Child
  processes"): the list is the parent's ``state[inputs]``, the element the child's place in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from orchd.dsl import Step, StepKind, callback_action_of
from orchd.engine import Engine
from orchd.model import LinkedProcess, Process

#: An element is shown up to this many characters (the whole of it in the cell's title).
ELEMENT_CHARS = 80


def _steps(engine: Engine, process: Process) -> Sequence[Step]:
    wf = engine.workflows.get(process.workflow)
    return () if wf is None else wf.steps


def reissuable(engine: Engine, process: Process) -> bool:
    """Whether the step the process stands at is a callback's wait or validate step, which
    ``retry --reissue`` goes back from (a step's name may recur in a workflow: any place it
    has will do, as the engine decides by the place)."""
    steps = _steps(engine, process)
    return any(
        callback_action_of(steps, at) is not None
        for at, step in enumerate(steps)
        if step.name == process.current_step
    )


@dataclass(frozen=True)
class Element:
    """What a child handles: ``ports[2]``, and that element as JSON (shortened, and whole)."""

    where: str
    short: str = ""
    whole: str = ""


def child_elements(engine: Engine, process: Process) -> dict[str, Element]:
    """Each child's element, by the child's id. A parent's fan-outs are its children steps in
    the order they started children; a child whose fan-out names no such step of the
    parent's workflow (a definition changed since) gets its place in the list only."""
    fan_outs = [s for s in _steps(engine, process) if s.kind is StepKind.CHILDREN]
    return {
        child.id: _element(child, fan_outs, process.state)
        for child in process.children
        if child.element is not None
    }


def _element(child: LinkedProcess, fan_outs: list[Step], state: dict[str, Any]) -> Element:
    assert child.element is not None
    n = child.fan_out
    step = fan_outs[n] if n is not None and n < len(fan_outs) else None
    if step is None or not _starts(step, child.workflow, state):
        return Element(where=f"element {child.element}")
    where = f"{step.items_key}[{child.element}]"
    items = state.get(step.items_key)
    if not isinstance(items, list) or child.element >= len(items):
        return Element(where=where)
    whole = msgspec.json.encode(items[child.element]).decode()
    short = whole if len(whole) <= ELEMENT_CHARS else whole[: ELEMENT_CHARS - 1] + "…"
    return Element(where=where, short=short, whole=whole)


def _starts(step: Step, workflow: str, state: dict[str, Any]) -> bool:
    """Whether ``step`` starts children of ``workflow`` (a ``"{key}"`` name: the one State
    holds under ``key``)."""
    name = step.child_workflow
    if name.startswith("{") and name.endswith("}"):
        return state.get(name[1:-1]) == workflow
    return name == workflow
