"""Limits on shared resources (README "Limits on shared resources"): a step's ``uses=`` and the
config's ``[limits]``.

A step that names resources (``@step("configure", uses=["router:{node_name}"])``) takes a slot
of each before its function is called and gives them back once its outcome is committed. A
resource is a limit's name and a key filled from State (``router`` / ``r1``), and each key is
limited on its own: at most ``concurrency`` steps hold it at once, and at most ``rate`` start
a second, one every ``1 / rate`` seconds.

The rule that grants is in ``Board``, and nowhere else: first come first served per key, and
every key of a step at once or none. A request is granted only at the head of every queue it
stands in, so the oldest waiting request is always free to go once its keys have room: two
steps that each name two resources can never hold one each and wait for the other.

Waiting is a future that a release, an abort or a rate's timer resolves: no thread, no
polling. One node alone (SQLite) keeps the board in memory (``Limiter``): a SIGKILL frees
everything by construction. Several nodes (PostgreSQL) share a table of slots
(``ClusterLimiter``): each change (new requests, releases, a dead node's slots) runs the same
board over the rows it touches in one transaction, serialised by an advisory lock, and a node
whose request was granted by another is notified.

The engine has one hook: ``call_step`` acquires (``Limiter.acquire``); the engine's checkpoint
releases what the committing task holds (``Limiter.committed``), its actor's end releases
whatever its process still holds, and an abort or a stop ends a wait with ``Halted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import string
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any

from orchd.dsl import Step, Workflow
from orchd.errors import ConfigError, StoreError
from orchd.model import BlockedOn, ResourceHolder, ResourceKey, ResourceLimit, utc
from orchd.settings import LimitSpec
from orchd.state import StepInputError
from orchd.store.slots import SlotRow, SlotTable, SlotTx

__all__ = [
    "ClusterLimiter",
    "Halted",
    "Limiter",
    "check_uses",
    "limits_named",
    "slots_of",
]

log = logging.getLogger("orchd.engine.limits")

#: A limit's name and a key of it: ("router", "r1").
Slot = tuple[str, str]
#: The limits as configured now (read at every decision, so a reload applies at once).
Limits = Callable[[], Mapping[str, LimitSpec]]
_MISSING: Any = object()


class Halted(Exception):
    """A step's wait for its resources ended with an abort or a stop: the step did not run."""


# -- what a step names ----------------------------------------------------------------------

_parsed: dict[str, tuple[str, tuple[tuple[str, str | None], ...]]] = {}
#: Steps whose resources name no State key: their slots, once for all.
_constant: dict[Step, tuple[Slot, ...]] = {}


def _template(entry: str) -> tuple[str, tuple[tuple[str, str | None], ...]]:
    """A ``uses=`` entry as its limit and its key's parts: (literal text, State key or None)."""
    found = _parsed.get(entry)
    if found is None:
        limit, _, key = entry.partition(":")
        parts = tuple((text, field) for text, field, _, _ in string.Formatter().parse(key))
        found = _parsed[entry] = (limit, parts)
    return found


def slots_of(step: Step, state: Mapping[str, Any]) -> tuple[Slot, ...]:
    """The slots ``step`` takes, its keys filled from ``state`` (none for most steps).

    Raises StepInputError, which fails the step, for a State key that is missing or is not a
    string or a number."""
    if not step.uses:
        return ()
    known = _constant.get(step)
    if known is not None:
        return known
    slots: list[Slot] = []
    constant = True
    for entry in step.uses:
        limit, parts = _template(entry)
        constant = constant and all(field is None for _, field in parts)
        key = "".join(
            text + ("" if field is None else _key_text(step, entry, field, state))
            for text, field in parts
        )
        if (limit, key) not in slots:
            slots.append((limit, key))
    if constant:
        _constant[step] = tuple(slots)
    return tuple(slots)


def _key_text(step: Step, entry: str, field: str, state: Mapping[str, Any]) -> str:
    value = state.get(field, _MISSING)
    if value is _MISSING:
        raise StepInputError(
            f"step {step.name!r} uses {entry!r}, but State has no key {field!r} to fill it in"
        )
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise StepInputError(
        f"step {step.name!r} uses {entry!r}: State key {field!r} is "
        f"{'null' if value is None else 'a ' + type(value).__name__}, not a string or a number"
    )


def _steps(steps: Iterable[Step]) -> Iterator[Step]:
    for s in steps:
        yield s
        for branch in s.branches:
            yield from _steps(branch)


def limits_named(workflows: Mapping[str, Workflow]) -> dict[str, tuple[str, str, str]]:
    """Every limit the workflows' steps name: ``{limit: (workflow, step, entry)}``, the first
    step (by workflow name, then in its order) that names it."""
    named: dict[str, tuple[str, str, str]] = {}
    for wf in sorted(workflows.values(), key=lambda w: w.name):
        for s in _steps(wf.steps):
            for entry in s.uses:
                named.setdefault(entry.partition(":")[0], (wf.name, s.name, entry))
    return named


def check_uses(workflows: Mapping[str, Workflow], limits: Mapping[str, LimitSpec]) -> None:
    """Raise ConfigError (``limits: ...``) for a limit a loaded step names that ``limits``
    does not set, naming the step."""
    for limit, (wf, step_name, entry) in sorted(limits_named(workflows).items()):
        if limit not in limits:
            raise ConfigError(
                f"limits: step {step_name!r} of workflow {wf!r} uses {entry!r}, but [limits] "
                f"sets no {limit!r} (add e.g. `{limit} = 1` under [limits])"
            )


# -- the board: who holds, who waits, who goes next ------------------------------------------


class Request:
    """One step's acquisition: all its slots, held together or waited for together."""

    __slots__ = (
        "slots", "pid", "step", "since", "future", "blocked", "held", "gone", "id", "node",
        "life",
    )  # fmt: skip

    def __init__(
        self,
        slots: tuple[Slot, ...],
        pid: str,
        step: str,
        since: float,
        *,
        id: int = 0,
        node: str | None = None,
        life: str | None = None,
        held: bool = False,
    ) -> None:
        self.slots = slots
        self.pid = pid
        self.step = step
        #: When it began to wait, or to hold (epoch seconds).
        self.since = since
        self.future: asyncio.Future[None] | None = None
        #: The slot it waits for (the first of its slots that holds it back).
        self.blocked: Slot | None = None
        self.held = held
        #: Released or abandoned: nothing more happens to it.
        self.gone = False
        #: Its row's request number in a cluster (0: not written yet), its node and the
        #: life (incarnation) of that node that wrote it.
        self.id = id
        self.node = node
        self.life = life

    @property
    def waiting(self) -> bool:
        return self.future is not None and not self.future.done() and not self.held


class _Key:
    __slots__ = ("held", "queue", "next_at")

    def __init__(self) -> None:
        #: How many requests hold it (who they are is the limiter's to know).
        self.held = 0
        self.queue: deque[Request] = deque()
        #: The earliest time the next start may happen (a rate), on the board's clock.
        self.next_at = -math.inf


class Board:
    """The holders and queues of each key, and the one rule that grants. No futures and no
    clock of its own: the caller passes ``now`` and resolves what was granted."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.keys: dict[Slot, _Key] = {}

    def key(self, slot: Slot) -> _Key:
        key = self.keys.get(slot)
        if key is None:
            key = self.keys[slot] = _Key()
        return key

    def blocker(
        self, r: Request, now: float, limits: Mapping[str, LimitSpec] | None = None
    ) -> tuple[Slot | None, float | None]:
        """The first slot that holds ``r`` back (someone before it, no room, or a rate not
        due yet, then also when it is due); ``(None, None)`` when it may go now."""
        if limits is None:
            limits = self.limits()
        for slot in r.slots:
            key = self.keys.get(slot)
            if key is None:
                continue
            if key.queue and key.queue[0] is not r:
                return slot, None
            spec = limits.get(slot[0])
            if spec is None:
                continue
            if spec.concurrency is not None and key.held >= spec.concurrency:
                return slot, None
            if spec.rate and key.next_at > now:
                return slot, key.next_at
        return None, None

    def take(self, r: Request, now: float) -> bool:
        """Grant ``r`` at once when nothing holds it back (True); else queue it."""
        limits = self.limits()
        if len(r.slots) == 1:
            # The common case, the short way: one resource, nobody waiting, room.
            slot = r.slots[0]
            key = self.keys.get(slot)
            spec = limits.get(slot[0])
            if key is None:
                key = self.keys[slot] = _Key()
            if (
                not key.queue
                and (spec is None or spec.concurrency is None or key.held < spec.concurrency)
                and (spec is None or not spec.rate or key.next_at <= now)
            ):
                key.held += 1
                if spec is not None and spec.rate:
                    key.next_at = max(key.next_at, now) + 1.0 / spec.rate
                r.held = True
                return True
        blocked, _ = self.blocker(r, now, limits)
        if blocked is None:
            self._grant(r, now, limits)
            return True
        r.blocked = blocked
        for slot in r.slots:
            self.key(slot).queue.append(r)
        return False

    def queue(self, r: Request) -> None:
        """Put ``r`` at the end of its keys' queues (a request read back from the table)."""
        for slot in r.slots:
            self.key(slot).queue.append(r)

    def hold(self, r: Request) -> None:
        """Count ``r`` as holding its keys (a request read back from the table)."""
        for slot in r.slots:
            self.key(slot).held += 1

    def _grant(self, r: Request, now: float, limits: Mapping[str, LimitSpec] | None = None) -> None:
        if limits is None:
            limits = self.limits()
        for slot in r.slots:
            key = self.key(slot)
            key.held += 1
            spec = limits.get(slot[0])
            if spec is not None and spec.rate:
                # Spaced evenly: the next start no sooner than one interval after this one.
                key.next_at = max(key.next_at, now) + 1.0 / spec.rate
        r.held = True
        r.blocked = None

    def drop(self, r: Request, now: float) -> list[Slot]:
        """Take ``r`` off the board (released or abandoned); answers those of its slots that
        others wait for, which the caller examines (someone may go now)."""
        waited = []
        for slot in r.slots:
            key = self.keys.get(slot)
            if key is None:
                continue
            if r.held:
                key.held -= 1
            else:
                with contextlib.suppress(ValueError):
                    key.queue.remove(r)
            if key.queue:
                waited.append(slot)
            else:
                self._tidy(slot, key, now)
        r.held = False
        return waited

    def examine(self, slots: Iterable[Slot], now: float) -> tuple[list[Request], dict[Slot, float]]:
        """Grant, in order, the heads of these keys' queues that may go now (a grant frees the
        heads of its other keys too). Answers who was granted, and for each key whose head
        waits for its rate, when it is due."""
        granted: list[Request] = []
        due: dict[Slot, float] = {}
        work = list(slots)
        while work:
            slot = work.pop()
            key = self.keys.get(slot)
            if key is None:
                continue
            while key.queue:
                head = key.queue[0]
                blocked, at = self.blocker(head, now)
                if blocked is not None:
                    head.blocked = blocked
                    if at is not None:
                        due[blocked] = at
                    break
                for s in head.slots:
                    self.keys[s].queue.popleft()  # blocker(): it heads each of its queues
                self._grant(head, now)
                granted.append(head)
                work.extend(s for s in head.slots if s != slot)
            self._tidy(slot, key, now)
        return granted, due

    def _tidy(self, slot: Slot, key: _Key, now: float) -> None:
        if not key.held and not key.queue and key.next_at <= now:
            self.keys.pop(slot, None)


# -- one node alone ---------------------------------------------------------------------------


#: The request of the step the running task is in (each actor and each branch runs in a task
#: of its own, with a context of its own): the checkpoint that commits the step's outcome, in
#: that task, finds it here. Cheaper than asking which task runs.
_taken: contextvars.ContextVar[Request | None] = contextvars.ContextVar("orchd_limits_taken")


class Limiter:
    """The limits of one node alone (SQLite): the board in memory; a wait is a future."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.board = Board(limits)
        #: Every request that holds or waits, by process (its first; the others of its
        #: branches in ``_more``): what an abort or a stop interrupts, what an actor that ends
        #: (a crash, a stop) gives back, what the API shows.
        self.by_pid: dict[str, Request] = {}
        self._more: dict[str, list[Request]] = {}
        #: How many wait now.
        self.waiting = 0
        self._timers: dict[Slot, tuple[float, asyncio.TimerHandle]] = {}

    # -- the engine's hooks ---------------------------------------------------------------

    def acquire(
        self, pid: str, step: str, slots: tuple[Slot, ...]
    ) -> Coroutine[Any, Any, None] | None:
        """Take every slot of ``slots`` for the running task's step: None when they are
        taken now, else a wait to await (it raises Halted when an abort or a stop ends it).
        Most steps find room: they pay for no coroutine."""
        r = Request(slots, pid, step, time.time())
        _taken.set(r)
        if pid in self.by_pid:
            self._more.setdefault(pid, []).append(r)
        else:
            self.by_pid[pid] = r
        if self._take(r):
            return None
        return self._wait(r)

    async def _wait(self, r: Request) -> None:
        self.waiting += 1
        try:
            assert r.future is not None
            await r.future
        except BaseException:
            self._forget(r)
            if _taken.get(None) is r:
                _taken.set(None)
            raise
        finally:
            self.waiting -= 1

    def committed(self) -> None:
        """A checkpoint committed in the running task: what its step held is free."""
        r = _taken.get(None)
        if r is not None:
            _taken.set(None)
            self._forget(r)

    def release_process(self, pid: str) -> None:
        """The process's actor ended: whatever it still held or waited for (a step that did
        not commit: a crash, a stop) is given back."""
        for r in self._of(pid):
            if r.waiting:
                assert r.future is not None
                r.future.set_exception(Halted(f"process {pid}: its actor ended"))
                r.future.exception()  # its task has ended: nobody will look
            self._forget(r)

    def interrupt(self, pid: str) -> None:
        """An abort or a stop: the process's steps that wait for resources give up (Halted);
        steps that hold theirs run on."""
        for r in self._of(pid):
            if r.waiting:
                assert r.future is not None
                r.future.set_exception(Halted(f"process {pid}: its wait for resources ended"))
                self._forget(r)

    def reconfigured(self) -> None:
        """The limits changed (a reload): a key with more room lets its waiters go."""
        self._settle(self.board.examine(list(self.board.keys), time.monotonic()))

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for pid in list(self.by_pid):
            self.release_process(pid)

    # -- what is shown ----------------------------------------------------------------------

    async def blocked(self, pids: Iterable[str]) -> dict[str, BlockedOn]:
        """What each of these (running) processes waits for, for those that wait."""
        found = {}
        for pid in pids:
            waits = [r for r in self._of(pid) if r.waiting and r.blocked]
            if waits:
                first = min(waits, key=lambda r: r.since)
                assert first.blocked is not None
                found[pid] = BlockedOn(
                    resource=first.blocked[0], key=first.blocked[1], since=utc(first.since)
                )
        return found

    def counts(self) -> dict[str, tuple[int, int]]:
        """Slots held and steps waiting on this node, by limit (every configured one)."""
        held = dict.fromkeys(self.limits(), 0)
        waiting = dict.fromkeys(self.limits(), 0)
        for r in self._all():
            if r.held:
                for limit, _ in r.slots:
                    held[limit] = held.get(limit, 0) + 1
            elif r.waiting:
                for limit in {limit for limit, _ in r.slots}:
                    waiting[limit] = waiting.get(limit, 0) + 1
        return {k: (held.get(k, 0), waiting.get(k, 0)) for k in held | waiting}

    async def report(self) -> list[ResourceLimit]:
        """Each limit, its keys in use or waited for, and their holders."""
        rows = [
            SlotRow(
                request=0,
                resource=limit,
                key=key,
                held=r.held,
                process_id=r.pid,
                step=r.step,
                node=None,
                since=r.since,
            )
            for r in self._all()
            if r.held or r.waiting
            for limit, key in r.slots
        ]
        return describe(self.limits(), rows)

    # -- inside ---------------------------------------------------------------------------

    def _take(self, r: Request) -> bool:
        """Grant at once (True), or queue ``r`` with a future to wait on."""
        now = time.monotonic()
        if self.board.take(r, now):
            return True
        r.future = asyncio.get_running_loop().create_future()
        self._settle(self.board.examine(r.slots, now))
        return False

    def _of(self, pid: str) -> list[Request]:
        first = self.by_pid.get(pid)
        return [] if first is None else [first, *self._more.get(pid, ())]

    def _all(self) -> Iterator[Request]:
        yield from self.by_pid.values()
        for more in self._more.values():
            yield from more

    def _untrack(self, r: Request) -> None:
        pid = r.pid
        if self.by_pid.get(pid) is r:
            more = self._more.get(pid)
            if not more:
                del self.by_pid[pid]
                return
            self.by_pid[pid] = more.pop(0)
        else:
            more = self._more.get(pid)
            if more is None:
                return
            with contextlib.suppress(ValueError):
                more.remove(r)
        if not more:
            del self._more[pid]

    def _forget(self, r: Request) -> None:
        if r.gone:
            return
        r.gone = True
        self._untrack(r)
        if r.held and len(r.slots) == 1:
            # The common case, the short way: one resource given back, nobody waiting for it.
            slot = r.slots[0]
            key = self.board.keys.get(slot)
            if key is not None and not key.queue:
                key.held -= 1
                r.held = False
                if not key.held and key.next_at == -math.inf:
                    del self.board.keys[slot]
                return
        now = time.monotonic()
        waited = self.board.drop(r, now)
        if waited:
            self._settle(self.board.examine(waited, now))

    def _settle(self, outcome: tuple[list[Request], dict[Slot, float]]) -> None:
        granted, due = outcome
        for r in granted:
            r.since = time.time()  # it holds from now on
            if r.future is not None and not r.future.done():
                r.future.set_result(None)
        for slot, at in due.items():
            self._timer(slot, at - time.monotonic())

    def _timer(self, slot: Slot, delay: float) -> None:
        """Examine ``slot`` again in ``delay`` seconds (its head waits for its rate)."""
        at = time.monotonic() + delay
        current = self._timers.get(slot)
        if current is not None and current[0] <= at + 0.0005:
            return
        if current is not None:
            current[1].cancel()
        handle = asyncio.get_running_loop().call_later(max(0.0, delay), self._kick, slot)
        self._timers[slot] = (at, handle)

    def _kick(self, slot: Slot) -> None:
        self._timers.pop(slot, None)
        self._settle(self.board.examine([slot], time.monotonic()))


def describe(limits: Mapping[str, LimitSpec], rows: Iterable[SlotRow]) -> list[ResourceLimit]:
    """Each configured limit with its keys in use or waited for (sorted), from slot rows."""
    keys: dict[Slot, ResourceKey] = {}
    for row in sorted(rows, key=lambda x: (x.resource, x.key, x.since)):
        entry = keys.setdefault((row.resource, row.key), ResourceKey(key=row.key, holders=[]))
        if row.held:
            holder = ResourceHolder(
                process_id=row.process_id, step=row.step, since=utc(row.since), node=row.node
            )
            entry.holders.append(holder)
        else:
            entry.waiting += 1
    described = []
    for name in sorted(limits.keys() | {limit for limit, _ in keys}):
        spec = limits.get(name)
        used = [k for (limit, _), k in sorted(keys.items()) if limit == name]
        described.append(
            ResourceLimit(
                resource=name,
                concurrency=None if spec is None else spec.concurrency,
                rate=None if spec is None else spec.rate_text,
                in_use=sum(len(k.holders) for k in used),
                waiting=sum(k.waiting for k in used),
                keys=used,
            )
        )
    return described


# -- several nodes on one database ----------------------------------------------------------


class ClusterLimiter(Limiter):
    """The limits of a cluster (PostgreSQL): the board is the table of slots every node
    shares. Requests and releases are written in batches, each batch one transaction that
    grants whatever it frees (for any node) and notifies the nodes it granted; a dead node's
    slots go with its lease."""

    #: Seconds between retries after the database refused a batch.
    RETRY = 1.0

    def __init__(self, limits: Limits, table: SlotTable, every: float) -> None:
        super().__init__(limits)
        self.table = table
        self.every = every
        self._new: list[Request] = []
        self._gone: list[int] = []
        self._kicks: set[Slot] = set()
        self._sweep = True
        #: This node's requests written to the table, by number.
        self.mine: dict[int, Request] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        self.table.on_granted(self._granted_elsewhere)
        self._tasks = [
            asyncio.create_task(self._writer(), name="orchd limits"),
            asyncio.create_task(self._sweeper(), name="orchd limits sweep"),
        ]

    async def close(self) -> None:
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for pid in list(self.by_pid):
            self.release_process(pid)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        try:
            # Whatever this node has in the table goes, and its keys' next waiters with it.
            await self._write([], [], set(), sweep=False, leaving=True)
        except StoreError as exc:
            log.warning(
                "limits: this node's slots were not freed (they go with its lease): %s", exc
            )

    def _take(self, r: Request) -> bool:
        # Not shown as blocked until the table says what it waits for (or grants it).
        r.future = asyncio.get_running_loop().create_future()
        self._new.append(r)
        self._wake.set()
        return False

    def _forget(self, r: Request) -> None:
        if r.gone:
            return
        r.gone = True
        self._untrack(r)
        if r.id:
            self.mine.pop(r.id, None)
            self._gone.append(r.id)
            self._wake.set()
        else:
            with contextlib.suppress(ValueError):
                self._new.remove(r)  # not written yet (or being written: see _write)

    def reconfigured(self) -> None:
        self._kicks.update(s for r in self.mine.values() if r.waiting for s in r.slots)
        self._wake.set()

    def _kick(self, slot: Slot) -> None:
        self._timers.pop(slot, None)
        self._kicks.add(slot)
        self._wake.set()

    async def blocked(self, pids: Iterable[str]) -> dict[str, BlockedOn]:
        wanted = list(pids)
        found = await super().blocked(wanted)
        others = [p for p in wanted if p not in found and p not in self.by_pid]
        if others and self.limits():  # without limits, nobody waits: no need to ask
            for pid, (resource, key, since) in (await self.table.blocked(others)).items():
                found[pid] = BlockedOn(resource=resource, key=key, since=utc(since))
        return found

    async def report(self) -> list[ResourceLimit]:
        # This node's rows as it knows them now: a release is written a moment after the
        # commit that frees the slot, and a process that has completed holds nothing.
        rows = [
            row
            for row in await self.table.rows()
            if row.incarnation != self.table.incarnation or row.request in self.mine
        ]
        return describe(self.limits(), rows)

    # -- the writer -----------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            new, self._new = [r for r in self._new if not r.gone], []
            gone, self._gone = self._gone, []
            kicks, self._kicks = self._kicks, set()
            sweep, self._sweep = self._sweep, False
            try:
                await self._write(new, gone, kicks, sweep)
            except Exception as exc:
                if isinstance(exc, StoreError):
                    log.warning("limits: the database refused a batch, trying again: %s", exc)
                else:
                    log.exception("limits: a batch failed, trying again")
                for r in new:
                    if r.id:
                        self.mine.pop(r.id, None)
                        r.id = 0
                self._new[:0] = [r for r in new if not r.gone]
                self._gone[:0] = gone
                self._kicks |= kicks
                self._sweep |= sweep
                await asyncio.sleep(self.RETRY)
                self._wake.set()

    async def _write(
        self,
        new: list[Request],
        gone: list[int],
        kicks: set[Slot],
        sweep: bool,
        leaving: bool = False,
    ) -> None:
        """One transaction: write what changed, then grant what it freed, for any node."""
        async with self.table.transaction() as tx:
            now = tx.now
            touched = await self._apply(tx, new, gone, sweep, leaving) | kicks
            if not touched:
                return
            board, requests = await _load(tx, touched, self.limits)
            granted, due = await _decide(tx, board, touched, now)
            elsewhere: dict[tuple[str, str], list[int]] = {}
            for g in granted:
                if g.node is not None and g.life is not None and g.id not in self.mine:
                    elsewhere.setdefault((g.node, g.life), []).append(g.id)
            for (node, life), numbers in elsewhere.items():
                await tx.notify(node, life, numbers)
        # Committed: this node's granted requests go; the others' nodes were notified.
        self._granted([g.id for g in granted])
        for number, request in requests.items():
            mine = self.mine.get(number)
            if mine is not None and mine.waiting:
                mine.blocked = request.blocked or board.blocker(request, now)[0]
        for r in new:
            if r.gone and r.id:
                self._gone.append(r.id)  # abandoned while it was being written
                self._wake.set()
        for slot, at in due.items():
            self._timer(slot, at - now)

    async def _apply(
        self, tx: SlotTx, new: list[Request], gone: list[int], sweep: bool, leaving: bool
    ) -> set[Slot]:
        """Write the batch's changes; answers the keys they touched."""
        touched: set[Slot] = set()
        if gone:
            touched.update(await tx.delete(gone))
        if leaving:
            touched.update(await tx.delete_own())
        if sweep:
            touched.update(await tx.delete_dead())
            waiting = [i for i, r in self.mine.items() if r.waiting]
            if waiting:
                # Grants whose notification went missing (a lost connection), and keys whose
                # rate timer was another node's, that died.
                self._granted(await tx.held(waiting))
                touched.update(s for r in self.mine.values() if r.waiting for s in r.slots)
        if new:
            numbers = await tx.insert([(r.pid, r.step, r.slots) for r in new])
            for r, number in zip(new, numbers, strict=True):
                r.id = number
                self.mine[number] = r
                touched.update(r.slots)
        return touched

    def _granted(self, numbers: Iterable[int]) -> None:
        for number in numbers:
            r = self.mine.get(number)
            if r is None or r.held:
                continue
            r.held = True
            r.blocked = None
            r.since = time.time()
            if r.future is not None and not r.future.done():
                r.future.set_result(None)

    def _granted_elsewhere(self, numbers: list[int]) -> None:
        """Another node's batch granted these requests of ours."""
        self._granted(numbers)

    async def _sweeper(self) -> None:
        """Now and then: free the slots of nodes whose lease lapsed (and of this node's
        previous life), and catch a grant whose notification went missing."""
        while True:
            await asyncio.sleep(self.every)
            if self.limits():  # a node with no limits has nothing to free or to wait for
                self._sweep = True
                self._wake.set()


async def _decide(
    tx: SlotTx, board: Board, touched: set[Slot], now: float
) -> tuple[list[Request], dict[Slot, float]]:
    """Grant on the board what may go now, and write it: the grants and the rates' times."""
    before = {slot: key.next_at for slot, key in board.keys.items()}
    granted, due = board.examine(touched, now)
    if granted:
        await tx.grant([g.id for g in granted])
    rates = {
        slot: key.next_at
        for slot, key in board.keys.items()
        if key.next_at != before.get(slot, -math.inf) and math.isfinite(key.next_at)
    }
    if rates:
        await tx.set_rates(rates)
    return granted, due


async def _load(tx: SlotTx, touched: set[Slot], limits: Limits) -> tuple[Board, dict[int, Request]]:
    """A board of the keys ``touched`` as the table has them now, with every key a waiting
    request among them also names (it goes only when all of its keys let it)."""
    rows: dict[tuple[int, str, str], SlotRow] = {}
    wanted, keys_read, requests_read = set(touched), set[Slot](), set[int]()
    while True:
        keys = wanted - keys_read
        if keys:
            keys_read |= keys
            for row in await tx.rows(sorted(keys)):
                rows[(row.request, row.resource, row.key)] = row
        waiting = {row.request for row in rows.values() if not row.held} - requests_read
        if waiting:
            requests_read |= waiting
            for row in await tx.rows_of(sorted(waiting)):
                rows[(row.request, row.resource, row.key)] = row
                wanted.add((row.resource, row.key))
        if not wanted - keys_read:
            break
    requests: dict[int, Request] = {}
    for (number, resource, key), row in sorted(rows.items()):
        r = requests.get(number)
        if r is None:
            r = requests[number] = Request(
                (),
                row.process_id,
                row.step,
                row.since,
                id=number,
                node=row.node,
                life=row.incarnation,
                held=row.held,
            )
        r.slots = (*r.slots, (resource, key))
    board = Board(limits)
    for r in requests.values():
        if r.held:
            board.hold(r)
        else:
            board.queue(r)  # in request order: first come first served
    spec = limits()
    rated = [slot for slot in board.keys if (s := spec.get(slot[0])) is not None and s.rate]
    for slot, at in (await tx.rates(rated)).items() if rated else ():
        board.key(slot).next_at = at
    return board, requests
