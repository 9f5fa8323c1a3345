"""The embeddable Engine against a real SQLite file: README "Writing workflows" and "Guarantees"."""

from __future__ import annotations

import logging
from functools import partial

import msgspec
import pytest
from steering import Calls, FailurePlan
from support.common import DatabaseFactory, EngineFactory, engine_fixture, settle, wait_until

from orchd import Engine
from orchd.errors import (
    CallbackNotFound,
    FormValidationError,
    InvalidTransition,
    ProcessNotFound,
    WorkflowNotFound,
)
from orchd.store.base import Checkpoint, ProcessWrite, new_callback_token

pytestmark = pytest.mark.anyio


engine = engine_fixture("engine_flows", retry_delay=0.05, grace_period=0.5)


def names(process) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(s.name, s.status.value) for s in process.steps]


async def test_process_completes_and_merges_step_results_into_state(engine: Engine) -> None:
    pid = await engine.start("create_node", {"name": "n1"}, reporter="alice")
    p = await engine.wait(pid)
    assert p.status == "completed"
    assert p.state["name"] == "n1"
    assert p.state["subscription"]["status"] == "active"
    assert names(p) == [
        ("init", "success"),
        ("create subscription", "success"),
        ("activate", "success"),
        ("done", "success"),
    ]


async def test_reserved_state_keys_are_set_by_the_engine(engine: Engine) -> None:
    pid = await engine.start("create_node", {"name": "n1"}, reporter="alice")
    p = await engine.wait(pid)
    assert p.state["process_id"] == pid
    assert p.state["workflow_name"] == "create_node"
    assert p.state["workflow_target"] == "CREATE"
    assert p.state["reporter"] == "alice"
    assert p.state["subscription_id"] == p.state["subscription"]["id"]


async def test_step_log_is_oldest_first_with_times(engine: Engine) -> None:
    p = await engine.wait(await engine.start("create_node", {"name": "n1"}))
    times = [s.started_at for s in p.steps]
    assert times == sorted(times)
    assert all(s.finished_at >= s.started_at for s in p.steps)


async def test_step_records_store_only_what_changed(engine: Engine) -> None:
    p = await engine.wait(await engine.start("create_node", {"name": "n1"}))
    by_name = {s.name: s for s in p.steps}
    assert by_name["init"].state_delta == {}
    assert set(by_name["create subscription"].state_delta) == {"subscription", "subscription_id"}
    assert set(by_name["activate"].state_delta) == {"subscription"}


async def test_state_values_are_converted_to_annotations_and_back_to_json(engine: Engine) -> None:
    p = await engine.wait(await engine.start("typed"))
    assert p.status == "completed", p.error
    assert p.state["seen"] == {
        "uid": "UUID",
        "when": "datetime",
        "amount": "Decimal",
        "colour": "Colour",
        "point": "Point",
        "numbers": [1, 2],
        "maybe": None,
        "mode": "fast",
        "default": 7,
    }
    assert p.state["uid"] == "12345678-1234-5678-1234-567812345678"
    assert p.state["when"] == "2026-01-02T03:04:05"
    assert p.state["amount"] == "12.50"
    assert p.state["colour"] == "blue"
    assert p.state["point"] == {"x": 1, "y": 2}


async def test_missing_state_key_fails_the_step_naming_key_type_and_step(engine: Engine) -> None:
    p = await engine.wait(await engine.start("missing_key"))
    assert p.status == "failed"
    assert "absent_key" in p.error and "int" in p.error and "needs key" in p.error
    assert p.steps[-1].status == "failed" and p.steps[-1].name == "needs key"


async def test_unconvertible_state_value_fails_the_step(engine: Engine) -> None:
    p = await engine.wait(await engine.start("bad_type", {"count": "many"}))
    assert p.status == "failed"
    assert "count" in p.error and "int" in p.error


async def test_step_returning_a_non_dict_fails_with_a_clear_message(engine: Engine) -> None:
    p = await engine.wait(await engine.start("bad_return"))
    assert p.status == "failed"
    assert "returns list" in p.error and "dict or None" in p.error


async def test_failed_step_keeps_its_record_and_state_and_retry_reruns_it(
    engine: Engine, failures: FailurePlan, calls: Calls
) -> None:
    failures["flaky"] = 1
    pid = await engine.start("flaky_task")
    p = await engine.wait(pid)
    assert p.status == "failed"
    assert p.current_step == "flaky"
    assert "failed on purpose" in p.error
    assert p.steps[-1].traceback and "RuntimeError" in p.steps[-1].traceback
    assert "flaky_ran" not in p.state

    await engine.retry(pid)
    p = await engine.wait(pid)
    assert p.status == "completed"
    assert names(p) == [
        ("init", "success"),
        ("mark", "success"),
        ("flaky", "failed"),
        ("flaky", "success"),
        ("done", "success"),
    ]
    assert p.state["saw_marker"] == 1
    assert calls == {"mark": 1, "flaky": 2}


async def test_retrystep_waits_and_is_retried_automatically(
    engine: Engine, failures: FailurePlan
) -> None:
    failures["call oss"] = 1
    pid = await engine.start("retrying")
    p = await engine.wait(pid)
    assert p.status == "waiting"
    assert p.attempts == 1 and p.next_retry_at is not None
    p = await settle(engine, pid, "completed", "failed")
    assert p.status == "completed"
    assert [s.status for s in p.steps if s.name == "call oss"] == ["waiting", "success"]


async def test_retrystep_fails_after_its_last_attempt(
    engine: Engine, failures: FailurePlan, calls: Calls
) -> None:
    failures["call oss"] = 99
    pid = await engine.start("retrying")
    p = await settle(engine, pid, "failed", "completed")
    assert p.status == "failed"
    assert calls["call oss"] == 3
    assert "gave up after 3 attempts" in p.error


async def test_retry_of_waiting_process_runs_it_now(engine: Engine, failures: FailurePlan) -> None:
    failures["call oss"] = 1
    engine.settings = msgspec.structs.replace(engine.settings, retry_delay=60.0)
    # Its backoff is an hour: still waiting when retried (``retrying`` goes on by itself
    # after 0.05 s, and the retry found it running on a busy machine).
    pid = await engine.start("retrying_later")
    assert (await engine.wait(pid)).status == "waiting"
    await engine.retry(pid)
    assert (await engine.wait(pid)).status == "completed"


async def test_inputstep_suspends_with_the_forms_json_schema(engine: Engine) -> None:
    pid = await engine.start("needs_approval", {"name": "n1"})
    p = await engine.wait(pid)
    assert p.status == "suspended"
    assert p.form is not None
    assert p.form["properties"]["approved"] == {"type": "boolean"}
    assert p.form["required"] == ["approved"]


async def test_bad_answer_is_refused_and_changes_nothing(engine: Engine) -> None:
    pid = await engine.start("needs_approval", {"name": "n1"})
    before = await engine.wait(pid)
    with pytest.raises(FormValidationError) as err:
        await engine.resume(pid, {"approved": "perhaps"})
    assert err.value.errors[0]["loc"] == ["approved"]
    after = await engine.get(pid)
    assert after.status == "suspended"
    assert after.steps == before.steps and after.state == before.state


async def test_good_answer_is_merged_and_the_process_continues(engine: Engine) -> None:
    pid = await engine.start("needs_approval", {"name": "n1"})
    await engine.wait(pid)
    await engine.resume(pid, {"approved": True, "comment": "go"})
    p = await engine.wait(pid)
    assert p.status == "completed"
    assert p.state["outcome"] == "approved" and p.state["echo"] == "go"
    assert ("approve", "suspended") in names(p) and ("approve", "success") in names(p)


async def test_resume_of_a_process_that_is_not_suspended_is_refused(engine: Engine) -> None:
    pid = await engine.start("create_node", {"name": "n1"})
    await engine.wait(pid)
    with pytest.raises(InvalidTransition):
        await engine.resume(pid, {"approved": True})


async def test_initial_form_is_validated_before_anything_is_created(engine: Engine) -> None:
    with pytest.raises(FormValidationError) as err:
        await engine.start("create_node", {"nam": "typo"})
    assert err.value.errors[0]["loc"]
    assert (await engine.list_processes()).items == []


async def test_conditional_steps_are_skipped_when_the_predicate_is_false(engine: Engine) -> None:
    p = await engine.wait(await engine.start("conditional_task", {"size": 3}))
    assert ("only big", "skipped") in names(p)
    assert "big" not in p.state
    p = await engine.wait(await engine.start("conditional_task", {"size": 30}))
    assert ("only big", "success") in names(p)


async def test_callback_step_waits_then_merges_the_answer(engine: Engine) -> None:
    pid = await engine.start("with_callback")
    p = await engine.wait(pid)
    assert p.status == "awaiting_callback"
    token = p.state["asked_with"]  # what the action step handed the external system
    assert await engine.callback(token, {"ok": True}) == pid
    p = await engine.wait(pid)
    assert p.status == "completed"
    assert p.state["callback_result"] == {"ok": True} and p.state["answer_ok"] is True


async def test_unknown_callback_token_is_not_found(engine: Engine) -> None:
    with pytest.raises(CallbackNotFound):
        await engine.callback("no-such-token", {})


async def test_a_used_callback_token_is_not_found(engine: Engine) -> None:
    pid = await engine.start("with_callback")
    token = (await engine.wait(pid)).state["asked_with"]
    await engine.callback(token, {"ok": True})
    await engine.wait(pid)
    with pytest.raises(CallbackNotFound):
        await engine.callback(token, {"ok": True})


async def test_abort_step_ends_the_process_as_aborted(engine: Engine) -> None:
    p = await engine.wait(await engine.start("self_abort"))
    assert p.status == "aborted"
    assert names(p)[-1] == ("abort", "aborted")
    assert "big" not in p.state


async def test_unknown_workflow_and_process_are_not_found(engine: Engine) -> None:
    with pytest.raises(WorkflowNotFound):
        await engine.start("nope")
    with pytest.raises(ProcessNotFound):
        await engine.get("00000000-0000-0000-0000-000000000000")
    with pytest.raises(ProcessNotFound):
        await engine.get("not-a-uuid")
    with pytest.raises(ProcessNotFound):
        await engine.retry("00000000-0000-0000-0000-000000000000")


async def test_process_list_is_newest_first_and_pages_with_a_cursor(engine: Engine) -> None:
    pids = [await engine.start("conditional_task") for _ in range(5)]
    for pid in pids:
        await engine.wait(pid)
    first = await engine.list_processes(limit=3)
    assert [p.id for p in first.items] == pids[::-1][:3]
    second = await engine.list_processes(limit=3, cursor=first.next_cursor)
    assert [p.id for p in second.items] == pids[::-1][3:]
    assert second.next_cursor is None
    only = await engine.list_processes(workflow="conditional_task", status="completed")
    assert len(only.items) == 5


async def test_state_survives_an_engine_restart(database_factory: DatabaseFactory) -> None:
    db = await database_factory("orchd.db")
    async with Engine(database=db, workflows=["engine_flows"]) as e:
        pid = await e.start("needs_approval", {"name": "n1"})
        await e.wait(pid)
    async with Engine(database=db, workflows=["engine_flows"]) as e:
        await e.resume(pid, {"approved": False})
        p = await e.wait(pid)
    assert p.status == "completed" and p.state["outcome"] == "rejected"


async def test_memory_database_works_for_workflow_tests() -> None:
    async with Engine(database=":memory:", workflows=["engine_flows"]) as e:
        p = await e.wait(await e.start("create_node", {"name": "n1"}))
    assert p.status == "completed"


async def test_step_running_past_its_timeout_fails_with_the_limit(engine: Engine) -> None:
    p = await engine.wait(await engine.start("timing_out"))
    assert p.status == "failed"
    assert "too slow" in p.error and "0.05 s" in p.error


async def test_a_timeout_error_raised_by_a_step_keeps_its_own_message(engine: Engine) -> None:
    p = await engine.wait(await engine.start("own_timeout"))
    assert p.status == "failed"
    assert p.error == "TimeoutError: the OSS did not answer within 30 s"


@pytest.mark.parametrize("key", ["subscription", "subscription_id", "process_id", "reporter"])
async def test_input_cannot_set_reserved_state_keys(engine: Engine, key: str) -> None:
    with pytest.raises(FormValidationError) as err:
        await engine.start("conditional_task", {key: {"id": "x"}})
    assert err.value.errors[0]["loc"] == [key]
    assert (await engine.list_processes()).items == []


async def test_input_that_is_not_json_is_refused_and_the_store_keeps_working(
    engine: Engine,
) -> None:
    with pytest.raises(FormValidationError):
        await engine.start("conditional_task", {"x": object()})
    assert (await engine.wait(await engine.start("conditional_task"))).status == "completed"


async def test_a_failing_write_operation_does_not_stop_the_writer(engine: Engine) -> None:
    # A write that fails for a reason of its own, not the database's: a subscription
    # without its fields (the engine never writes one; a bug could).
    pid = await engine.start("conditional_task")
    await engine.wait(pid)
    row = await engine.store.process(pid)
    assert row is not None
    broken = Checkpoint(
        process_id=pid,
        process=ProcessWrite(
            pk=row.pk, status="completed", pc=row.pc, seq=row.seq, state=b"{}",
            current_step=None, updated_at=row.updated_at,
        ),
        subscription={"id": "x"},
    )  # fmt: skip
    with pytest.raises(KeyError):
        await engine.store.write(broken)
    assert (await engine.wait(await engine.start("conditional_task"))).status == "completed"


async def test_a_step_blocking_the_event_loop_is_named_in_a_warning(
    engine_factory: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="orchd.engine.loopwatch")
    e = await engine_factory(["engine_flows"], name="db", block_warning=0.2)
    p = await e.wait(await e.start("blocking"))
    assert p.status == "completed"

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "orchd.engine.loopwatch"]

    # The watcher logs once the loop is free again: wait for its line.
    await wait_until(warnings, "a loop watch warning")
    assert any("blocks_the_loop" in w and "engine_flows.py" in w for w in warnings()), warnings()


async def test_an_action_is_taken_as_soon_as_a_read_shows_the_status_it_needs(
    engine: Engine, failures: FailurePlan
) -> None:
    # What a read shows has been committed; the process's actor may not have been told yet.
    # An action sent at that moment waits for it, instead of being refused as "running".
    for attempt in range(20):
        failures["flaky"] = 1
        pid = await engine.start("flaky_task")
        # Acts on the first read that shows it failed (every turn of the loop).
        await wait_until(partial(_is, engine, pid, "failed"), f"{pid} failed", every=0)
        assert await engine.retry(pid) in ("running", "completed"), attempt
        assert (await engine.wait(pid)).status == "completed"


async def _is(engine: Engine, pid: str, status: str) -> bool:
    return (await engine.get(pid)).status == status


def test_callback_tokens_never_start_with_a_dash() -> None:
    # `orchd callback TOKEN` would read a leading "-" as an option.
    tokens = {new_callback_token() for _ in range(2000)}
    assert len(tokens) == 2000
    assert not any(t.startswith("-") for t in tokens)
