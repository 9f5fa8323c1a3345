"""What a new user tripped on, third round (issue 30 items 2, 4, 7 and 9 in part)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from operators3_flows import Flaky
from tests_support import settle

from orchd import Process
from orchd.model import StepRecord

Make = Callable[..., Any]


# -- item 2: a fork's record covers the whole fork ----------------------------------------------


def _fork_record(process: Process, name: str) -> StepRecord:
    [record] = [s for s in process.steps if s.name == name and s.status == "success"]
    return record


def _branch_records(process: Process, prefix: str) -> list[StepRecord]:
    return [s for s in process.steps if s.branch is not None and s.branch.startswith(prefix)]


def assert_covers(process: Process, fork: str, prefix: str) -> None:
    """The fork's record spans from its first branch step's start to its last one's end."""
    record = _fork_record(process, fork)
    inner = _branch_records(process, prefix)
    assert inner, f"no branch records under {prefix}"
    first = min(s.started_at for s in inner)
    last = max(s.finished_at for s in inner)
    assert record.started_at <= first, (
        f"{fork} started {(record.started_at - first).total_seconds():.3f} s after its first "
        "branch step"
    )
    assert record.finished_at >= last
    assert record.finished_at - record.started_at >= last - first


async def test_a_fork_whose_branch_waited_for_a_retry_covers_the_wait(
    engine_factory: Make,
) -> None:
    flaky = Flaky()
    flaky.flaps[2] = 2  # item 2 waits twice for its automatic retry
    engine = await engine_factory(["operators3_flows"], resources={Flaky: flaky}, retry_delay=0.1)
    process = await engine.wait(await engine.start("fan_poll", {"items": [1, 2, 3]}))
    process = await settle(engine, process.id, "completed", "failed")
    assert process.status == "completed", process.error
    waits = [s for s in process.steps if s.status == "waiting"]
    assert len(waits) == 2
    assert_covers(process, "Poll items", "Poll items/")


async def test_a_forks_start_survives_a_restart(engine_factory: Make) -> None:
    flaky = Flaky()
    flaky.failing.add(2)
    first = await engine_factory(
        ["operators3_flows"], name="fork.db", resources={Flaky: flaky}, grace_period=0.1
    )
    pid = await first.start("fan_touch", {"items": [1, 2, 3]})
    process = await settle(first, pid, "failed")
    started = min(s.started_at for s in _branch_records(process, "Touch items/"))
    await first.close()
    flaky.failing.clear()
    second = await engine_factory(["operators3_flows"], name="fork.db", resources={Flaky: flaky})
    await second.retry(pid)
    process = await settle(second, pid, "completed", "failed")
    assert process.status == "completed", process.error
    assert _fork_record(process, "Touch items").started_at <= started
    assert_covers(process, "Touch items", "Touch items/")


async def test_a_nested_forks_record_covers_its_branches_across_a_retry(
    engine_factory: Make,
) -> None:
    flaky = Flaky()
    flaky.failing.add("b")
    engine = await engine_factory(["operators3_flows"], resources={Flaky: flaky})
    pid = await engine.start("fan_nested", {"items": ["a", "b"]})
    await settle(engine, pid, "failed")
    flaky.failing.clear()
    await engine.retry(pid)
    process = await settle(engine, pid, "completed", "failed")
    assert process.status == "completed", process.error
    assert_covers(process, "Inner", "Outer/0/Inner/")
    assert_covers(process, "Outer", "Outer/")
    touched = [s.branch for s in process.steps if s.name == "touch item" and s.status == "success"]
    assert sorted(touched) == ["Outer/0/Inner/0", "Outer/0/Inner/1"]  # a finished one: once
