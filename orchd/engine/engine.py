"""The embeddable Engine: loads workflows, owns the store and supervises the process actors.

The daemon is this Engine behind the control API and the scheduler; workflow authors use it
directly in their tests. Every action on a process is a message to that process's actor,
which is created on demand and retires when the process waits for someone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping, Sequence
from typing import Any

import msgspec

from orchd import _faults as faults
from orchd.dsl import Workflow
from orchd.engine import actor as actors
from orchd.engine import builtins, formpages, messages
from orchd.engine.catalog import Catalog
from orchd.engine.cluster import Node
from orchd.engine.events import LISTENER_BUFFER, EventHub, events_of
from orchd.engine.formpages import FormPage
from orchd.engine.limits import ClusterLimiter, Limiter, check_uses
from orchd.engine.loading import load_workflows
from orchd.engine.loopwatch import LoopWatch
from orchd.engine.starts import build_start
from orchd.engine.stats import EngineStats, StepMetrics
from orchd.engine.threads import StepThreads
from orchd.errors import (
    AmbiguousId,
    CallbackNotFound,
    FormValidationError,
    OrchdError,
    ProcessNotFound,
    ShuttingDown,
    SubscriptionNotFound,
    WorkflowNotFound,
)
from orchd.model import (
    ACTIVE,
    DEFAULT_PAGE,
    FINAL,
    Event,
    Page,
    Process,
    ProcessStatus,
    ProductInfo,
    Reset,
    ResourceLimit,
    Subscription,
    SubscriptionDetail,
    Target,
    WorkflowInfo,
)
from orchd.pages import Choice, Choices
from orchd.products import Product
from orchd.settings import EngineSettings, LimitSpec
from orchd.state import (
    form_schema,
)
from orchd.store.base import (
    BranchRow,
    Checkpoint,
    ChildFinished,
    NewProcess,
    Positions,
    ProcessRow,
    Prune,
    Pruned,
    ReplaceChildren,
    RequestAbort,
    Retention,
    SetNote,
    StartChildren,
    StepWrite,
    Store,
    token_digest,
)
from orchd.store.cluster import ClusterStore, NodeInfo
from orchd.store.opening import open_store
from orchd.store.slots import HasSlots
from orchd.store.views import Views, every_status, uuid_or_none
from orchd.tracing import Tracing, new_trace_id, parse_traceparent

log = logging.getLogger("orchd.engine")
#: The shortest abbreviation of a process id that is taken (README "The HTTP API").
MIN_PREFIX = 8
_PREFIX = re.compile(r"[0-9a-f][0-9a-f-]*")
#: Processes deleted per write when pruning: each write stays a few milliseconds long.
PRUNE_BATCH = 200
P = ProcessStatus
_ids = random.Random(os.urandom(32))


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
            #: Read on every use, so a reload (assigning a new object) applies at once.
            self.settings = msgspec.structs.replace(settings or EngineSettings(), **overrides)
        except TypeError as exc:
            raise TypeError(f"Engine(): {exc}") from None
        # README "Limits on shared resources": every limit a step names must be configured
        # (ConfigError, naming it).
        check_uses(self.workflows, self.settings.limits)
        #: The database. The engine layer (the scheduler) uses it; layers above use the
        #: engine's methods.
        self.store: Store = open_store(
            str(database),
            synchronous=synchronous,
            keep_events=self.settings.keep_events,
            node_id=self.settings.node_id,
            lease_timeout=self.settings.lease_timeout,
        )
        self._views = Views(self.store)
        self._events = EventHub()
        #: This engine as a node of a cluster (a store several daemons share), or None.
        self.node: Node | None = None
        if isinstance(self.store, ClusterStore):
            self.node = Node(self, self.store, self.settings.lease_timeout)
        #: Limits on shared resources (README "Limits on shared resources"): in memory, or a
        #: cluster's table of slots.
        self.limits: Limiter = (
            ClusterLimiter(self._limit_specs, self.store.slots, _sweep_every(self.settings))
            if isinstance(self.store, HasSlots)
            else Limiter(self._limit_specs)
        )
        self.store.on_events(self._on_events)
        #: What retention deleted since the engine started, for metrics.
        self.pruned = Pruned()
        #: Shared objects steps ask for by annotation (e.g. the daemon's HttpClient).
        self.resources: dict[Any, Any] = dict(resources or {})
        self.resources.setdefault(
            builtins.Subscriptions, builtins.Subscriptions(self.store, self.catalog)
        )
        self.actors: dict[str, actors.Actor] = {}
        self._tokens: dict[str, str] = {}
        self._store_failures: dict[str, int] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        #: Why the actors' supervisor stopped while the engine was open (None: it runs). The
        #: engine then refuses all work, and ``ping`` raises so that health answers 503 and
        #: the systemd watchdog goes unfed: the daemon is restarted, not left half alive.
        self.failure: str | None = None
        self._own_http: Any = None
        block = self.settings.block_warning
        #: Warns when workflow code blocks the event loop longer than this (None: off).
        self.loopwatch = LoopWatch(block) if block else None
        self._threads = StepThreads(self.settings.step_threads)
        #: Processes whose timed-out sync call still runs, and the step it belongs to.
        self._abandoned: dict[str, str] = {}
        self._accepting = False
        self._idle = asyncio.Event()
        self._hurry = asyncio.Event()
        self._grace_cut = False
        self.started_at = time.time()
        self._steps = StepMetrics()
        self._sends: set[asyncio.Task[None]] = set()

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
        await self.store.open()
        if self.node is not None:
            await self.node.start()
        await self.limits.open()
        _, self._events.last_id = await self.store.event_bounds()
        if self.loopwatch is not None:
            self.loopwatch.start()
        ready = asyncio.Event()
        self._stop = asyncio.Event()
        self.failure = None
        self._supervisor = asyncio.create_task(self._supervise(ready), name="orchd supervisor")
        await ready.wait()
        self._accepting = True
        await self._recover()
        if self.node is not None:
            self.node.run()

    async def _supervise(self, ready: asyncio.Event) -> None:
        """Own every actor in one task group, in a task of its own, so the engine can be
        opened and closed from different tasks. Nothing raises into the group (an actor
        catches what it meets, other work runs through ``_guarded``); should the group end
        anyway, the engine says so (``failure``) instead of carrying on as if well."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                ready.set()
                await self._stop.wait()
                for actor in list(self.actors.values()):
                    if actor.task is not None:
                        actor.task.cancel()
        except Exception as exc:  # an exception group: what was raised into the group
            self._stopped_running(exc)
        except BaseException as exc:
            self._stopped_running(exc)
            raise
        else:
            if not self._stop.is_set():  # the group ends only at close
                self._stopped_running(None)

    def _stopped_running(self, exc: BaseException | None) -> None:
        """The actors' supervisor ended. At close that is expected; at any other time every
        actor is gone and no new one can start: refuse all work, and say why."""
        if self._stop.is_set() and isinstance(exc, asyncio.CancelledError | None):
            return
        self.failure = f"the engine's actors stopped: {exc!r}"
        self._accepting = False
        log.critical(
            "%s; every process stops here until orchd is restarted",
            self.failure,
            exc_info=exc if isinstance(exc, Exception) else None,
        )
        refusal = ShuttingDown(f"{self.failure}; restart orchd")
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(refusal)
        self._idle.set()

    def _guarded(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``work`` in the actors' group, where what it raises is logged, never raised
        into the group (that would cancel every actor)."""

        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("%s failed", what)

        if self._tg is None or self.failure is not None:
            work.close()
            return
        task = guarded()
        try:
            self._tg.create_task(task)
        except RuntimeError:  # the group is ending
            task.close()
            work.close()

    async def _recover(self) -> None:
        """Continue what a previous run left: active processes, retry and callback timers."""
        await self._place_unkeyed()
        for child, parent in await self.store.unfinished_children_of_aborted():
            # The parent's abort committed, the cascade to its children did not finish.
            self.send(child, messages.Abort(actor=f"parent {parent}"))
        rows = await self.store.active_processes()
        for row in rows:
            self._post(row.id, messages.Run(), None, row=row)
        if rows:
            log.info("recovered %d active processes", len(rows))
        for timed in await self.store.timed_processes():
            if timed.status == P.WAITING:
                self.later(timed.id, timed.at, messages.Retry(automatic=True))
            elif timed.callback_token:
                self.later(timed.id, timed.at, messages.Expire(digest=timed.callback_token))
            else:
                # A fork's branch waits for a callback with a deadline (README "Parallel branches").
                self.later(timed.id, timed.at, messages.Retry(automatic=True))

    async def _place_unkeyed(self) -> None:
        """Give processes from before step keys their position, once: the key and occurrence of
        the step at their index, when that step still has the name they recorded."""
        placed: list[tuple[int, str, int]] = []
        stranded = []
        for row in await self.store.unplaced_processes():
            wf = self.workflows.get(row.workflow)
            steps = wf.steps if wf is not None else ()
            if wf is not None and row.pc < len(steps) and steps[row.pc].name == row.current_step:
                placed.append((row.pk, *wf.positions.at(row.pc)))
            else:
                stranded.append(row.id)
        if placed:
            await self.store.write(Positions(rows=placed))
            log.info("placed %d processes from before step keys by their step's key", len(placed))
        if stranded:
            log.warning(
                "%d processes from before step keys stand at a step that changed; they fail "
                "when they go on: %s",
                len(stranded),
                ", ".join(stranded[:20]),
            )

    def interrupt(self) -> None:
        """End the grace period of a close() now: running steps are interrupted (they run
        again at the next start)."""
        self._grace_cut = True
        self._hurry.set()
        self._idle.set()

    async def close(self) -> None:
        """Stop intake, let running steps finish within the grace period, then stop."""
        if self._tg is None:
            return
        self._accepting = False
        if self.node is not None:
            await self.node.stop()
        if faults.ENABLED:
            faults.point("shutdown")
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for a in list(self.actors.values()):
            a.post(messages.Stop(), None)
            self.limits.interrupt(a.pid)  # a step waiting for resources does not run now
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0 if self._grace_cut else self.settings.grace_period):
                while self.actors and not self._hurry.is_set():
                    self._idle.clear()
                    await self._idle.wait()
        if self.actors:
            log.warning("interrupting %d steps after the grace period", len(self.actors))
        self._stop.set()
        if self._supervisor is not None:
            # It may have ended long ago (``failure``): its end was told then.
            await asyncio.wait([self._supervisor])
        self._tg = None
        self._events.close()
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(ShuttingDown("the engine stopped"))
        self._waiters.clear()
        await self.limits.close()
        await self._leave()
        await self.store.close()
        self._threads.close()
        if self.loopwatch is not None:
            self.loopwatch.stop()
        if self._own_http is not None:
            await self._own_http.close()
            self.resources.pop(type(self._own_http), None)
            self._own_http = None

    async def _leave(self) -> None:
        """In a cluster, hand this node's processes back (their actors have stopped)."""
        if self.node is not None:
            await self.node.leave()
        for task in list(self._sends):
            task.cancel()

    # -- actors ---------------------------------------------------------------------------

    def _post(
        self,
        pid: str,
        message: messages.Message,
        reply: asyncio.Future[Any] | None,
        row: ProcessRow | None = None,
    ) -> None:
        actor = self.actors.get(pid)
        if actor is None:
            if self._tg is None or self.failure is not None:
                raise ShuttingDown(self.failure or "the engine is not running")
            actor = actors.Actor(self, pid, row)
            run = actor.run()
            try:
                actor.task = self._tg.create_task(run)
            except RuntimeError:  # the group is ending (``_stopped_running`` tells why)
                run.close()
                raise ShuttingDown("the engine is not running") from None
            self.actors[pid] = actor
            if self.tracing.on:
                self.tracing.began(pid)
        actor.post(message, reply)
        if self.limits.waiting and isinstance(message, messages.Abort | messages.Stop):
            self.limits.interrupt(pid)  # it no longer waits for resources

    async def _ask(self, pid: str, message: messages.Message) -> Any:
        if not self._accepting:
            raise ShuttingDown("the engine is shutting down")
        if self.node is not None and pid not in self.actors:
            # In a cluster the process may be another node's: claim it, or ask its owner.
            owner = await self.node.owner(pid)
            if owner is not None:
                return await self.node.forward(owner, pid, message)
        return await self.ask_local(pid, message)

    async def ask_local(self, pid: str, message: messages.Message) -> Any:
        """Hand ``message`` to this engine's actor of ``pid`` and wait for its answer."""
        if not self._accepting:
            raise ShuttingDown("the engine is shutting down")
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._post(pid, message, reply)
        return await reply

    def post_local(self, pid: str, message: messages.Message, row: ProcessRow | None) -> None:
        """Post to this engine's actor (a process this node has just claimed)."""
        if self._accepting:
            self._post(pid, message, None, row=row)

    def send(self, pid: str, message: messages.Message) -> None:
        """Post ``message`` without waiting for an answer; in a cluster, to whichever node
        owns the process (a timer, a cascade)."""
        if self.node is None or pid in self.actors:
            self._post(pid, message, None)
            return

        async def route() -> None:
            try:
                await self._ask(pid, message)
            except OrchdError as exc:
                log.debug("process=%s %s not delivered: %s", pid, type(message).__name__, exc)

        task = asyncio.get_running_loop().create_task(route())
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def wake_waiters(self, pid: str) -> None:
        """The process is no longer active (seen in an event, maybe another node's)."""
        for fut in self._waiters.get(pid, ()):
            if not fut.done():
                fut.set_result(None)

    # -- the actors' host (orchd.engine.actor.Host) ----------------------------------------

    def workflow(self, name: str) -> Workflow | None:
        return self.workflows.get(name)

    async def load(self, pid: str) -> ProcessRow | None:
        return await self.store.process(pid)

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        actor = self.actors.get(checkpoint.process_id)
        if actor is not None:
            checkpoint.events = events_of(actor, checkpoint)
        committed, finished = False, None
        if len(self.actors) == 1 and (actor is None or not actor.concurrent):
            # A lone process: committing here skips two thread hand-offs per step; the loop
            # waits for the fsync meanwhile, which only this process needs.
            committed, finished = self.store.commit_now(checkpoint)
        if committed:
            await asyncio.sleep(0)  # let the loop serve its sockets between steps
        else:
            finished = await self.store.write(checkpoint)
        if self.limits.by_pid:
            self.limits.committed()  # its step's outcome is committed, its slots free
        if isinstance(finished, ChildFinished):
            # A child's last checkpoint: its parent may be awake, a held sibling free to go.
            if finished.woke is not None and faults.ENABLED:
                faults.point("parent_woken")
            if finished.woke is not None and self._accepting:
                self._post(finished.woke, messages.Run(), None)
            if finished.started is not None and self._accepting:
                row = finished.started_row
                self._post(finished.started, messages.Run(), None, row=row)

    async def start_children(self, op: StartChildren | ReplaceChildren) -> None:
        actor = self.actors.get(op.parent.process_id)
        if actor is not None:
            op.parent.events = events_of(actor, op.parent)
        rows = await self.store.write(op)
        if self.tracing.on:
            for row in rows:
                self.tracing.started(
                    row.id, row.workflow, row.trace_id, row.created_at, parent_id=row.parent_id
                )
        for row in rows:
            if not row.held:
                self._post(row.id, messages.Run(), None, row=row)

    async def children_of(self, pid: str, group: int) -> list[ProcessRow]:
        return await self.store.children(pid, group)

    async def branches(self, pk: int) -> list[BranchRow]:
        return await self.store.branches(pk)

    async def fork_records(self, pk: int) -> list[tuple[str | None, str, float]]:
        return await self.store.fork_records(pk)

    def retire(self, actor: actors.Actor) -> None:
        # Forgotten first, so that nothing below can leave a dead actor taking messages.
        if self.actors.get(actor.pid) is actor:
            del self.actors[actor.pid]
            if not self.actors:
                self._idle.set()
        try:
            self._forget_tokens_of(actor)
            if actor.pid in self.limits.by_pid:
                self.limits.release_process(actor.pid)  # what it held or waited for
            if self.tracing.on:
                if actor.loaded:
                    self.tracing.retired(
                        actor.pid, actor.workflow_name, actor.trace_id, actor.status
                    )
                else:  # it never ran (its process was not found): its run had no span
                    self.tracing.retired(actor.pid, "", "", "")
        except Exception:  # in the actor's task: nothing may raise into the actors' group
            log.exception("process=%s retiring its actor failed", actor.pid)
        if actor.mailbox:
            # Messages that arrived while it was retiring go to a fresh actor; at shutdown
            # their senders are told, rather than left waiting for ever.
            pending = list(actor.mailbox)
            actor.mailbox.clear()
            for envelope in pending:
                try:
                    if not self._accepting:
                        raise ShuttingDown(self.failure or "the engine is shutting down")
                    self._post(actor.pid, envelope.message, envelope.reply)
                except ShuttingDown as exc:
                    messages.respond(envelope, error=exc)

    def _forget_tokens_of(self, actor: actors.Actor) -> None:
        """A retired actor's callback tokens no longer route here from memory: a wait that
        stands is found in the database, and a token of a wait that never began (its action
        failed, or was cut short) must not stay in the map for ever."""
        if not actor.loaded:
            return
        if actor.callback_token is not None and self._tokens.get(actor.callback_token) == actor.pid:
            del self._tokens[actor.callback_token]
        if actor.forks is not None:
            for digest in actor.forks.tokens:
                if self._tokens.get(digest) == actor.pid:
                    del self._tokens[digest]

    def store_failed(self, pid: str) -> int:
        """Run the process again from its last commit after a failed checkpoint, backing off
        (1 s, 2 s, 4 s ... 30 s) while the database keeps failing; returns the attempt."""
        attempt = self._store_failures[pid] = self._store_failures.get(pid, 0) + 1
        self.later(pid, time.time() + min(30.0, 2.0 ** (attempt - 1)), messages.Run())
        return attempt

    def later(self, pid: str, at: float, message: messages.Message) -> None:
        if not self._accepting:
            return
        # One timer per process and kind of message: a new one replaces the old.
        key = (pid, type(message).__name__)
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            if self._accepting:
                self.send(pid, message)

        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(max(0.0, at - time.time()), fire)

    async def in_thread(self, pid: str, step: str, call: Callable[[], Any]) -> Any:
        def abandoned() -> Callable[[], None]:
            self._abandoned[pid] = step
            log.warning("process=%s step=%r abandoned: its call runs on in its thread", pid, step)

            def returned() -> None:
                self._abandoned.pop(pid, None)

            return returned

        return await self._threads.run(call, abandoned)

    def still_running(self, pid: str) -> str | None:
        return self._abandoned.get(pid)

    async def request_abort(self, pk: int, by: str) -> bool:
        found: bool = await self.store.write(RequestAbort(pk=pk, by=by, at=time.time()))
        return found

    def background(self, work: Coroutine[Any, Any, None], what: str) -> None:
        self._guarded(work, what)

    def expect_callback(self, digest: str, pid: str) -> None:
        self._tokens[digest] = pid

    def forget_callback(self, digest: str) -> None:
        self._tokens.pop(digest, None)

    def new_id(self) -> str:
        # A version-4 UUID from a generator seeded by the OS: ids need to be unique, not
        # secret (callback tokens are), and this avoids a system call per id.
        return str(uuid.UUID(int=_ids.getrandbits(128), version=4))

    def committed(
        self,
        actor: actors.Actor,
        previous: ProcessStatus,
        steps: list[StepWrite],
        step_seconds: float | None,
    ) -> None:
        """Called by an actor after each commit: events, waiters, metrics."""
        if self._store_failures:
            self._store_failures.pop(actor.pid, None)
        status = actor.status
        self._steps.add(actor.workflow_name, steps, step_seconds)
        if self.tracing.on and steps:
            self.tracing.committed(actor.pid, actor.workflow_name, actor.trace_id, steps)
        for record in steps:
            log.debug(
                "step status process=%s workflow=%s step=%r status=%s trace_id=%s",
                actor.pid,
                actor.workflow_name,
                record.name,
                record.status,
                actor.trace_id,
            )
        if status is not previous or not steps:
            if status in (P.FAILED, P.WAITING):
                log.warning(
                    "process status process=%s workflow=%s status=%s step=%r error=%r trace_id=%s",
                    actor.pid,
                    actor.workflow_name,
                    status,
                    actor.current_step,
                    actor.error,
                    actor.trace_id,
                )
            else:
                log.info(
                    "process status process=%s workflow=%s status=%s trace_id=%s",
                    actor.pid,
                    actor.workflow_name,
                    status,
                    actor.trace_id,
                )
            if status is P.ABORTED and actor.children_group is not None:
                self._cascade_abort(actor.pid)
        if status not in ACTIVE:
            for fut in self._waiters.pop(actor.pid, ()):
                if not fut.done():
                    fut.set_result(None)
            if actor.callback_token:
                self._tokens.pop(actor.callback_token, None)

    def _cascade_abort(self, parent_id: str) -> None:
        """An aborted parent aborts every unfinished child (each through its own actor)."""
        reason = messages.Abort(actor=f"parent {parent_id}")
        for actor in list(self.actors.values()):
            # Children running here hear it before their next step, whatever a read costs.
            if actor.loaded and actor.parent_id == parent_id and actor.status not in FINAL:
                self._post(actor.pid, reason, None)
        self._guarded(self._abort_children(parent_id, 1), f"process={parent_id} abort cascade")

    async def _abort_children(self, parent_id: str, attempt: int) -> None:
        """The cascade's read of the children, and an abort to each unfinished one. A read
        that fails is tried again later, backing off (0.5 s, 1 s ... 30 s); the next start
        finishes the cascade too (``unfinished_children_of_aborted``)."""
        by = f"parent {parent_id}"
        try:
            if faults.ENABLED:
                faults.point("cascade_read")
            children = await self.store.children(parent_id)
        except Exception as exc:
            if not self._accepting:
                return  # the next start finishes it
            delay = min(30.0, 0.25 * 2.0**attempt)
            (log.warning if attempt == 1 else log.debug)(
                "process=%s reading its children to abort them failed (%r); trying again in %.1f s",
                parent_id,
                exc,
                delay,
            )
            key = (parent_id, "cascade")

            def again() -> None:
                self._timers.pop(key, None)
                if self._accepting:
                    retry = self._abort_children(parent_id, attempt + 1)
                    self._guarded(retry, f"process={parent_id} abort cascade")

            old = self._timers.pop(key, None)
            if old is not None:
                old.cancel()
            self._timers[key] = asyncio.get_running_loop().call_later(delay, again)
            return
        for child in children:
            if child.status not in FINAL and self._accepting:
                self.send(child.id, messages.Abort(actor=by))

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
        if not self._accepting:
            raise ShuttingDown("the engine is not accepting new processes")
        wf = self.workflows.get(workflow)
        paged = False
        if wf is not None:  # a form of several pages, or a list of answers: replayed here
            try:
                input, paged = await formpages.start_input(wf, input, self.choices)
            except FormValidationError:
                # A retried start whose first attempt took its own choices (the ports it
                # picked are in use now, by that very process): the key answers it.
                found = await self._keyed(idempotency_key, workflow)
                if found is None:
                    raise
                return found, False
        op = self.prepare_start(
            workflow,
            {} if input is None else input,
            reporter,
            idempotency_key=idempotency_key,
            paged=paged,
        )
        remote = parse_traceparent(traceparent)
        if remote is not None:
            op.trace_id = remote.trace_id
        row: ProcessRow = await self.store.write(op)
        if row.id != op.id:
            return row.id, False  # the key's process, started before
        if self.tracing.on:
            self.tracing.started(row.id, row.workflow, row.trace_id, row.created_at, remote=remote)
        self._post(row.id, messages.Run(), None, row=row)
        return row.id, True

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
        idempotency_key: str | None = None,
        paged: bool = False,
    ) -> NewProcess:
        """Check a start (workflow, input) and build it; raises what a refused start raises.
        A child names its parent, fan-out and element; ``held`` waits for a free slot;
        ``paged``: the input went through the workflow's pages."""
        wf = self.workflows.get(workflow)
        if wf is None:
            raise WorkflowNotFound(f"no workflow named {workflow!r}")
        op = build_start(
            wf,
            input,
            reporter,
            self.new_id(),
            parent_id=parent_id,
            group=group,
            index=index,
            held=held,
            idempotency_key=idempotency_key,
            paged=paged,
        )
        # README "Traces": a child is in its parent's trace (its parent's actor is starting it);
        # any other start begins a trace of its own (start_once joins a request's instead).
        parent = self.actors.get(parent_id) if parent_id is not None else None
        op.trace_id = parent.trace_id if parent is not None and parent.loaded else new_trace_id()
        return op

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
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page:
        """Processes, newest first, a page at a time (``parent``: that process's children)."""
        page = await self._views.list_processes(
            status=status, workflow=workflow, parent=parent, limit=limit, cursor=cursor
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

    @property
    def product_classes(self) -> Mapping[str, type[Product]]:
        return self.catalog.products

    async def subscription_of(self, sid: str) -> Subscription | None:
        return await self.store.subscription(sid)

    async def set_note(self, sid: str, note: str, *, by: str) -> None:
        """Set a subscription's note, recorded with who set it (``by``)."""
        canonical = uuid_or_none(sid)
        op = SetNote(subscription_id=canonical or sid, note=note, actor=by, at=time.time())
        if canonical is None or not await self.store.write(op):
            raise SubscriptionNotFound(f"subscription {sid} does not exist")

    async def _keyed(self, key: str | None, workflow: str) -> str | None:
        """The process of ``workflow`` an Idempotency-Key started, if any."""
        if key is None:
            return None
        row = await self.store.keyed_process(key)
        return row.id if row is not None and row.workflow == workflow else None

    async def form_page(self, workflow: str, answers: Any) -> FormPage:
        """The next page of a workflow's form after ``answers`` (a list, page 0 first), or
        done; a 422 locates what is wrong by page and field. Nothing is kept between calls."""
        wf = self.workflows.get(workflow)
        if wf is None:
            raise WorkflowNotFound(f"no workflow named {workflow!r}")
        return await formpages.form_page(wf, answers, self.choices)

    async def process_form_page(self, pid: str, answers: Any) -> FormPage:
        """As ``form_page``, for the form a suspended process waits for."""
        row = await self.store.process(await self.resolve_id(pid))
        if row is None:
            raise ProcessNotFound(f"process {pid} does not exist")
        return await formpages.process_form_page(
            row, self.workflows.get(row.workflow), answers, self.choices, self.resources
        )

    async def choices(self, marker: Choices) -> list[Choice]:
        reader: builtins.Subscriptions = self.resources[builtins.Subscriptions]
        return await reader.choices(marker)

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
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[pid].append(fut)
        try:
            actor = self.actors.get(pid)
            if actor is None or not actor.loaded or actor.status not in ACTIVE:
                # Passivated (or not loaded yet): the database says whether it is still active.
                process = await self.get(pid)
                if process.status not in ACTIVE:
                    return process
            async with asyncio.timeout(timeout):
                await fut
            return await self.get(pid)
        finally:
            waiters = self._waiters.get(pid)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[pid]

    # ``reporter`` names who asks (recorded in the process's actions): the API passes
    # ``uid:N`` or ``token`` with the client's label; an embedding program what it likes.

    async def resume(self, pid: str, answer: Any, *, reporter: str | None = None) -> ProcessStatus:
        """Answer a suspended process's form; returns once committed and running again."""
        message = messages.Resume(answer=answer, actor=_actor(reporter))
        return P(await self._ask(await self.resolve_id(pid), message))

    async def retry(
        self, pid: str, *, reporter: str | None = None, reissue: bool = False
    ) -> ProcessStatus:
        """Re-run the failed (or waiting) step; returns once committed and running again.

        ``reissue``: the failed step is a callback's validate step (or its wait); go back to
        the callback's action instead, so the external system is asked again (a new token).
        """
        message = messages.Retry(actor=_actor(reporter), reissue=reissue)
        return P(await self._ask(await self.resolve_id(pid), message))

    async def skip(self, pid: str, reason: str, *, reporter: str | None = None) -> ProcessStatus:
        """Record a ``failed`` or ``waiting`` process's failing step as skipped (State as it
        was) and go on with the next step; returns once committed and running again."""
        message = messages.Skip(reason=reason, actor=_actor(reporter))
        return P(await self._ask(await self.resolve_id(pid), message))

    async def abort(self, pid: str, *, reporter: str | None = None) -> ProcessStatus:
        """Abort; returns once committed (for a running process: once requested)."""
        return P(
            await self._ask(await self.resolve_id(pid), messages.Abort(actor=_actor(reporter)))
        )

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
        pid = self._tokens.get(digest) or await self.store.process_waiting_for(digest)
        if pid is None:
            raise CallbackNotFound("no process waits for this callback token")
        actor = _actor(reporter, "callback token")
        await self._ask(pid, messages.Callback(digest=digest, payload=payload, actor=actor))
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
        message = messages.Callback(digest=None, payload=payload, actor=_actor(reporter))
        await self._ask(await self.resolve_id(pid), message)
        return P.RUNNING

    async def resolve_id(self, pid: str) -> str:
        """The process id ``pid`` names: itself, or the one process whose id starts with it
        (at least MIN_PREFIX characters); ProcessNotFound, or AmbiguousId for two or more."""
        canonical = uuid_or_none(pid)
        if canonical is not None:
            return canonical
        prefix = pid.lower()
        if len(prefix) < MIN_PREFIX or len(prefix) >= 36 or not _PREFIX.fullmatch(prefix):
            raise ProcessNotFound(
                f"process {pid!r} does not exist (not a process id, nor a prefix of at least "
                f"{MIN_PREFIX} of its characters)"
            )
        found = await self.store.processes_with_prefix(prefix, 3)
        if not found:
            raise ProcessNotFound(f"no process id starts with {pid!r}")
        if len(found) > 1:
            listed = ", ".join(found[:2]) + (", ..." if len(found) > 2 else "")
            raise AmbiguousId(f"{pid!r} is the start of more than one process id: {listed}")
        return found[0]

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
        return self._accepting

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
        now = time.time() if now is None else now
        tasks, workflows = self.settings.retain_tasks, self.settings.retain_workflows
        return Retention(
            tasks_before=None if tasks is None else now - tasks,
            workflows_before=None if workflows is None else now - workflows,
        )

    async def gc(
        self,
        *,
        dry_run: bool = False,
        batch: int = PRUNE_BATCH,
        retention: Retention | None = None,
    ) -> Pruned:
        """Delete finished processes older than the retention (the settings', or the one
        given), ``batch`` at a time (each its own short write, so checkpoints in between wait
        little); or count them."""
        retention = self.retention() if retention is None else retention
        if dry_run:
            return await self.store.prunable(retention)
        total = Pruned()
        while True:
            done: Pruned = await self.store.write(Prune(retention=retention, limit=batch))
            total += done
            if done.processes < batch:
                break
            await asyncio.sleep(0)  # let what queued meanwhile go first
        self.pruned += total
        if total.processes:
            log.info(
                "pruned processes=%d steps=%d actions=%d",
                total.processes,
                total.steps,
                total.actions,
            )
        return total

    def stats(self) -> EngineStats:
        """The engine's counters, for health, metrics and systemd's STATUS line."""
        steps = self._steps.all
        return EngineStats(
            accepting=self._accepting,
            uptime_seconds=time.time() - self.started_at,
            actors=len(self.actors),
            mailbox_depth=sum(len(a.mailbox) for a in self.actors.values()),
            steps_total=steps.total,
            step_buckets=list(steps.buckets),
            step_seconds_sum=steps.seconds,
            by_workflow=self._steps.by_workflow(),
            started_at=self.started_at,
            step_threads_abandoned=self._threads.abandoned_total,
            step_threads_abandoned_running=self._threads.abandoned_running,
            step_threads_busy=self._threads.busy,
            step_threads_queued=self._threads.queued_total,
            store=self.store.stats(),
            pruned_processes=self.pruned.processes,
            pruned_steps=self.pruned.steps,
            pruned_actions=self.pruned.actions,
            node_id=None if self.node is None else self.node.node_id,
            cluster=None if self.node is None else self.node.counters(),
            resources=self.limits.counts(),
        )


def _actor(reporter: str | None, default: str = "engine") -> str:
    return reporter or default


def _sweep_every(settings: EngineSettings) -> float:
    """How often a node frees dead nodes' resource slots: as often as it looks for their
    processes (``orchd.engine.cluster``)."""
    return max(0.2, min(1.0, settings.lease_timeout / 5))
