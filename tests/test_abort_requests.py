"""An abort asked of a running process is committed before it is acknowledged (issue 26 item
3): the answer says it is requested, the audit trail has it at once, and a restart before the
step boundary applies it instead of running the step again."""

from __future__ import annotations

from support.common import engine_fixture
from support.daemons import DaemonFactory

from orchd.engine import Engine
from orchd.testing import Gate

engine = engine_fixture("engine_flows")


async def test_an_abort_of_a_running_process_is_in_the_audit_trail_before_it_applies(
    engine: Engine, gate: Gate
) -> None:
    pid = await engine.start("slow_task", reporter="alice")
    await gate.reached()
    assert await engine.abort(pid, reporter="bob") == "running"  # requested
    held = await engine.get(pid)
    assert held.status == "running"
    assert [(a.action, a.actor, a.detail) for a in held.actions][-1] == (
        "abort",
        "bob",
        "requested",
    )
    gate.open()
    done = await engine.wait(pid)
    assert done.status == "aborted"
    assert [a.action for a in done.actions] == ["start", "abort", "abort"]


def test_an_abort_acknowledged_before_a_sigkill_is_applied_after_the_restart(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory()
    pid = daemon.start_process("slow_sync", {"seconds": 60})  # a sync step that hangs
    daemon.wait_step_started(pid, "sync nap")
    status, answer = daemon.request("POST", f"/api/processes/{pid}/abort")
    assert (status, answer["status"], answer.get("requested")) == (202, "running", True)
    daemon.kill()
    daemon.restart()
    process = daemon.wait_process(pid, ("aborted", "completed"))
    assert process["status"] == "aborted"
    assert daemon.step_runs(pid, "sync nap") == 1  # the step did not run again
    assert [a["detail"] for a in process["actions"] if a["action"] == "abort"][0] == "requested"
