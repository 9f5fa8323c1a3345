"""Process and step statuses: the one place their names are written.

Standard library only (``enum``), because the CLI and the maintenance tools import it on
every call. The status machine (which status may follow which) lives in ``orchd.model``.
"""

from __future__ import annotations

import enum

__all__ = ["ACTIVE", "FINAL", "IN_PROGRESS", "BranchStatus", "ProcessStatus", "StepStatus"]


class ProcessStatus(enum.StrEnum):
    CREATED = "created"  # committed, no step has finished yet
    RUNNING = "running"  # an actor is running its steps
    SUSPENDED = "suspended"  # waits for a user's form answer (resume)
    WAITING = "waiting"  # a retrystep raised; retried automatically after a backoff
    AWAITING_CALLBACK = "awaiting_callback"  # waits for an external system's callback
    AWAITING_CHILDREN = "awaiting_children"  # waits until its child processes have finished
    FAILED = "failed"  # a step raised; waits for a manual retry or abort
    ABORTED = "aborted"  # ended by abort; final
    COMPLETED = "completed"  # ran `done`; final


class StepStatus(enum.StrEnum):
    SUCCESS = "success"  # the step returned; its result is merged into State
    SKIPPED = "skipped"  # a conditional's predicate was false
    SUSPENDED = "suspended"  # an inputstep asked for a form
    WAITING = "waiting"  # a retrystep raised
    AWAITING_CALLBACK = "awaiting_callback"  # a callback step's action ran; waiting for the answer
    FAILED = "failed"  # the step raised
    ABORTED = "aborted"  # the process was aborted here


class BranchStatus(enum.StrEnum):
    """Where one branch of a forked process stands (README "Parallel branches")."""

    RUNNING = "running"  # has a step to run now
    FORKED = "forked"  # its nested fork's branches run
    WAITING = "waiting"  # a retrystep raised; retried automatically after a backoff
    AWAITING_CALLBACK = "awaiting_callback"  # waits for its own callback token
    FAILED = "failed"  # a step raised; waits for a retry or a skip of the process
    DONE = "done"  # ran its last step; waits for the join


#: Statuses from which a process never moves again (it holds no subscription lock).
FINAL = frozenset({ProcessStatus.COMPLETED, ProcessStatus.ABORTED})

#: Statuses in which a process holds an actor (it has steps to run right now). StrEnum members
#: hash and compare as their values, so ``"running" in ACTIVE`` holds.
ACTIVE = frozenset({ProcessStatus.CREATED, ProcessStatus.RUNNING})

#: Statuses a process leaves by itself, with nobody acting on it: ``orchd wait`` and ``orchd
#: start --wait`` wait through them, and stop at any other (``completed``, ``failed``,
#: ``aborted``, or ``suspended``, where a person must answer a form).
IN_PROGRESS = ACTIVE | {
    ProcessStatus.WAITING,
    ProcessStatus.AWAITING_CALLBACK,
    ProcessStatus.AWAITING_CHILDREN,
}
