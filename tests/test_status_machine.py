"""The process status machine: the transition table, and a real Engine driven at random."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule
from steering import Calls, FailurePlan
from support.common import DatabaseFactory

from orchd import Engine
from orchd.engine.actor import Actor
from orchd.errors import InvalidTransition
from orchd.model import (
    ACTIVE,
    ALLOWED,
    FINAL,
    TRANSITIONS,
    Action,
    ProcessStatus,
    check_action,
    check_transition,
)

T = TypeVar("T")
P = ProcessStatus


def test_final_statuses_have_no_way_out() -> None:
    for status in FINAL:
        assert TRANSITIONS[status] == frozenset()
        for action in Action:
            with pytest.raises(InvalidTransition):
                check_action(action, status, "p")


@pytest.mark.parametrize("current", list(P))
@pytest.mark.parametrize("new", list(P))
def test_check_transition_follows_the_table(current: P, new: P) -> None:
    if new in TRANSITIONS[current]:
        check_transition(current, new)
    else:
        with pytest.raises(InvalidTransition):
            check_transition(current, new)


def test_abort_is_allowed_exactly_where_the_contract_says() -> None:
    assert ALLOWED[Action.ABORT] == {
        P.CREATED,
        P.RUNNING,
        P.SUSPENDED,
        P.WAITING,
        P.AWAITING_CALLBACK,
        P.AWAITING_CHILDREN,  # README "Child processes"
        P.FAILED,
    }
    assert ALLOWED[Action.RESUME] == {P.SUSPENDED}
    assert ALLOWED[Action.RETRY] == {P.FAILED, P.WAITING}


class _Loop:
    """An event loop in a thread, so hypothesis's synchronous machine can drive the Engine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


#: workflow -> (input, the status it settles in after start)
KINDS = {
    "needs_approval": ({"name": "n"}, P.SUSPENDED),
    "flaky_task": ({}, P.FAILED),
    "with_callback": ({}, P.AWAITING_CALLBACK),
    "retrying_later": ({}, P.WAITING),  # its backoff is an hour: waiting until acted on
    "conditional_task": ({}, P.COMPLETED),
}


class EngineMachine(RuleBasedStateMachine):
    processes = Bundle("processes")

    def __init__(self) -> None:
        super().__init__()
        failures = FailurePlan({"flaky": 10**9, "call oss": 10**9})
        self.tmp = Path(__import__("tempfile").mkdtemp())
        self.loop = _Loop()
        self.engine = Engine(
            database=str(self.tmp / "orchd.db"),
            workflows=["engine_flows"],
            retry_delay=3600.0,
            grace_period=1.0,
            resources={FailurePlan: failures, Calls: Calls()},
        )
        self.loop.run(self.engine.open())
        self.status: dict[str, P] = {}
        self.steps: dict[str, int] = {}

    def teardown(self) -> None:
        self.loop.run(self.engine.close())
        self.loop.close()

    def settle(self, pid: str) -> P:
        process = self.loop.run(self.engine.wait(pid))
        assert process.status not in ACTIVE
        assert len(process.steps) >= self.steps.get(pid, 0), "a step record disappeared"
        self.steps[pid] = len(process.steps)
        self.status[pid] = process.status
        return process.status

    def act(self, pid: str, action: Action, coro: Coroutine[Any, Any, Any]) -> bool:
        before = self.status[pid]
        try:
            self.loop.run(coro)
        except InvalidTransition:
            assert before not in ALLOWED[action], f"{action} refused in {before}"
            assert self.settle(pid) == before, "a refused action changed the status"
            return False
        assert before in ALLOWED[action], f"{action} accepted in {before}"
        return True

    @rule(target=processes, kind=st.sampled_from(sorted(KINDS)))
    def start(self, kind: str) -> str:
        given, expected = KINDS[kind]
        pid = self.loop.run(self.engine.start(kind, given))
        assert self.settle(pid) == expected
        return pid

    @rule(pid=processes, approved=st.booleans())
    def resume(self, pid: str, approved: bool) -> None:
        if self.act(pid, Action.RESUME, self.engine.resume(pid, {"approved": approved})):
            assert self.settle(pid) == P.COMPLETED

    @rule(pid=processes)
    def retry(self, pid: str) -> None:
        if self.act(pid, Action.RETRY, self.engine.retry(pid)):
            assert self.settle(pid) in (P.FAILED, P.WAITING)

    @rule(pid=processes)
    def skip(self, pid: str) -> None:
        if self.act(pid, Action.SKIP, self.engine.skip(pid, "skipped by the state machine")):
            self.settle(pid)  # it went on past the skipped step, to wherever that leads

    @rule(pid=processes)
    def abort(self, pid: str) -> None:
        if self.act(pid, Action.ABORT, self.engine.abort(pid)):
            assert self.settle(pid) == P.ABORTED

    @rule(pid=processes)
    def callback(self, pid: str) -> None:
        # An operator's answer by process id: refused by the status table alone (a token
        # would also be refused for being used or old, which the audit tests cover).
        if self.act(pid, Action.CALLBACK, self.engine.answer_callback(pid, {"ok": True})):
            assert self.settle(pid) == P.COMPLETED

    @invariant()
    def finished_processes_stay_finished(self) -> None:
        for pid, status in self.status.items():
            if status in FINAL:
                assert self.loop.run(self.engine.get(pid)).status == status


EngineMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_engine_status_machine = EngineMachine.TestCase


async def test_the_one_place_a_status_is_written_refuses_a_change_the_table_forbids(
    database_factory: DatabaseFactory,
) -> None:
    # White box: every status change goes through Actor.write, which checks the table. A
    # completed process made "running" again by a bug would run steps a second time.
    async with Engine(database=await database_factory("db"), workflows=["engine_flows"]) as engine:
        pid = await engine.start("conditional_task")
        assert (await engine.wait(pid)).status == P.COMPLETED
        row = await engine.store.process(pid)
        assert row is not None
        actor = Actor(engine._runtime, pid, row)  # the runtime is what an actor runs in
        with pytest.raises(InvalidTransition, match="a completed process cannot become running"):
            await actor.write(P.RUNNING, steps=[])
        assert (await engine.get(pid)).status == P.COMPLETED
