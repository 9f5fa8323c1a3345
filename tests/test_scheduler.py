"""The scheduler against a real Engine on a SQLite file (README "The daemon": schedules)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from support.common import Open, engine_fixture, wait_until

from orchd import Engine
from orchd.config import Config, ScheduleConfig, schedule_specs
from orchd.engine.scheduler import Scheduler, following, latest_missed, next_fire_time
from orchd.errors import ConfigError, ScheduleNotFound, ScheduleRunning
from orchd.settings import ScheduleSpec
from orchd.store.base import ScheduleRun
from orchd.testing import Gate

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0  # a fixed "now" for the fake clock
AMS = ZoneInfo("Europe/Amsterdam")


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cfg(workflow: str = "quick_task", **kw: Any) -> ScheduleSpec:
    """One entry as a config file would give it, parsed the way the daemon parses it."""
    if "cron" not in kw:
        kw.setdefault("every", "1h")
    [spec] = schedule_specs(Config(schedules=[ScheduleConfig(workflow=workflow, **kw)]))
    return spec


# The factory opens the gate at teardown: a slow task finishes instead of being interrupted.
engine = engine_fixture("sched_flows", grace_period=0.5)


async def runs(engine: Engine, name: str, status: str | None = None) -> list[str]:
    """Ids of the processes the schedule started, oldest first."""
    sql = "SELECT id FROM processes WHERE reporter = ?"
    params: list[Any] = [f"scheduler:{name}"]
    if status is not None:
        sql += " AND status = ?"
        params.append(status)
    return [r[0] for r in await engine.store.fetchall(sql + " ORDER BY rowid", params)]


async def fire_times(engine: Engine, name: str) -> list[tuple[float, str | None]]:
    rows = await engine.store.fetchall(
        "SELECT fire_at, process_id FROM schedule_runs WHERE name = ? ORDER BY fire_at", (name,)
    )
    return [(r[0], r[1]) for r in rows]


def epoch(*args: int, tz: ZoneInfo = AMS) -> float:
    return datetime(*args, tzinfo=tz).timestamp()  # type: ignore[misc]


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# -- fire-time arithmetic (pure) ----------------------------------------------------------


def test_cron_next_fire_time_follows_the_zone_across_dst() -> None:
    daily = cfg(cron="30 2 * * *", timezone="Europe/Amsterdam")
    # Spring forward: 02:30 does not exist on 2024-03-31; it runs at 03:00 CEST, once.
    t = next_fire_time(daily, epoch(2024, 3, 30, 12, 0))
    assert utc(t) == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)
    assert utc(next_fire_time(daily, t)) == datetime(2024, 4, 1, 0, 30, tzinfo=UTC)
    # Fall back: 02:30 happens twice on 2024-10-27; it runs at the first one only.
    t = next_fire_time(daily, epoch(2024, 10, 26, 12, 0))
    assert utc(t) == datetime(2024, 10, 27, 0, 30, tzinfo=UTC)
    assert utc(next_fire_time(daily, t)) == datetime(2024, 10, 28, 1, 30, tzinfo=UTC)
    # An hourly job runs every real hour, the repeated one included.
    hourly = cfg(cron="0 * * * *", timezone="Europe/Amsterdam")
    t = epoch(2024, 10, 27, 1, 30)
    seen = []
    for _ in range(3):
        t = next_fire_time(hourly, t)
        seen.append(utc(t).hour)
    assert seen == [0, 1, 2]


def test_cron_in_utc_and_weekdays() -> None:
    weekdays = cfg(cron="0 9 * * 1-5")  # UTC
    friday_evening = epoch(2024, 6, 7, 18, 0, tz=ZoneInfo("UTC"))
    assert utc(next_fire_time(weekdays, friday_evening)) == datetime(2024, 6, 10, 9, tzinfo=UTC)


def test_interval_stays_anchored_and_coalesces_missed_ticks() -> None:
    every = cfg(every="5m")
    assert next_fire_time(every, T0) == T0 + 300
    # A tick handled late does not shift the grid.
    assert following(every, T0, T0 + 3) == T0 + 300
    # Ticks missed while busy collapse into the next one ahead of now.
    assert following(every, T0, T0 + 1000) == T0 + 1200
    assert latest_missed(every, T0, T0 + 1000) == T0 + 900
    daily = cfg(cron="0 6 * * *", timezone="Europe/Amsterdam")
    missed = latest_missed(daily, epoch(2024, 5, 1, 6, 0), epoch(2024, 5, 4, 7, 0))
    assert missed == epoch(2024, 5, 4, 6, 0)


# -- validation ---------------------------------------------------------------------------


async def test_validate_rejects_unknown_and_non_system_workflows(engine: Engine) -> None:
    with pytest.raises(ConfigError, match=r"^schedules\[1\]\.workflow: unknown workflow 'nope'"):
        Scheduler(engine, [cfg(), cfg("nope")])
    with pytest.raises(ConfigError, match=r"^schedules\[0\]\.workflow: 'create_thing' is a CREATE"):
        Scheduler(engine, [cfg("create_thing")])
    with pytest.raises(ConfigError, match=r"^schedules\[1\]\.name: duplicate"):
        Scheduler(engine, [cfg(), cfg()])
    sched = Scheduler(engine, [cfg(), cfg("slow_task")])
    sched.validate()
    with pytest.raises(ConfigError, match=r"schedules\[0\]\.workflow"):
        sched.validate([cfg("create_thing")])


# -- the running scheduler ----------------------------------------------------------------


async def test_interval_fires_repeatedly_on_its_grid(engine: Engine) -> None:
    sched = Scheduler(engine, [cfg(every="200ms", name="q", input={"label": "x"})])
    await sched.start()
    try:
        await wait_until(lambda: _at_least(runs(engine, "q", "completed"), 3), "three runs of q")
    finally:
        await sched.stop()
    assert sched.runs_total >= 3
    process = await engine.get((await runs(engine, "q"))[0])
    assert process.state["seen_input"] == "x"
    assert process.reporter == "scheduler:q"
    times = [t for t, _ in await fire_times(engine, "q")]
    for a, b in zip(times, times[1:], strict=False):
        ticks = (b - a) / 0.2
        assert round(ticks) >= 1 and abs(ticks - round(ticks)) < 1e-3


async def test_a_cron_schedule_fires_on_whole_seconds(engine: Engine) -> None:
    sched = Scheduler(engine, [cfg(cron="* * * * * *", name="c", timezone="Europe/Amsterdam")])
    await sched.start()
    try:
        await wait_until(lambda: _at_least(runs(engine, "c", "completed"), 1), "a run of c")
    finally:
        await sched.stop()
    fire_at, _ = (await fire_times(engine, "c"))[0]
    assert fire_at == int(fire_at)


async def _at_least(ids: Awaitable[list[str]], n: int) -> bool:
    return len(await ids) >= n


async def test_a_slow_run_is_never_overlapped_and_skipped_ticks_are_counted(
    engine: Engine, gate: Gate
) -> None:
    sched = Scheduler(engine, [cfg("slow_task", every="200ms", name="slow")])
    await sched.start()
    try:

        async def skipped_twice() -> bool:
            return (await sched.entries())[0].skipped >= 2

        await wait_until(skipped_twice, "two ticks skipped")
        first = await runs(engine, "slow")
        assert len(first) == 1
        info = (await sched.entries())[0]
        assert info.running and info.last_run is not None
        assert info.last_run.process_id == first[0]
        gate.open()
        await engine.wait(first[0])
        await wait_until(
            lambda: _at_least(runs(engine, "slow", "completed"), 2), "two runs of slow"
        )
    finally:
        await sched.stop()
    assert sched.skipped_total >= 2
    row = await engine.store.fetchone("SELECT skipped FROM schedules WHERE name = 'slow'")
    assert row is not None and row[0] == sched.skipped_total
    skipped = [t for t, pid in await fire_times(engine, "slow") if pid is None]
    assert len(skipped) == sched.skipped_total


async def test_reload_wakes_the_sleeping_loop(engine: Engine) -> None:
    sched = Scheduler(engine, [cfg(every="1h", name="slowpoke")])
    await sched.start()
    try:
        # The loop is asleep on its hour-long wait once it waits for its wake event.
        await wait_until(lambda: sched._wake._waiters, "the loop waiting an hour", every=0)
        changes = await sched.reload([cfg(every="1h", name="slowpoke"), cfg(every="100ms")])
        assert changes == ["added quick_task"]
        await wait_until(
            lambda: _at_least(runs(engine, "quick_task", "completed"), 1), "a run of quick_task"
        )
    finally:
        await sched.stop()
    assert await runs(engine, "slowpoke") == []


async def test_disabled_entries_are_listed_but_never_fire(engine: Engine) -> None:
    clock = Clock(T0)
    sched = Scheduler(engine, [cfg(every="1m", enabled=False)], clock=clock)
    await sched.load()
    clock.now += 3600
    await sched.run_pending()
    [info] = await sched.entries()
    assert not info.enabled and info.next_run is None and info.last_run is None
    assert await runs(engine, "quick_task") == []


async def test_jitter_delays_the_run_but_not_the_recorded_fire_time(engine: Engine) -> None:
    clock = Clock(T0)
    sched = Scheduler(engine, [cfg(every="1m", jitter="30s")], clock=clock)
    await sched.load()
    assert (await sched.entries())[0].next_run == utc(T0 + 60)
    clock.now = T0 + 59
    await sched.run_pending()
    assert await runs(engine, "quick_task") == []
    clock.now = T0 + 90  # the latest the jitter can put it
    await sched.run_pending()
    [pid] = await runs(engine, "quick_task")
    assert await fire_times(engine, "quick_task") == [(T0 + 60, pid)]
    assert (await sched.entries())[0].next_run == utc(T0 + 120)


# -- run_now ------------------------------------------------------------------------------


async def test_run_now_starts_a_process_and_conflicts_while_it_runs(
    engine: Engine, gate: Gate
) -> None:
    clock = Clock(T0)
    sched = Scheduler(engine, [cfg("slow_task", every="1h", name="s")], clock=clock)
    await sched.load()
    planned = (await sched.entries())[0].next_run
    pid = await sched.run_now("s")
    info = (await sched.entries())[0]
    assert info.running and info.last_run is not None and info.last_run.process_id == pid
    assert info.next_run == planned
    with pytest.raises(ScheduleRunning) as exc:
        await sched.run_now("s")
    assert exc.value.status == 409
    with pytest.raises(ScheduleNotFound):
        await sched.run_now("nope")
    gate.open()
    assert (await engine.wait(pid)).status == "completed"
    clock.now += 1
    again = await sched.run_now("s")
    assert again != pid and (await engine.wait(again)).status == "completed"
    assert sched.runs_total == 2
    info = (await sched.entries())[0]
    assert info.last_run is not None and info.last_run.status == "completed"
    assert not info.running


async def test_a_scheduled_tick_is_skipped_while_a_manual_run_is_going(engine: Engine) -> None:
    clock = Clock(T0)
    sched = Scheduler(engine, [cfg("slow_task", every="1m", name="s")], clock=clock)
    await sched.load()
    await sched.run_now("s")
    clock.now = T0 + 60
    await sched.run_pending()
    assert len(await runs(engine, "s")) == 1
    assert sched.skipped_total == 1 and (await sched.entries())[0].skipped == 1


# -- restarts -----------------------------------------------------------------------------


async def test_missed_fire_times_run_once_within_grace_and_are_skipped_beyond(
    open_engine: Open, caplog: pytest.LogCaptureFixture
) -> None:
    config = [cfg(every="1m", name="m", misfire_grace="30s")]
    engine = await open_engine("sched_flows")
    sched = Scheduler(engine, config, clock=Clock(T0))
    await sched.load()
    assert (await sched.entries())[0].next_run == utc(T0 + 60)

    # Down for five ticks; the last one is 10 s old: it runs once, the others coalesce.
    engine = await open_engine("sched_flows")
    sched = Scheduler(engine, config, clock=Clock(T0 + 310))
    await sched.load()
    assert (await sched.entries())[0].next_run == utc(T0 + 300)
    await sched.run_pending()
    await sched.run_pending()
    [pid] = await runs(engine, "m")
    assert (await engine.wait(pid)).status == "completed"
    assert await fire_times(engine, "m") == [(T0 + 300, pid)]
    assert (await sched.entries())[0].next_run == utc(T0 + 360)

    # Down again; the missed tick is 45 s old, beyond the grace: skipped and logged.
    engine = await open_engine("sched_flows")
    caplog.set_level(logging.INFO, logger="orchd.engine.scheduler")
    sched = Scheduler(engine, config, clock=Clock(T0 + 405))
    await sched.load()
    await sched.run_pending()
    assert await runs(engine, "m") == [pid]
    [info] = await sched.entries()
    assert info.next_run == utc(T0 + 420)
    assert info.last_run is not None and info.last_run.process_id == pid
    assert info.last_run.status == "completed" and info.skipped == 0
    assert "skipping missed fire time" in caplog.text


async def test_a_replayed_fire_time_does_not_run_twice(engine: Engine) -> None:
    # As if a previous run claimed T0 and then crashed before moving the schedule on.
    op = ScheduleRun(name="r", fire_at=T0, process_id=None, next_fire_at=T0)
    assert await engine.store.write(op) is True
    assert await engine.store.write(op) is False
    sched = Scheduler(engine, [cfg(every="1h", name="r")], clock=Clock(T0 + 1))
    await sched.load()
    assert (await sched.entries())[0].next_run == utc(T0)
    await sched.run_pending()
    assert await runs(engine, "r") == []
    assert sched.runs_total == 0
    assert (await sched.entries())[0].next_run == utc(T0 + 3600)


async def test_a_run_started_but_not_recorded_before_a_crash_is_adopted(engine: Engine) -> None:
    # The fire time was claimed and the process committed; then the daemon died before the
    # scheduler recorded the process's id.
    claim = ScheduleRun(name="s", fire_at=T0 - 60, process_id=None, next_fire_at=T0)
    await engine.store.write(claim)
    pid = await engine.start("slow_task", {}, reporter="scheduler:s")
    sched = Scheduler(engine, [cfg("slow_task", every="1m", name="s")], clock=Clock(T0))
    await sched.load()
    [info] = await sched.entries()
    assert info.running and info.last_run is not None and info.last_run.process_id == pid
    with pytest.raises(ScheduleRunning):
        await sched.run_now("s")


# -- reload -------------------------------------------------------------------------------


async def test_reload_adds_removes_and_changes_keeping_state(engine: Engine) -> None:
    clock = Clock(T0)
    sched = Scheduler(engine, [cfg(name="a"), cfg(name="b")], clock=clock)
    await sched.load()
    pid = await sched.run_now("a")
    await engine.wait(pid)
    changes = await sched.reload([cfg(name="a", every="1m"), cfg("slow_task", name="c")])
    assert sorted(changes) == ["added c", "changed a: every 1h -> every 1m", "removed b"]
    a, c = await sched.entries()
    assert (a.name, c.name) == ("a", "c")
    assert a.last_run is not None and a.last_run.process_id == pid
    assert a.next_run == utc(T0 + 60)
    assert c.workflow == "slow_task" and c.last_run is None
    with pytest.raises(ScheduleNotFound):
        await sched.run_now("b")

    assert await sched.reload([cfg(name="a", every="1m"), cfg("slow_task", name="c")]) == []
    with pytest.raises(ConfigError, match=r"schedules\[1\]\.workflow"):
        await sched.reload([cfg(name="a"), cfg("create_thing", name="x")])
    assert [e.name for e in await sched.entries()] == ["a", "c"]
    changes = await sched.reload(
        [cfg(name="a", every="1m", enabled=False, input={"label": "y"}), cfg("slow_task", name="c")]
    )
    assert changes == ["changed a: input {} -> {'label': 'y'}, enabled True -> False"]
    assert (await sched.entries())[0].next_run is None


async def test_reload_names_parsed_durations_and_the_zone_it_changed(engine: Engine) -> None:
    sched = Scheduler(engine, [cfg(name="a", every="1m")], clock=Clock(T0))
    await sched.load()
    changes = await sched.reload(
        [cfg(name="a", every="1m", jitter="1.5s", misfire_grace="1h", timezone="Europe/Amsterdam")]
    )
    assert changes == [
        "changed a: jitter 0s -> 1.5s, timezone 'UTC' -> 'Europe/Amsterdam',"
        " misfire_grace 300s -> 3600s"
    ]
