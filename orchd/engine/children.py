"""The children step (README "Child processes"): checking each element's start, and the parent's
results.

The fan-out itself is committed by the store (``StartChildren``: the parent's checkpoint and
every child in one transaction) and the parent is woken by its last child's commit; what is
left here is what the parent's actor decides: ``run`` is its side of a children step.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from orchd.dsl import Step
from orchd.engine import interpreter as step_rules
from orchd.engine.change import Change
from orchd.engine.host import Host
from orchd.engine.outcome import StepCrash, changes_of
from orchd.errors import OrchdError
from orchd.model import FINAL, RESERVED_KEYS, ProcessStatus
from orchd.state import StepOutputError
from orchd.store.base import ChildRefused, NewProcess, ProcessRow, ReplaceChildren, StartChildren

if TYPE_CHECKING:
    from orchd.engine.actor import Actor

P = ProcessStatus


def child_workflow(step: Step, state: dict[str, Any]) -> str:
    """The workflow a children step starts: its name, or with ``"{key}"`` the name State holds
    under ``key`` (a task that picks the workflow from its input)."""
    name = step.child_workflow
    if not (name.startswith("{") and name.endswith("}")):
        return name
    found = state.get(name[1:-1])
    if not isinstance(found, str) or not found:
        raise StepCrash(f"children {step.name!r}: state[{name[1:-1]!r}] must name a workflow")
    return found


def child_starts(
    host: Host,
    parent_id: str,
    step: Step,
    elements: list[tuple[int, Any]],
    group: int,
    workflow: str,
) -> list[NewProcess]:
    """Check every element's start (``(index, input)``); the first ``max_concurrency`` go at
    once, the others are held. Raises StepCrash naming each element refused."""
    limit = step.max_concurrency or len(elements)
    starts, problems = [], []
    for n, (index, given) in enumerate(elements):
        try:
            starts.append(
                host.prepare_start(
                    workflow,
                    given,
                    f"parent {parent_id}",
                    parent_id=parent_id,
                    group=group,
                    index=index,
                    held=n >= limit,
                )
            )
        except OrchdError as exc:
            problems.append(f"element {index}: {exc.detail}")
    if problems:
        raise StepCrash(f"children {step.name!r}: " + "; ".join(problems))
    return starts


def aborted_problem(step: Step, aborted: list[ProcessRow]) -> StepCrash:
    named = ", ".join(f"element {r.child_index} ({r.id})" for r in aborted)
    return StepCrash(f"children {step.name!r}: aborted: {named}")


def results(rows: list[ProcessRow]) -> list[dict[str, Any]]:
    """What ``into`` collects, in element order: each child's final State without the keys
    the engine sets."""
    return [
        {
            "id": r.id,
            "status": r.status,
            "state": {k: v for k, v in r.state.items() if k not in RESERVED_KEYS},
        }
        for r in rows
    ]


# -- the parent's actor at a children step ----------------------------------------------


async def run(actor: Actor, step: Step, started: float) -> None:
    """Start the children (once), or take their results when they have all finished."""
    try:
        if actor.children_group is None:
            await _start(actor, step)
            return
        rows = await actor.host.children_of(actor.pid, actor.children_group)
        if any(r.status not in FINAL for r in rows):  # woken early: wait on
            pending = sum(r.status not in FINAL for r in rows)
            await actor.write(
                P.AWAITING_CHILDREN, steps=[], change=Change(children_pending=pending)
            )
            return
        aborted = [r for r in rows if r.status == P.ABORTED]
        if aborted and actor.replace_aborted:
            await _restart_aborted(actor, step, aborted)
            return
        if aborted:
            raise aborted_problem(step, aborted)
    except (StepCrash, StepOutputError, OrchdError) as exc:
        await actor.step_raised(step, exc, started)
        return
    collected = {step.into: results(rows)} if step.into else None
    changes = changes_of(actor.state, step.name, collected)
    move = step_rules.ended(actor, step, started, time.time(), changes)
    await actor.commit(step, move, change=Change(children_group=None, children_pending=None))


async def _start(actor: Actor, step: Step) -> None:
    inputs = actor.state.get(step.items_key)
    if not isinstance(inputs, list):
        raise StepCrash(
            f"children {step.name!r}: state[{step.items_key!r}] must be a list of inputs"
        )
    group = actor.seq + 1  # unique within the process: a later children step gets another
    workflow = child_workflow(step, actor.state)
    starts = child_starts(actor.host, actor.pid, step, list(enumerate(inputs)), group, workflow)
    await _fan_out(actor, group, starts, detach=None)


async def _restart_aborted(actor: Actor, step: Step, aborted: list[ProcessRow]) -> None:
    assert actor.children_group is not None
    inputs = actor.state.get(step.items_key)
    assert isinstance(inputs, list)
    indexes = [r.child_index for r in aborted if r.child_index is not None]
    elements = [(i, inputs[i]) for i in indexes]
    workflow = child_workflow(step, actor.state)
    starts = child_starts(actor.host, actor.pid, step, elements, actor.children_group, workflow)
    await _fan_out(actor, actor.children_group, starts, detach=[r.id for r in aborted])


async def _fan_out(
    actor: Actor, group: int, starts: list[NewProcess], detach: list[str] | None
) -> None:
    previous = Change(children_group=actor.children_group, children_pending=actor.children_pending)
    actor.take(Change(children_group=group, children_pending=len(starts), replace_aborted=False))
    status = P.AWAITING_CHILDREN if starts else P.RUNNING  # none: join at once
    checkpoint = actor.checkpoint_of(status, steps=[])
    op: StartChildren | ReplaceChildren
    if detach is None:
        op = StartChildren(parent=checkpoint, children=starts)
    else:
        op = ReplaceChildren(parent=checkpoint, detach=detach, children=starts)
    try:
        await actor.host.start_children(op, actor.identity, actor.status)
    except ChildRefused as exc:
        actor.take(previous)
        raise StepCrash(f"children: {exc}") from None
    actor.committed_as(status, [], None)
