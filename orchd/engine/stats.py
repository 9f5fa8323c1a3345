"""What the engine counts, and the one snapshot of it that health, metrics and the daemon read."""

from __future__ import annotations

from collections import Counter

import msgspec

from orchd.model import StepStatus
from orchd.store.base import StepWrite, StoreStats

#: Upper bounds (seconds) of the step-duration histogram's buckets; +Inf follows.
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


class StepCounter:
    """Steps run and how long they took, as a histogram."""

    __slots__ = ("total", "buckets", "seconds")

    def __init__(self) -> None:
        self.total = 0
        self.buckets = [0] * (len(STEP_BUCKETS) + 1)
        self.seconds = 0.0

    def add(self, seconds: float) -> None:
        self.total += 1
        self.seconds += seconds
        for i, bound in enumerate(STEP_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1
                return
        self.buckets[-1] += 1


class WorkflowSteps(msgspec.Struct, kw_only=True):
    """One workflow's steps: how long they ran, and how many failed (or went waiting)."""

    buckets: list[int]
    seconds_sum: float
    failures: int


#: Step outcomes counted as failures by workflow in ``/metrics`` (a waiting step failed once).
_FAILURES = frozenset((StepStatus.FAILED, StepStatus.WAITING))


class StepMetrics:
    """Every step's duration, in all and by workflow, and each workflow's failed steps."""

    def __init__(self) -> None:
        self.all = StepCounter()
        self._by_workflow: dict[str, StepCounter] = {}
        self._failures: Counter[str] = Counter()

    def add(self, workflow: str, steps: list[StepWrite], seconds: float | None) -> None:
        """A commit of ``workflow``'s ``steps``; ``seconds``: how long the step ran, if one did."""
        if seconds is not None:
            self.all.add(seconds)
            counter = self._by_workflow.get(workflow)
            if counter is None:
                counter = self._by_workflow[workflow] = StepCounter()
            counter.add(seconds)
        for record in steps:
            if record.status in _FAILURES:
                self._failures[workflow] += 1

    def by_workflow(self) -> dict[str, WorkflowSteps]:
        return {
            name: WorkflowSteps(
                buckets=list(c.buckets), seconds_sum=c.seconds, failures=self._failures[name]
            )
            for name in self._by_workflow.keys() | self._failures.keys()
            for c in [self._by_workflow.get(name) or StepCounter()]
        }


class EngineStats(msgspec.Struct, kw_only=True):
    """A snapshot of the engine's counters (``Engine.stats()``)."""

    accepting: bool
    uptime_seconds: float
    actors: int
    mailbox_depth: int
    steps_total: int
    #: One count per bound of STEP_BUCKETS plus the overflow bucket, not cumulated.
    step_buckets: list[int]
    step_seconds_sum: float
    #: The same by workflow, with each workflow's failed steps.
    by_workflow: dict[str, WorkflowSteps]
    #: When the engine started (epoch seconds).
    started_at: float
    #: Sync step calls abandoned after their timeout: ever, and still running in a thread.
    step_threads_abandoned: int
    step_threads_abandoned_running: int
    #: Sync calls running on a step thread now; calls that had to wait for a free one.
    step_threads_busy: int = 0
    step_threads_queued: int = 0
    store: StoreStats
    #: What retention deleted since the engine started.
    pruned_processes: int = 0
    pruned_steps: int = 0
    pruned_actions: int = 0
    #: In a cluster: this node's name and its lease and takeover counters (else None).
    node_id: str | None = None
    cluster: dict[str, float] | None = None
    #: Limits on shared resources (README "Limits on shared resources"): slots held and steps
    #: waiting on this node, by limit.
    resources: dict[str, tuple[int, int]] = {}
