"""The embeddable Engine: loads workflows, owns the store and supervises the process actors.

The daemon is this Engine behind the control API and the scheduler; workflow authors use it
directly in their tests. Every action on a process is a message to that process's actor,
which is created on demand and retires when the process waits for someone else.

``Engine`` is the users' API and nothing else (README "Architecture"): the actors run in
``orchd.engine.runtime``, which they see only through ``orchd.engine.host.Host``, and a
message reaches its process's actor, on this node or another, through ``orchd.engine.routing``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import msgspec

from orchd import _faults as faults
from orchd.dsl import Workflow
from orchd.engine import builtins, formpages, ids, messages, pruning, recovery, starts
from orchd.engine.catalog import Catalog
from orchd.engine.cluster import Node
from orchd.engine.events import LISTENER_BUFFER, EventHub
from orchd.engine.formpages import FormPage
from orchd.engine.limits import ClusterLimiter, Limiter, check_uses
from orchd.engine.loading import load_workflows
from orchd.engine.loopwatch import LoopWatch
from orchd.engine.runtime import Runtime
from orchd.engine.stats import EngineStats
from orchd.errors import (
    CallbackNotFound,
    ProcessNotFound,
    ShuttingDown,
    SubscriptionNotFound,
    WorkflowNotFound,
)
from orchd.model import (
    DEFAULT_PAGE,
    Event,
    Page,
    Process,
    ProcessStatus,
    ProductInfo,
    Reset,
    ResourceLimit,
    SubscriptionDetail,
    Target,
    WorkflowInfo,
)
from orchd.settings import EngineSettings, LimitSpec
from orchd.state import form_schema, refuse_nul
from orchd.store.base import Pruned, Retention, SetNote, Store, token_digest
from orchd.store.cluster import ClusterStore, NodeInfo
from orchd.store.opening import open_store
from orchd.store.slots import HasSlots
from orchd.store.views import Views, every_status, uuid_or_none
from orchd.tracing import Tracing, parse_traceparent

P = ProcessStatus


class Engine:
    """Runs workflows durably. Use as ``async with Engine(database=..., workflows=[...])``."""

    def __init__(
        self,
        database: str = "./orchd.db",
        workflows: Sequence[str | Workflow] = (),
        *,
        settings: EngineSettings | None = None,
        synchronous: str = "FULL",
        resources: Mapping[Any, Any] | None = None,
        tracing: Tracing | None = None,
        **overrides: Any,
    ) -> None:
        """``overrides`` are fields of :class:`EngineSettings` (``grace_period=2.0``, ...),
        applied over ``settings``; embedded engines and tests set one or two that way.
        ``tracing``: where spans go (``orchd.tracing.otel(...)``); by default none are made,
        and processes still have trace ids that their steps' requests carry."""
        self.workflows = load_workflows(workflows)
        # The built-in task, when a product has a VALIDATE workflow to run (and no loaded
        # workflow has its name).
        if any(w.target is Target.VALIDATE and w.product for w in self.workflows.values()):
            self.workflows.setdefault(builtins.VALIDATE_TASK, builtins.validate_subscriptions)
        #: Spans of processes and steps (README "Traces"); its owner shuts it down.
        self.tracing: Tracing = tracing if tracing is not None else Tracing()
        #: The products the workflows define, name and reach, with their workflows.
        self.catalog = Catalog(
            self.workflows.values(), [w for w in workflows if isinstance(w, str)]
        )
        try:
            chosen = msgspec.structs.replace(settings or EngineSettings(), **overrides)
        except TypeError as exc:
            raise TypeError(f"Engine(): {exc}") from None
        # README "Limits on shared resources": every limit a step names must be configured
        # (ConfigError, naming it).
        check_uses(self.workflows, chosen.limits)
        #: The database. The engine layer (the scheduler) uses it; layers above use the
        #: engine's methods.
        self.store: Store = open_store(
            str(database),
            synchronous=synchronous,
            keep_events=chosen.retention.events,
            node_id=chosen.node_id,
            lease_timeout=chosen.lease_timeout,
        )
        self._views = Views(self.store)
        self._events = EventHub()
        #: Limits on shared resources (README "Limits on shared resources"): in memory, or a
        #: cluster's table of slots.
        self.limits: Limiter = (
            ClusterLimiter(self._limit_specs, self.store.slots, _sweep_every(chosen))
            if isinstance(self.store, HasSlots)
            else Limiter(self._limit_specs)
        )
        #: What retention deleted since the engine started, for metrics.
        self.pruned = Pruned()
        #: Shared objects steps ask for by annotation (e.g. the daemon's HttpClient).
        self.resources: dict[Any, Any] = dict(resources or {})
        self.resources.setdefault(
            builtins.Subscriptions, builtins.Subscriptions(self.store, self.catalog)
        )
        # The actors and all they ask of the engine; this class is the users' façade over it.
        self._runtime = Runtime(
            workflows=self.workflows,
            settings=chosen,
            store=self.store,
            limits=self.limits,
            tracing=self.tracing,
            resources=self.resources,
            catalog=self.catalog,
        )
        #: This engine as a node of a cluster (a store several daemons share), or None.
        self.node: Node | None = None
        if isinstance(self.store, ClusterStore):
            self.node = Node(self._runtime, self.store, chosen.lease_timeout)
            self._runtime.router.remote = self.node  # messages go to the process's owner
        self.store.on_events(self._on_events)
        self._own_http: Any = None
        block = chosen.block_warning
        #: Warns when workflow code blocks the event loop longer than this (None: off).
        self.loopwatch = LoopWatch(block) if block else None
        self.started_at = time.time()

    @property
    def settings(self) -> EngineSettings:
        """Read on every use, so a reload (assigning a new object) applies at once."""
        return self._runtime.settings

    @settings.setter
    def settings(self, settings: EngineSettings) -> None:
        self._runtime.settings = settings

    @property
    def failure(self) -> str | None:
        """Why the engine's actors stopped while it was open (None: they run). The engine
        then refuses all work, and ``ping`` raises: health answers 503 and the systemd
        watchdog goes unfed, so the daemon is restarted, not left half alive."""
        return self._runtime.failure

    def _limit_specs(self) -> Mapping[str, LimitSpec]:
        return self.settings.limits  # read at each decision: a reload applies at once

    def _on_events(self, events: list[Event]) -> None:
        self._events.publish(events)
        if self.node is not None:
            self.node.observe(events)

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        from orchd.http import HttpClient

        if HttpClient not in self.resources:
            # Steps that talk to an OSS ask for an ``HttpClient``; embedded engines get one too.
            self._own_http = HttpClient()
            await self._own_http.open()
            self.resources[HttpClient] = self._own_http
        try:
            await self.store.open()
        except BaseException:
            # The store refused (unreachable, a newer schema, a migration's refusal) and has
            # closed what it opened; so does the engine, or its HTTP session would leak.
            await self._close_own_http()
            raise
        if self.node is not None:
            await self.node.start()
        await self.limits.open()
        _, self._events.last_id = await self.store.event_bounds()
        if self.loopwatch is not None:
            self.loopwatch.start()
        await self._runtime.start()
        await recovery.recover(self._runtime)
        if self.node is not None:
            self.node.run()

    def interrupt(self) -> None:
        """End the grace period of a close() now: running steps are interrupted (they run
        again at the next start)."""
        self._runtime.interrupt()

    async def close(self) -> None:
        """Stop intake, let running steps finish within the grace period, then stop."""
        runtime = self._runtime
        if not runtime.running:
            return
        runtime.accepting = False
        if self.node is not None:
            await self.node.stop()
        if faults.ENABLED:
            faults.point("shutdown")
        await runtime.stop()
        self._events.close()
        await self.limits.close()
        if self.node is not None:
            # In a cluster, hand this node's processes back (their actors have stopped).
            await self.node.leave()
        runtime.router.close()
        await self.store.close()
        runtime.threads.close()
        if self.loopwatch is not None:
            self.loopwatch.stop()
        await self._close_own_http()

    async def _close_own_http(self) -> None:
        if self._own_http is not None:
            await self._own_http.close()
            self.resources.pop(type(self._own_http), None)
            self._own_http = None

    # -- the public API -------------------------------------------------------------------

    def workflow_info(self) -> list[WorkflowInfo]:
        return [
            WorkflowInfo(
                name=wf.name,
                description=wf.description,
                target=wf.target,
                form=form_schema(wf.form) if wf.form else None,
                steps=[s.name for s in wf.steps],
                paged=wf.pages is not None,
                product=wf.product,
            )
            for wf in sorted(self.workflows.values(), key=lambda w: w.name)
        ]

    async def start(
        self,
        workflow: str,
        input: Any = None,
        *,
        reporter: str | None = None,
        idempotency_key: str | None = None,
        traceparent: str | None = None,
    ) -> str:
        """Create a process and set it running; returns its id once committed.

        With ``idempotency_key``, a process of this workflow that holds the key already is
        answered instead of a new one (one of another workflow: IdempotencyConflict).
        ``traceparent`` (a W3C header value): the process joins that trace; without one, or
        with an invalid one, it begins a trace of its own.
        """
        pid, _ = await self.start_once(
            workflow,
            input,
            reporter=reporter,
            idempotency_key=idempotency_key,
            traceparent=traceparent,
        )
        return pid

    async def start_once(
        self,
        workflow: str,
        input: Any = None,
        *,
        reporter: str | None = None,
        idempotency_key: str | None = None,
        traceparent: str | None = None,
    ) -> tuple[str, bool]:
        """``start``, also telling whether the process was created now (False: the key's)."""
        return await starts.begin(
            self._runtime,
            workflow,
            input,
            reporter=reporter,
            idempotency_key=idempotency_key,
            traceparent=traceparent,
        )

    async def get(self, pid: str) -> Process:
        """The process as committed, with its whole step log (``pid`` may be a prefix)."""
        process = await self._views.get(await self.resolve_id(pid))
        if self.node is not None:
            process.node = await self.node.store.owner_of(process.id)
        if process.status == P.RUNNING:
            process.blocked_on = (await self.limits.blocked([process.id])).get(process.id)
        return process

    async def list_processes(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        parent: str | None = None,
        q: str | None = None,
        top_level: bool = False,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page:
        """Processes, newest first, a page at a time (``parent``: that process's children;
        ``q``: an id's first characters, or text of the workflow's name or of the subscription;
        ``top_level``: no children)."""
        page = await self._views.list_processes(
            status=status,
            workflow=workflow,
            parent=parent,
            q=q,
            top_level=top_level,
            limit=limit,
            cursor=cursor,
        )
        running = [p for p in page.items if p.status == P.RUNNING]
        if running:
            blocked = await self.limits.blocked([p.id for p in running])
            for p in running:
                p.blocked_on = blocked.get(p.id)
        return page

    async def resource_limits(self) -> list[ResourceLimit]:
        """Each limit on shared resources, its keys in use (with several nodes, the whole
        cluster's) and their holders (README "Limits on shared resources")."""
        return await self.limits.report()

    async def get_subscription(self, sid: str) -> SubscriptionDetail:
        """The subscription with its processes, relations, note's history and the workflows of
        its product (each ``usable`` now or not, with the ``reason``)."""
        detail = await self._views.get_subscription(sid)
        detail.workflows = await self.catalog.usable(self.store, detail)
        return detail

    async def set_note(self, sid: str, note: str, *, by: str) -> None:
        """Set a subscription's note, recorded with who set it (``by``)."""
        canonical = uuid_or_none(sid)
        op = SetNote(subscription_id=canonical or sid, note=note, by=by, at=time.time())
        if canonical is None or not await self.store.write(op):
            raise SubscriptionNotFound(f"subscription {sid} does not exist")

    async def form_page(self, workflow: str, answers: Any) -> FormPage:
        """The next page of a workflow's form after ``answers`` (a list, page 0 first), or
        done; a 422 locates what is wrong by page and field. Nothing is kept between calls."""
        wf = self.workflows.get(workflow)
        if wf is None:
            raise WorkflowNotFound(f"no workflow named {workflow!r}")
        return await formpages.form_page(wf, answers, self._runtime.choices)

    async def process_form_page(self, pid: str, answers: Any) -> FormPage:
        """As ``form_page``, for the form a suspended process waits for."""
        row = await self.store.process(await self.resolve_id(pid))
        if row is None:
            raise ProcessNotFound(f"process {pid} does not exist")
        return await formpages.process_form_page(
            row, self.workflows.get(row.workflow), answers, self._runtime.choices, self.resources
        )

    def products(self) -> list[ProductInfo]:
        """Each product the loaded workflows define or name, with its JSON Schema."""
        return self.catalog.info()

    async def list_subscriptions(
        self,
        *,
        status: str | None = None,
        customer_id: str | None = None,
        product: str | None = None,
        q: str | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page:
        """Subscriptions, newest first; ``q``: text in the description or any text value."""
        return await self._views.list_subscriptions(
            status=status,
            customer_id=customer_id,
            product=product,
            q=q,
            limit=limit,
            cursor=cursor,
        )

    async def counts(self) -> dict[str, int]:
        """Processes by status."""
        return await self._views.counts()

    async def counts_by_workflow(self) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """Processes by status (every status named) and by workflow and status (only the
        pairs there are), from one read: what ``/metrics`` shows of each."""
        pairs = await self.store.counts_by_workflow()
        return every_status((status, n) for (_, status), n in pairs.items()), pairs

    async def wait(self, pid: str, timeout: float | None = None) -> Process:  # noqa: ASYNC109
        """Return the process once it is no longer created or running."""
        return await self._runtime.wait(pid, timeout, self.get)

    async def _ask(self, pid: str, message: messages.Message) -> Any:
        """Hand ``message`` to the process's actor, wherever it runs, and wait for its answer."""
        return await self._runtime.router.ask(pid, message)

    # ``reporter`` names who asks (recorded in the process's actions): the API passes
    # ``uid:N`` or ``token`` with the client's label; an embedding program what it likes.

    async def resume(self, pid: str, answer: Any, *, reporter: str | None = None) -> ProcessStatus:
        """Answer a suspended process's form; returns once committed and running again."""
        message = messages.Resume(answer=answer, by=_by(reporter))
        return P(await self._ask(await self.resolve_id(pid), message))

    async def retry(
        self, pid: str, *, reporter: str | None = None, reissue: bool = False
    ) -> ProcessStatus:
        """Re-run the failed (or waiting) step; returns once committed and running again.

        ``reissue``: the failed step is a callback's validate step (or its wait); go back to
        the callback's action instead, so the external system is asked again (a new token).
        """
        message = messages.Retry(by=_by(reporter), reissue=reissue)
        return P(await self._ask(await self.resolve_id(pid), message))

    async def skip(self, pid: str, reason: str, *, reporter: str | None = None) -> ProcessStatus:
        """Record a ``failed`` or ``waiting`` process's failing step as skipped (State as it
        was) and go on with the next step; returns once committed and running again."""
        message = messages.Skip(reason=reason, by=_by(reporter))
        return P(await self._ask(await self.resolve_id(pid), message))

    async def abort(self, pid: str, *, reporter: str | None = None) -> ProcessStatus:
        """Abort; returns once committed (for a running process: once requested)."""
        return P(await self._ask(await self.resolve_id(pid), messages.Abort(by=_by(reporter))))

    async def callback(
        self,
        token: str,
        payload: Any,
        *,
        reporter: str | None = None,
        traceparent: str | None = None,
    ) -> str:
        """Deliver an external system's answer; returns the process id once committed.

        A token answers one wait: an unknown, old or used one raises CallbackNotFound.
        ``traceparent``: the sender's trace context, linked from the process's trace when
        tracing is on.
        """
        arrived = time.time()
        digest = token_digest(token)
        pid = self._runtime.waits.pid_of(digest) or await self.store.process_waiting_for(digest)
        if pid is None:
            raise CallbackNotFound("no process waits for this callback token")
        refuse_nul("the callback's answer", payload)  # it goes into State
        by = _by(reporter, "callback token")
        await self._ask(pid, messages.Callback(digest=digest, payload=payload, by=by))
        sender = parse_traceparent(traceparent) if self.tracing.on else None
        if sender is not None:
            row = await self.store.process(pid)
            if row is not None:
                self.tracing.callback(pid, row.workflow, row.trace_id, arrived, sender)
        return pid

    async def answer_callback(
        self, pid: str, payload: Any, *, reporter: str | None = None
    ) -> ProcessStatus:
        """An operator answers an ``awaiting_callback`` process in the external system's place;
        returns once committed."""
        pid = await self.resolve_id(pid)
        refuse_nul("the callback's answer", payload)  # it goes into State
        message = messages.Callback(digest=None, payload=payload, by=_by(reporter))
        await self._ask(pid, message)
        return P.RUNNING

    async def resolve_id(self, pid: str) -> str:
        """The process id ``pid`` names: itself, or the one process whose id starts with it
        (at least ``ids.MIN_PREFIX`` characters); ProcessNotFound, or AmbiguousId for two or
        more."""
        return await ids.resolve_id(self.store, pid)

    async def ping(self) -> None:
        """Raise if the engine cannot do its work: its actors stopped (``failure``), or the
        database does not answer. Health and the systemd watchdog ask this."""
        if self.failure is not None:
            raise ShuttingDown(f"{self.failure}; restart orchd")
        await self.store.ping()

    async def live_nodes(self) -> list[NodeInfo] | None:
        """The nodes of this engine's cluster whose lease holds (None: not a cluster)."""
        return None if self.node is None else await self.node.live_nodes()

    @property
    def accepting(self) -> bool:
        return self._runtime.accepting

    @property
    def last_event_id(self) -> int:
        """The id of the newest event: a listener from now on passes it as ``after``."""
        return self._events.last_id

    async def listen(
        self, after: int | None = None, buffer: int = LISTENER_BUFFER
    ) -> AsyncGenerator[Event, None]:
        """Events from now on (and those after the id ``after`` that are still kept). A
        listener that leaves more than ``buffer`` events unread is closed (its loop ends)."""
        async for event in self.stream(after, buffer):
            if isinstance(event, Event):
                yield event

    def stream(
        self, after: int | None = None, buffer: int = LISTENER_BUFFER
    ) -> AsyncGenerator[Event | Reset, None]:
        """``listen``, with a :class:`Reset` first when events after ``after`` are no longer
        kept (or ``after`` is unknown here): what an SSE client gets."""
        store = self.store
        return self._events.stream(after, buffer, store.event_bounds, store.events_after)

    # -- retention ------------------------------------------------------------------------

    def retention(self, now: float | None = None) -> Retention:
        """Which finished processes may be deleted now, by the settings."""
        return pruning.retention_at(self.settings.retention, time.time() if now is None else now)

    async def gc(
        self,
        *,
        dry_run: bool = False,
        batch: int = pruning.PRUNE_BATCH,
        retention: Retention | None = None,
    ) -> Pruned:
        """Delete finished processes older than the retention (the settings', or the one
        given), ``batch`` at a time (each its own short write, so checkpoints in between wait
        little); or count them."""
        retention = self.retention() if retention is None else retention
        if dry_run:
            return await self.store.prunable(retention)
        total = await pruning.prune(self.store, retention, batch)
        self.pruned += total
        return total

    def stats(self) -> EngineStats:
        """The engine's counters, for health, metrics and systemd's STATUS line."""
        runtime, threads = self._runtime, self._runtime.threads
        steps = runtime.steps.all
        return EngineStats(
            accepting=runtime.accepting,
            uptime_seconds=time.time() - self.started_at,
            actors=len(runtime.actors),
            mailbox_depth=sum(len(a.mailbox) for a in runtime.actors.values()),
            steps_total=steps.total,
            step_buckets=list(steps.buckets),
            step_seconds_sum=steps.seconds,
            by_workflow=runtime.steps.by_workflow(),
            started_at=self.started_at,
            step_threads_abandoned=threads.abandoned_total,
            step_threads_abandoned_running=threads.abandoned_running,
            step_threads_busy=threads.busy,
            step_threads_queued=threads.queued_total,
            store=self.store.stats(),
            pruned_processes=self.pruned.processes,
            pruned_steps=self.pruned.steps,
            pruned_actions=self.pruned.actions,
            node_id=None if self.node is None else self.node.node_id,
            cluster=None if self.node is None else self.node.counters(),
            resources=self.limits.counts(),
        )


def _by(reporter: str | None, default: str = "engine") -> str:
    return reporter or default


def _sweep_every(settings: EngineSettings) -> float:
    """How often a node frees dead nodes' resource slots: as often as it looks for their
    processes (``orchd.engine.cluster``)."""
    return max(0.2, min(1.0, settings.lease_timeout / 5))
