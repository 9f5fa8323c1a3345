"""What an actor needs from the engine that runs it: the contract between the two.

The engine's runtime implements it (``orchd.engine.runtime.Runtime``, which hands itself to
each actor it starts, so mypy checks it against this protocol); nothing else of the engine is
visible to an actor, and the actor nothing of ``Engine``, the users' façade, so the actor can
be read, and changed, on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from orchd.dsl import Workflow
from orchd.engine.messages import Message
from orchd.model import ProcessStatus, Subscription
from orchd.pages import Choice, Choices
from orchd.products import Product
from orchd.settings import EngineSettings
from orchd.store.base import (
    BranchRow,
    Checkpoint,
    NewProcess,
    ProcessRow,
    ReplaceChildren,
    StartChildren,
    StepWrite,
)
from orchd.tracing import Tracing

if TYPE_CHECKING:
    from orchd.engine.actor import Actor
    from orchd.engine.limits import Limiter
    from orchd.engine.waits import Waits


class Identity(msgspec.Struct, frozen=True):
    """Which process an actor runs, fixed once it loaded it: what the process's events, logs
    and spans name, handed to the runtime with each commit (never read back from the actor)."""

    pid: str
    workflow: str
    trace_id: str
    #: The parent that started it as a child (an aborted parent aborts it).
    parent_id: str | None


class Committed(msgspec.Struct, frozen=True):
    """What one checkpoint of a process committed, as the engine is told once it is durable
    (a value, not the actor: only the actor's own code changes its fields)."""

    process: Identity
    previous: ProcessStatus
    status: ProcessStatus
    #: The step it stands at now, and why it failed or waits (for the log).
    current_step: str | None
    error: str | None
    #: It has started children (an abort then aborts them too).
    has_children: bool
    steps: list[StepWrite]
    #: How long its last step ran, when a step was recorded.
    step_seconds: float | None


class Host(Protocol):
    """What an actor needs from the engine that runs it, and nothing more."""

    @property
    def settings(self) -> EngineSettings: ...

    @property
    def resources(self) -> Mapping[Any, Any]: ...

    @property
    def product_classes(self) -> Mapping[str, type[Product]]:
        """The product classes of the loaded workflows, by name."""
        ...

    @property
    def limits(self) -> Limiter:
        """The limits on shared resources that steps' ``uses=`` take (README "Limits on shared
        resources")."""
        ...

    @property
    def tracing(self) -> Tracing:
        """Spans (README "Traces"); ``tracing.on`` is False while tracing is off."""
        ...

    def workflow(self, name: str) -> Workflow | None: ...

    async def load(self, pid: str) -> ProcessRow | None:
        """The process as committed (None when it does not exist)."""
        ...

    async def checkpoint(
        self,
        checkpoint: Checkpoint,
        process: Identity,
        previous: ProcessStatus,
        concurrent: bool = False,
    ) -> None:
        """Commit durably; returns once committed. ``previous``: the process's status before
        it (the events say when it changes); ``concurrent``: other commits of the process may
        be under way (its branches')."""
        ...

    def committed(self, done: Committed) -> None:
        """Told after each commit what it committed: events, waiters, metrics, the cascade."""
        ...

    def retire(self, actor: Actor, process: Identity | None, status: ProcessStatus | None) -> None:
        """The actor's task ends: forget it (messages that came in late go to a new one).
        ``process`` and ``status``: what it ran and how that stands (None: it never loaded)."""
        ...

    def later(self, pid: str, at: float, message: Message) -> None:
        """Post ``message`` to the process at ``at`` (epoch seconds); one timer per kind."""
        ...

    def store_failed(self, pid: str) -> int:
        """A commit failed: run the process again from its last commit later, backing off;
        returns how many times in a row this happened."""
        ...

    async def in_thread(self, pid: str, step: str, call: Callable[[], Any]) -> Any:
        """Run a sync step's call in the step threads and return its result."""
        ...

    def still_running(self, pid: str) -> str | None:
        """The step whose timed-out call still runs in a thread for this process, if any."""
        ...

    def prepare_start(
        self,
        workflow: str,
        input: Any,
        reporter: str | None,
        *,
        parent_id: str | None = None,
        group: int | None = None,
        index: int | None = None,
        held: bool = False,
    ) -> NewProcess:
        """Check and build a child's start; raises what a refused start raises."""
        ...

    async def start_children(
        self, op: StartChildren | ReplaceChildren, parent: Identity, previous: ProcessStatus
    ) -> None:
        """Commit a parent's checkpoint with its new children, then start those not held."""
        ...

    async def children_of(self, pid: str, group: int) -> list[ProcessRow]: ...

    async def branches(self, pk: int) -> list[BranchRow]:
        """The started branches of the fork a process stands at, as committed."""
        ...

    async def fork_records(self, pk: int) -> list[tuple[str | None, str, float]]:
        """What tells when the fork a process stands at first started (Store.fork_records)."""
        ...

    @property
    def waits(self) -> Waits:
        """The callback waits of the processes it runs, by token digest."""
        ...

    def new_id(self) -> str: ...

    async def request_abort(self, pk: int, by: str) -> bool:
        """Commit an abort asked of a running process; False when it had finished already."""
        ...

    def background(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``work`` beside the actors; what it raises is logged, never raised."""
        ...

    async def choices(self, marker: Choices) -> list[Choice]:
        """What a form's ``choices(...)`` field offers now."""
        ...

    async def subscription_of(self, sid: str) -> Subscription | None:
        """A subscription as committed (None when it does not exist)."""
        ...
