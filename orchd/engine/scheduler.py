"""The internal scheduler: runs SYSTEM workflows (tasks) on an interval or a cron expression.

One asyncio task sleeps until the earliest due entry (a heap), fires it and sleeps again;
`reload` wakes it early (`run_now` leaves the plan as it is). Nothing polls the database: each
tick reads one process row (is the previous run still going?) and writes a few rows.

A run of a fire time is at most once. Before starting the process the scheduler claims the
fire time (a unique ``schedule_runs`` row, committed together with the next fire time); only then
does it start the process and record its id. A crash after the claim but before the process
commit loses that one tick; a crash after the process commit but before its id is recorded is
repaired at the next start, which adopts the newest process this schedule started
(reporter ``scheduler:<name>``) so the overlap check still sees it. Starting first and recording
afterwards would instead run the tick twice after such a crash.

A schedule is *running* while its last process is created, running, waiting (a retrystep will
be retried on its own) or awaiting_callback (an external system will answer): it is making
progress without anyone's help, so another run would overlap it. A suspended or failed process
needs a person; it does not hold up the schedule, which would otherwise stop for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cronsim import CronSim

from orchd.errors import ConfigError, OrchdError, ScheduleNotFound, ScheduleRunning
from orchd.model import LastRun, ProcessStatus, ScheduleInfo, Target
from orchd.settings import ScheduleSpec
from orchd.store.base import ScheduleClaim, SchedulePlan, ScheduleRun, ScheduleStarted

if TYPE_CHECKING:
    from orchd.engine import Engine

log = logging.getLogger("orchd.engine.scheduler")
P = ProcessStatus

#: Statuses in which the last run blocks the next one (see the module docstring).
RUNNING = frozenset({P.CREATED, P.RUNNING, P.WAITING, P.AWAITING_CALLBACK, P.AWAITING_CHILDREN})

#: The longest single sleep: the loop sleeps on the monotonic clock but fire times are wall-clock
#: times, so it looks again now and then in case the wall clock was stepped (NTP, suspend).
MAX_SLEEP = 60.0


def next_fire_time(config: ScheduleSpec, after: float) -> float:
    """The first fire time strictly after ``after`` (epoch seconds), ignoring jitter."""
    every = config.every
    if every is not None:
        return after + every
    assert config.cron is not None
    start = datetime.fromtimestamp(after, config.timezone)
    try:
        return next(CronSim(config.cron, start)).timestamp()
    except StopIteration:
        raise ValueError(f"cron {config.cron!r} never fires") from None


def following(config: ScheduleSpec, fire_at: float, now: float) -> float:
    """The fire time after ``fire_at`` that is still ahead of ``now``; missed ones coalesce.

    An interval stays anchored at ``fire_at`` (``fire_at + k * every``), so it never drifts.
    """
    every = config.every
    if every is not None:
        steps = max(1, math.floor((now - fire_at) / every) + 1)
        return fire_at + steps * every
    return next_fire_time(config, max(fire_at, now))


def latest_missed(config: ScheduleSpec, first: float, now: float) -> float:
    """The last fire time in ``[first, now]``, given that ``first <= now`` was missed."""
    every = config.every
    if every is not None:
        return first + math.floor((now - first) / every) * every
    assert config.cron is not None
    start = datetime.fromtimestamp(now, config.timezone)
    latest = next(CronSim(config.cron, start, reverse=True)).timestamp()
    return max(latest, first)


def _at(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


@dataclass
class _Entry:
    config: ScheduleSpec
    #: The next fire time (stored, shown) and when it is actually due (plus jitter).
    next_fire: float | None = None
    due: float = math.inf
    last_process_id: str | None = None
    last_status: ProcessStatus | None = None
    last_fire: float | None = None
    skipped: int = 0
    #: Bumped whenever ``due`` changes, so stale heap items are recognised and dropped.
    version: int = 0
    removed: bool = False

    @property
    def name(self) -> str:
        return self.config.name

    def set_next(self, fire_at: float | None) -> None:
        self.next_fire = fire_at if self.config.enabled else None
        jitter = self.config.jitter
        delay = random.uniform(0, jitter) if jitter > 0 else 0.0
        self.due = math.inf if self.next_fire is None else self.next_fire + delay
        self.version += 1


class Scheduler:
    """Fires the configured schedules on an Engine; see the module docstring for the rules."""

    def __init__(
        self,
        engine: Engine,
        schedules: Sequence[ScheduleSpec],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.validate(schedules)
        self._entries: dict[str, _Entry] = {s.name: _Entry(s) for s in schedules}
        self._heap: list[tuple[float, int, str]] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one tick, run_now or reload at a time
        self._task: asyncio.Task[None] | None = None
        self._loaded = False
        #: Counters for metrics since this scheduler was made (run_now runs count as runs).
        self.runs_total = 0
        self.skipped_total = 0
        self._runs: dict[str, int] = {}

    def validate(self, schedules: Sequence[ScheduleSpec] | None = None) -> None:
        """Raise ConfigError (``schedules[N].key: problem``) unless every entry can run here.

        Checks the given list, or the current entries when none is given, against what the
        config cannot know: the workflow is loaded and is a SYSTEM task. Timing was checked
        when the specs were built (`orchd.config.schedule_specs`); names are checked again
        because specs may be made without a config.
        """
        given = [e.config for e in self._entries.values()] if schedules is None else schedules
        seen: set[str] = set()
        for i, entry in enumerate(given):
            wf = self.engine.workflows.get(entry.workflow)
            if wf is None:
                raise ConfigError(f"schedules[{i}].workflow: unknown workflow {entry.workflow!r}")
            if wf.target is not Target.SYSTEM:
                raise ConfigError(
                    f"schedules[{i}].workflow: {entry.workflow!r} is a {wf.target} workflow;"
                    " only SYSTEM workflows (tasks) can be scheduled"
                )
            if entry.name in seen:
                raise ConfigError(f"schedules[{i}].name: duplicate schedule name {entry.name!r}")
            seen.add(entry.name)

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Scheduler:
        """``async with Scheduler(...)``: start on enter, stop on exit."""
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Load persisted state, settle missed fire times, and start the timer task."""
        if self._task is None:
            await self.load()
            self._task = asyncio.create_task(self._loop(), name="orchd scheduler")

    async def stop(self) -> None:
        """Stop the timer task; a tick in progress finishes first (it holds the lock)."""
        task, self._task = self._task, None
        if task is not None:
            async with self._lock:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def load(self) -> None:
        """Read the ``schedules`` table and plan each entry's next fire time (``start`` does this).

        A fire time that passed while the daemon was down runs once now when the latest one is
        within ``misfire_grace``, however many were missed; otherwise it is skipped and logged.
        """
        now = self.clock()
        by_name = {row.name: row for row in await self.engine.store.schedules()}
        for entry in self._entries.values():
            persisted = None
            if (row := by_name.get(entry.name)) is not None:
                entry.last_process_id, entry.last_fire = row.last_process_id, row.last_fire_at
                persisted, entry.skipped = row.next_fire_at, row.skipped
                await self._adopt(entry)
            self._plan(entry, persisted, now)
        await self._refresh(list(self._entries.values()))
        await self._persist(list(self._entries.values()))
        self._loaded = True
        self._rebuild_heap()

    async def _adopt(self, entry: _Entry) -> None:
        """Take over a process started right before a crash that lost its record."""
        row = await self.engine.store.latest_started_by(
            f"scheduler:{entry.name}", entry.last_process_id
        )
        if row is not None:
            log.warning("schedule=%s adopting unrecorded run process=%s", entry.name, row.id)
            entry.last_process_id, entry.last_fire = row.id, row.created_at

    def _plan(self, entry: _Entry, persisted: float | None, now: float) -> None:
        config = entry.config
        if persisted is None or not config.enabled:
            entry.set_next(next_fire_time(config, now))
        elif persisted > now:
            # Keep the plan made before the restart, unless the config now asks for sooner.
            fresh = next_fire_time(config, now)
            entry.set_next(fresh if config.cron is not None else min(persisted, fresh))
        else:
            missed = latest_missed(config, persisted, now)
            if now - missed <= config.misfire_grace:
                log.info("schedule=%s running missed fire time %s once", entry.name, _at(missed))
                entry.set_next(missed)
            else:
                log.warning(
                    "schedule=%s skipping missed fire time %s (older than misfire_grace %gs)",
                    entry.name,
                    _at(missed),
                    config.misfire_grace,
                )
                entry.set_next(following(config, missed, now))

    async def _persist(self, entries: list[_Entry]) -> None:
        # A restart then keeps the plan: an interval never restarts its count from zero.
        plan = {e.name: e.next_fire for e in entries if e.next_fire is not None}
        if plan:
            await self.engine.store.write(SchedulePlan(next_fire_at=plan))

    def _rebuild_heap(self) -> None:
        self._heap = [(e.due, e.version, e.name) for e in self._entries.values()]
        heapq.heapify(self._heap)
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.run_pending()
            except Exception:
                log.exception("scheduler tick failed")
            delay = MAX_SLEEP
            if self._heap:
                delay = min(MAX_SLEEP, max(0.0, self._heap[0][0] - self.clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    # -- firing ---------------------------------------------------------------------------

    async def run_pending(self) -> None:
        """Fire every entry that is due by the clock (the timer task calls this)."""
        if not self._loaded:
            await self.load()
        while self._heap:
            due, version, name = self._heap[0]
            entry = self._entries.get(name)
            if entry is None or entry.version != version:
                heapq.heappop(self._heap)  # removed or re-planned since it was pushed
                continue
            now = self.clock()
            if due > now:
                return
            heapq.heappop(self._heap)
            try:
                await self._fire(entry, version, now)
            except OrchdError as exc:
                log.error("schedule=%s tick failed: %s", name, exc)
            except Exception:
                log.exception("schedule=%s tick failed", name)
            finally:
                if entry.version == version and not entry.removed:
                    # It failed before planning the next tick: never retry one at once.
                    entry.set_next(following(entry.config, entry.next_fire or now, now))
                if not entry.removed:
                    heapq.heappush(self._heap, (entry.due, entry.version, entry.name))

    async def _fire(self, entry: _Entry, version: int, now: float) -> None:
        async with self._lock:
            fire_at = entry.next_fire
            if entry.removed or entry.version != version or fire_at is None:
                return  # reloaded while waiting for the lock
            next_fire = following(entry.config, fire_at, now)
            entry.set_next(next_fire)
            if await self._busy(entry):
                skip = ScheduleRun(
                    name=entry.name,
                    fire_at=fire_at,
                    process_id=None,
                    next_fire_at=next_fire,
                    skipped=True,
                )
                if await self.engine.store.write(skip):
                    entry.skipped += 1
                    self.skipped_total += 1
                    log.info(
                        "schedule=%s skipped tick %s: process=%s is still %s",
                        *(entry.name, _at(fire_at), entry.last_process_id, entry.last_status),
                    )
            elif await self.engine.store.write(
                ScheduleClaim(name=entry.name, fire_at=fire_at, next_fire_at=next_fire)
            ):
                await self._start(entry, fire_at)
            else:
                log.info("schedule=%s fire time %s already ran", entry.name, _at(fire_at))

    async def _busy(self, entry: _Entry) -> bool:
        if self.engine.node is not None:
            # In a cluster another node may have run the last fire time: its run counts.
            for row in await self.engine.store.schedules():
                if row.name == entry.name and row.last_process_id is not None:
                    entry.last_process_id, entry.last_fire = row.last_process_id, row.last_fire_at
        await self._refresh([entry])
        return entry.last_status in RUNNING

    async def _start(self, entry: _Entry, fire_at: float) -> str:
        config = entry.config
        pid = await self.engine.start(
            config.workflow, dict(config.input), reporter=f"scheduler:{entry.name}"
        )
        entry.last_process_id, entry.last_status, entry.last_fire = pid, P.CREATED, fire_at
        self.runs_total += 1
        self._runs[entry.name] = self._runs.get(entry.name, 0) + 1
        await self.engine.store.write(
            ScheduleStarted(name=entry.name, fire_at=fire_at, process_id=pid)
        )
        log.info("schedule=%s started process=%s workflow=%s", entry.name, pid, config.workflow)
        return pid

    async def _refresh(self, entries: list[_Entry]) -> None:
        """Read the status of each entry's last process, in one query."""
        pids = {e.last_process_id for e in entries if e.last_process_id is not None}
        if not pids:
            return
        statuses = await self.engine.store.statuses(sorted(pids))
        for e in entries:
            if e.last_process_id is not None:
                known = statuses.get(e.last_process_id)
                e.last_status = None if known is None else P(known)

    # -- the API --------------------------------------------------------------------------

    async def entries(self) -> list[ScheduleInfo]:
        """Every entry, disabled ones included, with its last run's current status."""
        await self._refresh(list(self._entries.values()))
        return [_info(e) for e in self._entries.values()]

    def run_counts(self) -> dict[str, int]:
        """Processes started per schedule since start-up (for metrics)."""
        return dict(self._runs)

    async def run_now(self, name: str) -> str:
        """Start the entry's workflow now and return the process id; the plan does not move.

        Raises ScheduleNotFound, or ScheduleRunning while its last run is unfinished.
        """
        entry = self._entries.get(name)
        if entry is None:
            raise ScheduleNotFound(f"no schedule named {name!r}")
        async with self._lock:
            if await self._busy(entry):
                raise ScheduleRunning(
                    f"schedule {name!r}: process {entry.last_process_id} is still"
                    f" {entry.last_status}"
                )
            return await self._start(entry, self.clock())

    async def reload(self, schedules: Sequence[ScheduleSpec]) -> list[str]:
        """Apply a new list of schedules; returns what changed, e.g. ``"added x"``.

        Unchanged entries keep their state and plan; a changed entry keeps its last run and
        skipped count and is planned afresh from now when its timing changed. Raises
        ConfigError (and changes nothing) when the new list does not validate.
        """
        self.validate(schedules)
        changes: list[str] = []
        async with self._lock:
            now = self.clock()
            old, new = self._entries, {s.name: s for s in schedules}
            replanned: list[_Entry] = []
            entries: dict[str, _Entry] = {}
            for key, config in new.items():
                entry = entries[key] = old.get(key) or _Entry(config)
                if key not in old:
                    changes.append(f"added {key}")
                    await self._load_one(entry)
                    replanned.append(entry)
                elif entry.config != config:
                    changes.append(f"changed {key}: {_diff(entry.config, config)}")
                    before, entry.config = entry.config, config
                    if any(getattr(before, f) != getattr(config, f) for f in _TIMING):
                        replanned.append(entry)
                    elif before.jitter != config.jitter:
                        entry.set_next(entry.next_fire)  # same fire time, new jitter
            for key, entry in old.items():
                if key not in new:
                    changes.append(f"removed {key}")
                    entry.removed = True
            self._entries = entries
            for entry in replanned:
                entry.set_next(next_fire_time(entry.config, now))
            await self._persist(replanned)
            self._rebuild_heap()
        if changes:
            log.info("schedules reloaded: %s", "; ".join(changes))
        return changes

    async def _load_one(self, entry: _Entry) -> None:
        """An added entry may have run before (removed and added back): keep its history."""
        for row in await self.engine.store.schedules():
            if row.name == entry.name:
                entry.last_process_id, entry.last_fire = row.last_process_id, row.last_fire_at
                entry.skipped = row.skipped


_TIMING = ("every", "cron", "timezone", "enabled")


def _info(e: _Entry) -> ScheduleInfo:
    last = None
    if e.last_process_id is not None and e.last_fire is not None:
        at = datetime.fromtimestamp(e.last_fire, UTC)
        last = LastRun(process_id=e.last_process_id, status=e.last_status, at=at)
    c = e.config
    return ScheduleInfo(
        name=e.name,
        workflow=c.workflow,
        every=c.every_text,
        cron=c.cron,
        timezone=c.timezone.key,
        enabled=c.enabled,
        running=e.last_status in RUNNING,
        last_run=last,
        next_run=_at(e.next_fire),
        skipped=e.skipped,
    )


def _diff(old: ScheduleSpec, new: ScheduleSpec) -> str:
    """What changed in an entry, e.g. ``every 5m -> every 1m, enabled True -> False``."""

    def when(c: ScheduleSpec) -> str:
        return f"every {c.every_text}" if c.every is not None else f"cron {c.cron!r}"

    def shown(name: str, c: ScheduleSpec) -> str:
        value = getattr(c, name)
        if name == "timezone":
            return repr(value.key)
        return f"{value:g}s" if name in ("jitter", "misfire_grace") else repr(value)

    parts = [f"{when(old)} -> {when(new)}"] if when(old) != when(new) else []
    for name in ("workflow", "input", "jitter", "timezone", "enabled", "misfire_grace"):
        if getattr(old, name) != getattr(new, name):
            parts.append(f"{name} {shown(name, old)} -> {shown(name, new)}")
    return ", ".join(parts)
