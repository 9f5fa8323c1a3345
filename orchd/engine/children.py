"""The children step (contract §9): checking each element's start, and the parent's results.

The fan-out itself is committed by the store (``StartChildren``: the parent's checkpoint and
every child in one transaction) and the parent is woken by its last child's commit; what is
left here is what the parent's actor decides.
"""

from __future__ import annotations

from typing import Any

from orchd.dsl import Step
from orchd.engine.host import Host
from orchd.engine.outcome import StepCrash
from orchd.errors import OrchdError
from orchd.model import RESERVED_KEYS
from orchd.store.base import NewProcess, ProcessRow


def child_starts(
    host: Host, parent_id: str, step: Step, elements: list[tuple[int, Any]], group: int
) -> list[NewProcess]:
    """Check every element's start (``(index, input)``); the first ``max_concurrency`` go at
    once, the others are held. Raises StepCrash naming each element refused."""
    limit = step.max_concurrency or len(elements)
    starts, problems = [], []
    for n, (index, given) in enumerate(elements):
        try:
            starts.append(
                host.prepare_start(
                    step.child_workflow,
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
