"""Parallel branches inside a process (README "Parallel branches"), in-process through the embedded
Engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from branch_flows import Ledger, Plan, count, read_ims, read_ipam
from support.common import EngineFactory, settle, wait_until

from orchd import Engine, Process, begin, callback_step, children, foreach, inputstep, parallel
from orchd.errors import CallbackNotFound, InvalidTransition, WorkflowDefinitionError
from orchd.testing import Gate


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
async def engine(engine_factory: EngineFactory, ledger: Ledger, gate: Gate) -> Engine:
    return await engine_factory(
        ["branch_flows"], resources={Ledger: ledger, Gate: gate}, grace_period=0.5
    )


def records(process: Process, branch: str | None = "*") -> list[tuple[str, str, str | None]]:
    """(name, status, branch) of the step records, of one branch when given."""
    return [
        (s.name, s.status, s.branch) for s in process.steps if branch == "*" or s.branch == branch
    ]


# -- parallel ---------------------------------------------------------------------------------


async def test_parallel_branches_merge_what_each_changed_into_state(engine: Engine) -> None:
    process = await engine.wait(await engine.start("gather", {"node": "r1"}))
    assert process.status == "completed", process.error
    assert process.state["ims_port"] == "r1:ge-0/0/1"
    assert process.state["ipam_prefix"] == "10.0.0.0/31" and process.state["ipam_ok"] is True
    assert process.state["decision"] == "r1:ge-0/0/1 10.0.0.0/31 True"


async def test_each_branch_step_has_a_record_naming_its_branch_and_the_fork_one_at_the_join(
    engine: Engine,
) -> None:
    process = await engine.wait(await engine.start("gather", {}))
    assert records(process, "Gather facts/0") == [("read IMS", "success", "Gather facts/0")]
    assert records(process, "Gather facts/1") == [
        ("read IPAM", "success", "Gather facts/1"),
        ("check IPAM", "success", "Gather facts/1"),
    ]
    main = [name for name, _, _ in records(process, None)]
    assert main == ["init", "Gather facts", "decide", "done"]
    fork = next(s for s in process.steps if s.name == "Gather facts")
    assert fork.state_delta == {
        "ims_port": "n1:ge-0/0/1",
        "ipam_prefix": "10.0.0.0/31",
        "ipam_ok": True,
    }


async def test_two_branches_setting_one_key_differently_fail_the_fork_naming_both(
    engine: Engine,
) -> None:
    process = await engine.wait(await engine.start("clash", {}))
    assert process.status == "failed"
    assert "'colour'" in (process.error or "")
    assert "Clash/0" in (process.error or "") and "Clash/1" in (process.error or "")
    assert "colour" not in process.state  # a failed join changes nothing
    assert process.steps[-1].name == "Clash" and process.steps[-1].status == "failed"


async def test_two_branches_setting_one_key_alike_merge(engine: Engine) -> None:
    process = await engine.wait(await engine.start("agree", {}))
    assert process.status == "completed"
    assert process.state["colour"] == "left" and process.state["left_only"] == 1


async def test_a_failed_join_can_be_skipped_whole(engine: Engine) -> None:
    pid = await engine.start("clash", {})
    await engine.wait(pid)
    await engine.skip(pid, "the colours do not matter", reporter="ops")
    process = await engine.wait(pid)
    assert process.status == "completed"
    assert "colour" not in process.state
    skipped = [s for s in process.steps if s.status == "skipped"]
    assert [(s.name, s.branch, s.reason) for s in skipped] == [
        ("Clash", None, "the colours do not matter")
    ]


# -- foreach ----------------------------------------------------------------------------------


async def test_foreach_collects_each_elements_changes_under_into_in_element_order(
    engine: Engine, ledger: Ledger
) -> None:
    ledger.pause = 0.01
    process = await engine.wait(await engine.start("ports", {"ports": [5, 3, 9, 1]}))
    assert process.status == "completed", process.error
    assert process.state["port_results"] == [
        {"configured": "port 5 (#0)"},
        {"configured": "port 3 (#1)"},
        {"configured": "port 9 (#2)"},
        {"configured": "port 1 (#3)"},
    ]
    assert {s.branch for s in process.steps if s.branch} == {
        "Configure ports/0",
        "Configure ports/1",
        "Configure ports/2",
        "Configure ports/3",
    }


async def test_foreach_without_into_drops_the_branch_changes(engine: Engine) -> None:
    process = await engine.wait(await engine.start("ports_dropped", {"ports": [1, 2]}))
    assert process.status == "completed"
    assert "configured" not in process.state and "item" not in process.state


async def test_a_foreach_branch_starts_with_a_dict_elements_keys(engine: Engine) -> None:
    links = [{"vlan": 10, "name": "a"}, {"vlan": 20, "name": "b"}]
    process = await engine.wait(await engine.start("dict_items", {"links": links}))
    assert process.status == "completed", process.error
    # A key the branch set to the value it started with is no change.
    assert process.state["labels"] == [{"label": "a@10"}, {"label": "b@20"}]


async def test_an_empty_foreach_joins_at_once(engine: Engine, ledger: Ledger) -> None:
    process = await engine.wait(await engine.start("ports", {"ports": []}))
    assert process.status == "completed"
    assert process.state["port_results"] == []
    assert ledger.count("configure port") == 0


async def test_foreach_never_runs_more_than_max_concurrency_branches_at_once(
    engine: Engine, ledger: Ledger
) -> None:
    ledger.pause = 0.02
    process = await engine.wait(await engine.start("ports", {"ports": list(range(9))}))
    assert process.status == "completed"
    assert len(ledger.spans) == 9
    edges = sorted(
        [(start, 1) for _, start, _ in ledger.spans] + [(end, -1) for _, _, end in ledger.spans],
        key=lambda edge: (edge[0], edge[1]),  # an end before a start at the same instant
    )
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    assert peak == 2


async def test_a_foreach_over_something_not_a_list_fails_its_step(engine: Engine) -> None:
    process = await engine.wait(await engine.start("not_a_list", {"node": "r1"}))
    assert process.status == "failed"
    assert process.error == "foreach 'Bad': state['node'] must be a list, not str"
    assert process.steps[-1].name == "Bad" and process.steps[-1].branch is None


# -- failing and waiting branches -------------------------------------------------------------


async def test_a_failing_branch_lets_the_others_run_on_then_the_process_fails(
    engine: Engine, ledger: Ledger
) -> None:
    ledger.failing.add(3)
    pid = await engine.start("ports", {"ports": [1, 2, 3, 4, 5]})
    process = await engine.wait(pid)
    assert process.status == "failed"
    assert "Configure ports/2" in (process.error or "") and "3 is failing" in (process.error or "")
    assert sorted(item for _, item in ledger.calls) == [1, 2, 3, 4, 5]
    assert "port_results" not in process.state


async def test_retry_reruns_only_the_failed_branch(engine: Engine, ledger: Ledger) -> None:
    ledger.failing.add(3)
    pid = await engine.start("ports", {"ports": [1, 2, 3, 4]})
    await engine.wait(pid)
    ledger.failing.clear()
    await engine.retry(pid, reporter="ops")
    process = await engine.wait(pid)
    assert process.status == "completed", process.error
    # The successful branches' side effects happened once; the failed one ran twice.
    assert [item for _, item in ledger.calls].count(1) == 1
    assert [item for _, item in ledger.calls].count(3) == 2
    assert [r["configured"] for r in process.state["port_results"]] == [
        "port 1 (#0)",
        "port 2 (#1)",
        "port 3 (#2)",
        "port 4 (#3)",
    ]
    branch = records(process, "Configure ports/2")
    assert [status for _, status, _ in branch] == ["failed", "success"]


async def test_skip_applies_to_every_failed_branch(engine: Engine, ledger: Ledger) -> None:
    ledger.failing.update({2, 4})
    pid = await engine.start("ports", {"ports": [1, 2, 3, 4]})
    await engine.wait(pid)
    await engine.skip(pid, "ports 2 and 4 are spare", reporter="ops")
    process = await engine.wait(pid)
    assert process.status == "completed", process.error
    skipped = [(s.branch, s.reason) for s in process.steps if s.status == "skipped"]
    assert skipped == [
        ("Configure ports/1", "ports 2 and 4 are spare"),
        ("Configure ports/3", "ports 2 and 4 are spare"),
    ]
    assert process.state["port_results"][1] == {} and process.state["port_results"][3] == {}
    assert ledger.count("configure port") == 4  # nothing ran again


async def test_a_failing_retrystep_makes_only_its_branch_wait(
    engine: Engine, ledger: Ledger
) -> None:
    ledger.failing.add("reserve")
    pid = await engine.start("flaky", {})
    process = await settle(engine, pid, "waiting")
    assert records(process, "Prepare/1") == [("count", "success", "Prepare/1")]
    assert records(process, "Prepare/0")[-1][1] == "waiting"
    assert process.next_retry_at is not None
    ledger.failing.clear()
    process = await settle(engine, pid, "completed")  # retried by its timer
    assert process.state["reserved"] is True and process.state["counted"] is True
    assert ledger.count("count") == 1


async def test_a_callback_step_makes_only_its_branch_wait_for_its_token(
    engine: Engine, ledger: Ledger
) -> None:
    pid = await engine.start("circuit", {})
    process = await settle(engine, pid, "awaiting_callback")
    assert records(process, "Provision/1") == [("count", "success", "Provision/1")]
    token = next(what for name, what in ledger.calls if name == "order circuit")
    assert token not in str(process.state) and token not in str(process.steps)
    await engine.callback(token, {"circuit": "C-1"})
    process = await engine.wait(pid)
    assert process.status == "completed", process.error
    assert process.state["circuit"] == "C-1"
    assert [a.action for a in process.actions] == ["start", "callback"]
    with pytest.raises(CallbackNotFound):  # a token answers one wait
        await engine.callback(token, {"circuit": "C-2"})


async def answer_at_the_wait(
    engine: Engine, ledger: Ledger, deliver: Callable[[str], Awaitable[Any]]
) -> tuple[Any, Process]:
    """Start ``circuit`` and ``deliver`` its branch's token the moment the wait's commit is
    announced, before the branch's task has heard of its own commit (listeners hear first);
    what ``deliver`` answered, and the process once it has finished."""
    after = engine.last_event_id
    pid = await engine.start("circuit", {})
    async with asyncio.timeout(10):
        async for event in engine.listen(after):
            if event.process_id == pid and event.step_status == "awaiting_callback":
                token = next(what for name, what in ledger.calls if name == "order circuit")
                delivered = await deliver(token)
                break
        return delivered, await engine.wait(pid)


async def test_a_callback_that_arrives_while_its_branch_commits_the_wait_is_taken(
    engine: Engine, ledger: Ledger
) -> None:
    # It must be taken, not kept and forgotten.
    async def deliver(token: str) -> Any:
        return await engine.callback(token, {"circuit": "C-1"})

    _, process = await answer_at_the_wait(engine, ledger, deliver)
    assert process.status == "completed", process.error
    assert process.state["circuit"] == "C-1"


async def test_a_second_answer_while_the_first_is_taken_finds_the_token_used(
    engine: Engine, ledger: Ledger
) -> None:
    # Two deliveries of one callback at the wait's commit (a sender that retried): the first
    # is the answer, the second is refused at once rather than kept and left waiting.
    async def deliver(token: str) -> list[Any]:
        first = asyncio.ensure_future(engine.callback(token, {"circuit": "C-1"}))
        second = asyncio.ensure_future(engine.callback(token, {"circuit": "C-2"}))
        return await asyncio.gather(first, second, return_exceptions=True)

    answers, process = await answer_at_the_wait(engine, ledger, deliver)
    assert answers[0] == process.id
    assert isinstance(answers[1], CallbackNotFound)
    assert process.status == "completed" and process.state["circuit"] == "C-1"


async def test_an_operator_answers_the_only_waiting_branch_by_process_id(
    engine: Engine,
) -> None:
    pid = await engine.start("circuit", {})
    await settle(engine, pid, "awaiting_callback")
    await engine.answer_callback(pid, {"circuit": "by hand"}, reporter="ops")
    process = await engine.wait(pid)
    assert process.status == "completed" and process.state["circuit"] == "by hand"


async def test_two_waiting_branches_are_answered_by_their_own_tokens(
    engine: Engine, ledger: Ledger
) -> None:
    pid = await engine.start("two_circuits", {})
    await settle(engine, pid, "awaiting_callback")
    with pytest.raises(InvalidTransition, match="Provision/0, Provision/1"):
        await engine.answer_callback(pid, {"circuit": "which?"})
    tokens = [what for name, what in ledger.calls if name == "order circuit"]
    await engine.callback(tokens[1], {"circuit": "C-1"})
    process = await settle(engine, pid, "awaiting_callback")
    assert records(process, "Provision/1")[-1] == ("check circuit", "success", "Provision/1")
    await engine.callback(tokens[0], {"circuit": "C-1"})
    assert (await engine.wait(pid)).status == "completed"


async def test_abort_stops_every_branch_between_steps(
    engine: Engine, ledger: Ledger, gate: Gate
) -> None:
    pid = await engine.start("held", {})
    await gate.reached()
    await engine.abort(pid, reporter="ops")
    gate.open()
    process = await engine.wait(pid)
    assert process.status == "aborted"
    assert ledger.count("after hold") == 0
    assert records(process, "Hold/1") == [("hold", "success", "Hold/1")]


# -- nesting and conditions -------------------------------------------------------------------


async def test_a_parallel_nested_in_a_foreach(engine: Engine) -> None:
    process = await engine.wait(await engine.start("halves", {"numbers": [1, 2]}))
    assert process.status == "completed", process.error
    assert process.state["results"] == [
        {"left": 10, "right": 100},
        {"left": 20, "right": 200},
    ]
    assert ("left half", "success", "Each/1/Halves/0") in records(process)
    assert ("Halves", "success", "Each/1") in records(process)


async def test_a_foreach_nested_in_a_parallel(engine: Engine) -> None:
    process = await engine.wait(await engine.start("fan_in_branch", {"numbers": [4, 5]}))
    assert process.status == "completed", process.error
    assert process.state["total"] == 9 and process.state["other"] == "done"
    assert ("configured sum", "success", "Outer/0/Each/1") in records(process)


async def test_a_conditional_inside_a_branch_is_judged_on_the_branch_state(
    engine: Engine, ledger: Ledger
) -> None:
    process = await engine.wait(await engine.start("conditions", {"numbers": [5, 50]}))
    assert process.status == "completed"
    assert process.state["sizes"] == [{}, {"big": True}]
    assert records(process, "Sizes/0") == [("only big", "skipped", "Sizes/0")]
    assert ledger.calls == [("only big", 50)]


# -- definitions ------------------------------------------------------------------------------


def test_an_inputstep_inside_a_branch_is_refused_when_defined() -> None:
    @inputstep("ask")
    def ask() -> type[Plan]:
        return Plan

    with pytest.raises(WorkflowDefinitionError, match="inputstep 'ask' cannot stand in a branch"):
        parallel("P", begin >> ask, begin >> count)
    with pytest.raises(WorkflowDefinitionError, match="inputstep"):
        foreach("F", "items", begin >> count >> ask)


def test_children_inside_a_branch_is_refused_when_defined() -> None:
    fan = children("kids", workflow="x", inputs="inputs")
    with pytest.raises(WorkflowDefinitionError, match="children step 'kids'"):
        parallel("P", begin >> fan, begin >> count)


def test_a_parallel_needs_two_branches_and_a_key_without_a_slash() -> None:
    with pytest.raises(WorkflowDefinitionError, match="two or more"):
        parallel("P", begin >> read_ims)
    with pytest.raises(WorkflowDefinitionError, match="may not contain '/'"):
        parallel("a/b", begin >> read_ims, begin >> read_ipam)


def test_a_foreach_and_a_children_step_refuse_a_bad_into_or_max_concurrency() -> None:
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(WorkflowDefinitionError, match="foreach 'F': max_concurrency must"):
            foreach("F", "items", begin >> count, max_concurrency=bad)  # type: ignore[arg-type]
        with pytest.raises(WorkflowDefinitionError, match="children 'C': max_concurrency must"):
            children("C", workflow="w", inputs="items", max_concurrency=bad)  # type: ignore[arg-type]
    for bad_into in ("", 3):
        with pytest.raises(WorkflowDefinitionError, match="foreach 'F': into must be a State"):
            foreach("F", "items", begin >> count, into=bad_into)  # type: ignore[arg-type]
        with pytest.raises(WorkflowDefinitionError, match="children 'C': into must be a State"):
            children("C", workflow="w", inputs="items", into=bad_into)  # type: ignore[arg-type]


def test_a_callback_step_may_stand_in_a_branch() -> None:
    order = callback_step("wait", read_ims, read_ipam)
    fork = parallel("P", order, begin >> count)
    assert [s.name for s in fork.branches[0]] == ["read IMS", "wait", "read IPAM"]


# -- durability -------------------------------------------------------------------------------


async def test_after_a_restart_finished_branches_do_not_run_again(
    engine_factory: EngineFactory, ledger: Ledger
) -> None:
    gate = Gate()
    first = await engine_factory(
        ["branch_flows"], name="restart.db", resources={Ledger: ledger, Gate: gate},
        grace_period=0.1,
    )  # fmt: skip
    pid = await first.start("held_items", {"numbers": [0, 1, 2, 3]})
    await gate.reached(2)
    await settle(first, pid, "running")

    async def evens_committed() -> bool:
        steps = (await first.get(pid)).steps
        done = {s.branch for s in steps if s.name == "hold item" and s.status == "success"}
        return done >= {"Hold odd/0", "Hold odd/2"}

    await wait_until(evens_committed, "the even elements' steps committed")
    await first.close()
    evens_before = [item for name, item in ledger.calls if item in (0, 2)]
    assert evens_before == [0, 2]
    second = await engine_factory(
        ["branch_flows"], name="restart.db", resources={Ledger: ledger, Gate: Gate(open=True)}
    )
    process = await second.wait(pid)
    assert process.status == "completed", process.error
    assert process.state["seen"] == [{"seen": 0}, {"seen": 1}, {"seen": 2}, {"seen": 3}]
    items = [item for name, item in ledger.calls]
    assert items.count(0) == 1 and items.count(2) == 1  # finished: never again
    assert items.count(1) == 2 and items.count(3) == 2  # interrupted: ran again
    joins = [s for s in process.steps if s.name == "Hold odd"]
    assert len(joins) == 1


# -- what is shown ----------------------------------------------------------------------------


async def test_the_process_shows_its_forks_and_branches(engine: Engine, ledger: Ledger) -> None:
    ledger.failing.add(2)
    pid = await engine.start("ports", {"ports": [1, 2, 3]})
    process = await engine.wait(pid)
    [fork] = process.branches
    assert fork.fork == "Configure ports" and fork.parent_branch is None and not fork.joined
    assert fork.counts == {"done": 2, "failed": 1}
    assert [(b.branch, b.status) for b in fork.branches] == [
        ("Configure ports/0", "done"),
        ("Configure ports/1", "failed"),
        ("Configure ports/2", "done"),
    ]
    ledger.failing.clear()
    await engine.retry(pid)
    [fork] = (await engine.wait(pid)).branches
    assert fork.joined and fork.counts == {"done": 3}


async def test_a_large_foreach_is_summarised_by_counts(engine: Engine, ledger: Ledger) -> None:
    ledger.failing.add(7)
    process = await engine.wait(await engine.start("ports", {"ports": list(range(40))}))
    [fork] = process.branches
    assert fork.counts == {"done": 39, "failed": 1}
    assert fork.abridged and [b.branch for b in fork.branches] == ["Configure ports/7"]


async def test_step_events_carry_their_branch(engine: Engine) -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def follow(after: int) -> None:
        async for event in engine.listen(after):
            if event.kind == "step":
                seen.append((event.step, event.branch))
            if event.kind == "process" and event.status == "completed":
                return

    after = engine.last_event_id  # what the listener sees, however late it starts
    listener = asyncio.create_task(follow(after))
    await engine.wait(await engine.start("gather", {}))
    await asyncio.wait_for(listener, 5)
    assert ("check IPAM", "Gather facts/1") in seen and ("decide", None) in seen


async def test_a_branch_callback_past_its_deadline_fails_its_branch_and_a_retry_asks_again(
    engine: Engine, ledger: Ledger
) -> None:
    pid = await engine.start("circuit_deadline", {})
    process = await settle(engine, pid, "failed")
    assert "no callback arrived before the deadline" in (process.error or "")
    assert records(process, "Provision/1") == [("count", "success", "Provision/1")]
    for _ in range(5):  # on a busy machine the new 0.3 s deadline may pass again first
        await engine.retry(pid)
        if (await settle(engine, pid, "awaiting_callback", "failed")).status == "failed":
            continue
        tokens = [what for name, what in ledger.calls if name == "order circuit"]
        try:
            await engine.callback(tokens[-1], {"circuit": "late but fine"})
        except (CallbackNotFound, InvalidTransition):
            await settle(engine, pid, "failed")  # it expired while the answer was on its way
            continue
        break
    tokens = [what for name, what in ledger.calls if name == "order circuit"]
    assert len(tokens) >= 2 and len(set(tokens)) == len(tokens)  # each time a new token
    process = await engine.wait(pid)
    assert process.status == "completed" and process.state["circuit"] == "late but fine"
    assert ledger.count("count") == 1


async def test_many_branches_waiting_for_their_retries_all_go_on_by_themselves(
    engine: Engine, ledger: Ledger
) -> None:
    ledger.failing.update({"first", "second", "third"})  # the first three calls fail
    pid = await engine.start("retry_many", {"numbers": [1, 2, 3, 4]})
    process = await settle(engine, pid, "completed", "failed")
    assert process.status == "completed", process.error
    assert process.state["reserved"] == [{"reserved": n} for n in (1, 2, 3, 4)]
    assert ledger.count("reserve item") == 7


async def test_aborting_a_waiting_fork_drops_its_branches_and_no_timer_revives_it(
    engine: Engine, ledger: Ledger
) -> None:
    ledger.failing.add("reserve")
    pid = await engine.start("flaky", {})
    await settle(engine, pid, "waiting")
    await engine.abort(pid, reporter="ops")
    process = await engine.get(pid)
    assert process.status == "aborted"
    row = await engine.store.process(pid)
    assert row is not None and await engine.store.branches(row.pk) == []
    calls = ledger.count("reserve")
    # Another process's branch fails the same way after the abort and waits the same backoff:
    # once it has tried again, the aborted branch's timer, had it survived, fired before.
    later = await engine.start("flaky", {})

    async def tried_again() -> bool:
        return [name for name, _, _ in records(await engine.get(later))].count("reserve") >= 2

    await wait_until(tried_again, "the later process's branch tried again")
    assert ledger.count("reserve") == calls + 2
    assert (await engine.get(pid)).status == "aborted"
