"""Sync steps run in threads of the engine's own; a timed-out call never runs twice at once and
never starves other processes (README "Guarantees")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from support.common import EngineFactory, settle, wait_until
from thread_flows import Release

from orchd import Engine
from orchd.errors import InvalidTransition

pytestmark = pytest.mark.anyio

Make = Callable[..., Awaitable[Engine]]


@pytest.fixture
async def release() -> AsyncIterator[Release]:
    r = Release()
    yield r
    r.event.set()  # let every hung thread end


@pytest.fixture
async def thread_engine(
    engine_factory: EngineFactory, release: Release
) -> Callable[..., Awaitable[Engine]]:
    """``await thread_engine(**settings)``: an engine of tests/wf/thread_flows.py. ``release``
    is torn down first, so every hung thread ends before the engine closes."""

    async def make(**settings: Any) -> Engine:
        return await engine_factory(
            ["thread_flows"], resources={Release: release}, grace_period=0.5, **settings
        )

    return make


async def test_retry_is_refused_while_the_timed_out_call_still_runs(
    thread_engine: Make, release: Release
) -> None:
    engine = await thread_engine()
    pid = await engine.start("hangs")
    failed = await engine.wait(pid, timeout=10)
    assert failed.status == "failed" and "did not finish within 0.2 s" in (failed.error or "")
    with pytest.raises(InvalidTransition, match="still runs in its thread"):
        await engine.retry(pid)
    assert (await engine.get(pid)).status == "failed"
    release.event.set()

    async def retried() -> bool:
        # The thread returns at once; the engine hears of it on its loop.
        try:
            await engine.retry(pid)
        except InvalidTransition:
            return False
        return True

    await wait_until(retried, "a retry taken once the call returned")
    assert (await engine.wait(pid, timeout=10)).status == "completed"
    assert release.most == 1 and release.runs == 2


async def test_an_automatic_retry_waits_for_the_timed_out_call(
    thread_engine: Make, release: Release
) -> None:
    engine = await thread_engine()
    attempts: list[str] = []

    async def follow() -> None:
        async for event in engine.listen():
            if event.kind == "step" and event.step == "hang and retry":
                attempts.append(str(event.status))

    listener = asyncio.create_task(follow())
    pid = await engine.start("hangs_and_retries")
    # Once the timed-out call is committed as waiting, its retry is due 0.05 s later. Another
    # process fails after that and waits the same backoff: once it has run again, the first
    # one's retry came before it, and found the call still running.
    await settle(engine, pid, "waiting")
    other = await engine.start("fails_once")
    await settle(engine, other, "completed")
    assert release.failures == 2
    assert release.runs == 1 and release.most == 1
    assert (await engine.get(pid)).status == "waiting"
    # No second attempt began after the first was committed as waiting.
    assert "running" not in attempts[attempts.index("waiting") :], attempts
    release.event.set()
    await settle(engine, pid, "completed")
    listener.cancel()
    assert release.most == 1


async def test_forty_five_hung_sync_steps_do_not_stall_the_others(
    thread_engine: Make, release: Release
) -> None:
    engine = await thread_engine()  # the default pool: 64 threads
    hung = [await engine.start("hangs_untimed") for _ in range(45)]
    await wait_until(lambda: release.running == 45, "45 calls hanging")
    quick = await engine.start("quick_sync")
    assert (await engine.wait(quick, timeout=5)).status == "completed"
    assert release.running == 45
    release.event.set()
    for pid in hung:
        assert (await engine.wait(pid, timeout=10)).status == "completed"


async def test_the_pool_size_is_the_step_threads_setting(
    thread_engine: Make, release: Release
) -> None:
    engine = await thread_engine(step_threads=3)
    [await engine.start("hangs_untimed") for _ in range(4)]
    await wait_until(lambda: release.running == 3, "three calls hanging")
    await wait_until(lambda: engine.stats().step_threads_queued == 1, "the fourth queued")
    assert release.running == 3  # the fourth waits for a thread


async def test_abandoned_calls_give_their_place_back(thread_engine: Make, release: Release) -> None:
    engine = await thread_engine(step_threads=2)
    hung = [await engine.start("hangs") for _ in range(2)]
    for pid in hung:
        assert (await engine.wait(pid, timeout=10)).status == "failed"
    # Both threads still hang, but their calls were abandoned: two more can run.
    quick = [await engine.start("quick_sync") for _ in range(2)]
    for pid in quick:
        assert (await engine.wait(pid, timeout=5)).status == "completed"
    stats = engine.stats()
    assert stats.step_threads_abandoned == 2 and stats.step_threads_abandoned_running == 2
    release.event.set()
    await wait_until(
        lambda: engine.stats().step_threads_abandoned_running == 0, "the abandoned calls ended"
    )


async def test_a_full_pool_is_warned_of_and_counted(
    thread_engine: Make, release: Release, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await thread_engine(step_threads=2)
    for _ in range(2):
        await engine.start("hangs_untimed")
    await wait_until(lambda: release.running == 2, "both threads holding a hung call")
    assert engine.stats().step_threads_queued == 0
    waiting = await engine.start("quick_sync")
    await wait_until(lambda: engine.stats().step_threads_queued >= 1, "a call queued")
    assert engine.stats().step_threads_busy == 2
    warned = [r for r in caplog.records if "step threads full" in r.getMessage()]
    assert warned and "step_timeout" in warned[0].getMessage()
    release.event.set()
    assert (await engine.wait(waiting, timeout=10)).status == "completed"
