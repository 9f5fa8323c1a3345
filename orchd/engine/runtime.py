"""The runtime the process actors run in: their task group, their creation and retirement,
and all that an actor asks of the engine (``orchd.engine.host.Host``: commits, timers, step
threads, callback tokens, children's starts).

``Engine`` (``orchd.engine.engine``) is the user's façade over it: it opens and closes the
runtime and hands it the users' messages through ``orchd.engine.routing``. An actor sees this
runtime only through ``Host``; routing and a cluster's node only through ``routing.Local``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from orchd import _faults as faults
from orchd.dsl import Workflow
from orchd.engine import actor as actors
from orchd.engine import builtins, ids, messages
from orchd.engine.catalog import Catalog
from orchd.engine.events import events_of
from orchd.engine.host import Committed, Identity
from orchd.engine.limits import Limiter
from orchd.engine.routing import Router
from orchd.engine.starts import build_start
from orchd.engine.stats import StepMetrics
from orchd.engine.threads import StepThreads
from orchd.engine.waits import End, Waits
from orchd.errors import ShuttingDown, WorkflowNotFound
from orchd.model import ACTIVE, FINAL, Process, ProcessStatus, Subscription
from orchd.pages import Choice, Choices
from orchd.products import Product
from orchd.settings import EngineSettings
from orchd.store.base import (
    BranchRow,
    Checkpoint,
    ChildFinished,
    NewProcess,
    ProcessRow,
    ReplaceChildren,
    RequestAbort,
    StartChildren,
    Store,
)
from orchd.tracing import Tracing, new_trace_id

log = logging.getLogger("orchd.engine")
P = ProcessStatus


class Runtime:
    """The actors of one engine and what they need of it (``Host``, ``routing.Local``)."""

    def __init__(
        self,
        *,
        workflows: Mapping[str, Workflow],
        settings: EngineSettings,
        store: Store,
        limits: Limiter,
        tracing: Tracing,
        resources: Mapping[Any, Any],
        catalog: Catalog,
    ) -> None:
        self.workflows = workflows
        #: Read on every use, so a reload (assigning a new object) applies at once.
        self.settings = settings
        self.store = store
        self.limits = limits
        self.tracing = tracing
        self.resources = resources
        self.catalog = catalog
        #: Where messages for processes go (with several nodes, to the owner's).
        self.router = Router(self)
        self.actors: dict[str, actors.Actor] = {}
        #: The callback waits of the processes running here (README "Guarantees").
        self.waits = Waits()
        self._store_failures: dict[str, int] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        #: The task that owns the actors' group (None before the first open).
        self.supervisor: asyncio.Task[None] | None = None
        #: Why the actors' supervisor stopped while the engine was open (None: it runs). The
        #: engine then refuses all work, and ``Engine.ping`` raises so that health answers 503
        #: and the systemd watchdog goes unfed: the daemon is restarted, not left half alive.
        self.failure: str | None = None
        self.threads = StepThreads(settings.step_threads)
        #: Processes whose timed-out sync call still runs, and the step it belongs to.
        self._abandoned: dict[str, str] = {}
        self.accepting = False
        self._idle = asyncio.Event()
        self._hurry = asyncio.Event()
        self._grace_cut = False
        self.steps = StepMetrics()

    # -- supervision ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the actors' group was opened and not yet closed."""
        return self._tg is not None

    async def start(self) -> None:
        """Open the actors' group and take messages."""
        ready = asyncio.Event()
        self._stop = asyncio.Event()
        self.failure = None
        self.supervisor = asyncio.create_task(self._supervise(ready), name="orchd supervisor")
        await ready.wait()
        self.accepting = True

    async def _supervise(self, ready: asyncio.Event) -> None:
        """Own every actor in one task group, in a task of its own, so the engine can be
        opened and closed from different tasks. Nothing raises into the group (an actor
        catches what it meets, other work runs through ``background``); should the group end
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
        self.accepting = False
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

    def background(self, work: Coroutine[Any, Any, None], what: str) -> None:
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

    def interrupt(self) -> None:
        """End the grace period of a stop now: running steps are interrupted."""
        self._grace_cut = True
        self._hurry.set()
        self._idle.set()

    async def stop(self) -> None:
        """Let running steps finish within the grace period, then stop every actor and
        answer whoever still waits (``accepting`` is False already)."""
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
        if self.supervisor is not None:
            # It may have ended long ago (``failure``): its end was told then.
            await asyncio.wait([self.supervisor])
        self._tg = None
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(ShuttingDown("the engine stopped"))
        self._waiters.clear()

    # -- actors ---------------------------------------------------------------------------

    def post(
        self,
        pid: str,
        message: messages.Message,
        reply: asyncio.Future[Any] | None,
        row: ProcessRow | None = None,
    ) -> None:
        """Hand ``message`` to this node's actor of ``pid``, starting one if none runs."""
        actor = self.actors.get(pid)
        if actor is None:
            if self._tg is None or self.failure is not None:
                raise ShuttingDown(self.failure or "the engine is not running")
            actor = actors.Actor(self, pid, row)
            try:
                actor.start(self._tg)
            except RuntimeError:  # the group is ending (``_stopped_running`` tells why)
                raise ShuttingDown("the engine is not running") from None
            self.actors[pid] = actor
            if self.tracing.on:
                self.tracing.began(pid)
        actor.post(message, reply)
        if self.limits.waiting and isinstance(message, messages.Abort | messages.Stop):
            self.limits.interrupt(pid)  # it no longer waits for resources

    def runs(self, pid: str) -> bool:
        return pid in self.actors

    async def ask_local(self, pid: str, message: messages.Message) -> Any:
        """Hand ``message`` to this node's actor of ``pid`` and wait for its answer."""
        if not self.accepting:
            raise ShuttingDown("the engine is shutting down")
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.post(pid, message, reply)
        return await reply

    def post_local(
        self, pid: str, message: messages.Message, row: ProcessRow | None = None
    ) -> None:
        """Post to this node's actor (a process this node has just claimed, or runs)."""
        if self.accepting:
            self.post(pid, message, None, row=row)

    def send(self, pid: str, message: messages.Message) -> None:
        self.router.send(pid, message)

    def wake_waiters(self, pid: str) -> None:
        for fut in self._waiters.get(pid, ()):
            if not fut.done():
                fut.set_result(None)

    async def wait(
        self,
        pid: str,
        timeout: float | None,  # noqa: ASYNC109
        get: Callable[[str], Awaitable[Process]],
    ) -> Process:
        """The process (read with ``get``) once it is no longer created or running."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[pid].append(fut)
        try:
            actor = self.actors.get(pid)
            if actor is None or not actor.active:
                # Passivated (or not loaded yet): the database says whether it is still active.
                process = await get(pid)
                if process.status not in ACTIVE:
                    return process
            async with asyncio.timeout(timeout):
                await fut
            return await get(pid)
        finally:
            waiters = self._waiters.get(pid)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[pid]

    # -- the actors' host (orchd.engine.host.Host) -----------------------------------------

    @property
    def product_classes(self) -> Mapping[str, type[Product]]:
        return self.catalog.products

    def workflow(self, name: str) -> Workflow | None:
        return self.workflows.get(name)

    async def load(self, pid: str) -> ProcessRow | None:
        return await self.store.process(pid)

    async def checkpoint(
        self,
        checkpoint: Checkpoint,
        process: Identity,
        previous: ProcessStatus,
        concurrent: bool = False,
    ) -> None:
        checkpoint.events = events_of(process, previous, checkpoint)
        committed, finished = False, None
        if not concurrent and len(self.actors) == 1:
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
            if finished.woke is not None and self.accepting:
                self.post(finished.woke, messages.Run(), None)
            if finished.started is not None and self.accepting:
                row = finished.started_row
                self.post(finished.started, messages.Run(), None, row=row)

    async def start_children(
        self, op: StartChildren | ReplaceChildren, parent: Identity, previous: ProcessStatus
    ) -> None:
        op.parent.events = events_of(parent, previous, op.parent)
        rows = await self.store.write(op)
        if self.tracing.on:
            for row in rows:
                self.tracing.started(
                    row.id, row.workflow, row.trace_id, row.created_at, parent_id=row.parent_id
                )
        for row in rows:
            if not row.held:
                self.post(row.id, messages.Run(), None, row=row)

    async def children_of(self, pid: str, group: int) -> list[ProcessRow]:
        return await self.store.children(pid, group)

    async def branches(self, pk: int) -> list[BranchRow]:
        return await self.store.branches(pk)

    async def fork_records(self, pk: int) -> list[tuple[str | None, str, float]]:
        return await self.store.fork_records(pk)

    def retire(
        self, actor: actors.Actor, process: Identity | None, status: ProcessStatus | None
    ) -> None:
        pid = actor.pid
        # Forgotten first, so that nothing below can leave a dead actor taking messages.
        if self.actors.get(pid) is actor:
            del self.actors[pid]
            if not self.actors:
                self._idle.set()
        try:
            # Its waits no longer route here from memory: one that stands is found in the
            # database; an answer one still holds is told now, not left waiting.
            self.waits.end_process(pid, End.RETIRED if self.accepting else End.SHUTDOWN)
            if pid in self.limits.by_pid:
                self.limits.release_process(pid)  # what it held or waited for
            if self.tracing.on:
                if process is not None and status is not None:
                    self.tracing.retired(pid, process.workflow, process.trace_id, status)
                else:  # it never ran (its process was not found): its run had no span
                    self.tracing.retired(pid, "", "", "")
        except Exception:  # in the actor's task: nothing may raise into the actors' group
            log.exception("process=%s retiring its actor failed", pid)
        # Messages that arrived while it was retiring go to a fresh actor; at shutdown their
        # senders are told, rather than left waiting for ever.
        for envelope in actor.leftovers():
            try:
                if not self.accepting:
                    raise ShuttingDown(self.failure or "the engine is shutting down")
                self.post(pid, envelope.message, envelope.reply)
            except ShuttingDown as exc:
                messages.respond(envelope, error=exc)

    def store_failed(self, pid: str) -> int:
        """Run the process again from its last commit after a failed checkpoint, backing off
        (1 s, 2 s, 4 s ... 30 s) while the database keeps failing; returns the attempt."""
        attempt = self._store_failures[pid] = self._store_failures.get(pid, 0) + 1
        self.later(pid, time.time() + min(30.0, 2.0 ** (attempt - 1)), messages.Run())
        return attempt

    def later(self, pid: str, at: float, message: messages.Message) -> None:
        if not self.accepting:
            return
        # One timer per process and kind of message: a new one replaces the old.
        key = (pid, type(message).__name__)
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            if self.accepting:
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

        return await self.threads.run(call, abandoned)

    def still_running(self, pid: str) -> str | None:
        return self._abandoned.get(pid)

    async def request_abort(self, pk: int, by: str) -> bool:
        found = await self.store.write(RequestAbort(pk=pk, by=by, at=time.time()))
        return found

    def new_id(self) -> str:
        return ids.new_id()

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
        # any other start begins a trace of its own (Engine.start_once joins a request's instead).
        parent = self.actors.get(parent_id) if parent_id is not None else None
        op.trace_id = (
            parent.identity.trace_id if parent is not None and parent.loaded else new_trace_id()
        )
        return op

    async def choices(self, marker: Choices) -> list[Choice]:
        reader: builtins.Subscriptions = self.resources[builtins.Subscriptions]
        return await reader.choices(marker)

    async def subscription_of(self, sid: str) -> Subscription | None:
        return await self.store.subscription(sid)

    def committed(self, done: Committed) -> None:
        """Told by an actor after each commit what it committed: events, waiters, metrics."""
        process, status, steps = done.process, done.status, done.steps
        pid, workflow, trace_id = process.pid, process.workflow, process.trace_id
        if self._store_failures:
            self._store_failures.pop(pid, None)
        self.steps.add(workflow, steps, done.step_seconds)
        if self.tracing.on and steps:
            self.tracing.committed(pid, workflow, trace_id, steps)
        for record in steps:
            log.debug(
                "step status process=%s workflow=%s step=%r status=%s trace_id=%s",
                pid,
                workflow,
                record.name,
                record.status,
                trace_id,
            )
        if status is not done.previous or not steps:
            if status in (P.FAILED, P.WAITING):
                log.warning(
                    "process status process=%s workflow=%s status=%s step=%r error=%r trace_id=%s",
                    pid,
                    workflow,
                    status,
                    done.current_step,
                    done.error,
                    trace_id,
                )
            else:
                log.info(
                    "process status process=%s workflow=%s status=%s trace_id=%s",
                    pid,
                    workflow,
                    status,
                    trace_id,
                )
            if status is P.ABORTED and done.has_children:
                self._cascade_abort(pid)
        if status not in ACTIVE:
            for fut in self._waiters.pop(pid, ()):
                if not fut.done():
                    fut.set_result(None)

    def _cascade_abort(self, parent_id: str) -> None:
        """An aborted parent aborts every unfinished child (each through its own actor)."""
        reason = messages.Abort(by=f"parent {parent_id}")
        for actor in list(self.actors.values()):
            # Children running here hear it before their next step, whatever a read costs
            # (one that has just finished refuses it itself).
            if actor.loaded and actor.identity.parent_id == parent_id:
                self.post(actor.pid, reason, None)
        self.background(self._abort_children(parent_id, 1), f"process={parent_id} abort cascade")

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
            if not self.accepting:
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
                if self.accepting:
                    retry = self._abort_children(parent_id, attempt + 1)
                    self.background(retry, f"process={parent_id} abort cascade")

            old = self._timers.pop(key, None)
            if old is not None:
                old.cancel()
            self._timers[key] = asyncio.get_running_loop().call_later(delay, again)
            return
        for child in children:
            if child.status not in FINAL and self.accepting:
                self.send(child.id, messages.Abort(by=by))
