"""A write that fails for a reason other than the database never strands a process (README
"Guarantees")."""

from __future__ import annotations

from support.daemons import DaemonFactory


def test_a_process_whose_checkpoint_hit_a_bug_runs_again_from_its_last_commit(
    daemon_factory: DaemonFactory,
) -> None:
    # The third commit raises inside the writer's transaction (an unexpected bug, not
    # trouble with the database): that checkpoint is not committed.
    daemon = daemon_factory(env={"ORCHD_FAULTS": "in_commit@3!"})
    pid = daemon.start_process("quick")
    process = daemon.wait_process(pid, ("completed",), timeout=10)
    assert [s["name"] for s in process["steps"]] == ["init", "hello", "done"]
    assert daemon.request("GET", "/api/health")[0] == 200
    daemon.wait_for_log("runs again from its last commit")
