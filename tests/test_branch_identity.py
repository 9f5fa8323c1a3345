"""Branches and code changes (README "Changing workflows safely" and "Parallel branches"): a branch
goes on at its step's key in the
code loaded now; when the key is gone the process fails, and ``check --workflows`` says so first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.common import Open
from test_step_identity import check

from orchd import Engine
from orchd.dsl import branch_steps
from orchd.errors import InvalidTransition


async def failed_at_apply(engine: Engine, tmp_path: Path) -> str:
    """A process whose branch 1 failed at apply (branches 0 and 2 finished)."""
    fail = tmp_path / "fail"
    fail.touch()
    pid = await engine.start(
        "apply_each", {"items": [1, 2, 3], "fail_item": 2, "fail_file": str(fail)}
    )
    process = await engine.wait(pid, timeout=10)
    assert process.status == "failed", process.error
    fail.unlink()
    return pid


async def test_a_branch_goes_on_at_its_key_in_new_code(open_engine: Open, tmp_path: Path) -> None:
    pid = await failed_at_apply(await open_engine("fork_v1"), tmp_path)
    engine = await open_engine("fork_v2")  # apply renamed (same key), confirm added before
    await engine.retry(pid)
    process = await engine.wait(pid, timeout=10)
    assert process.status == "completed", process.error
    # Branch 1 stood at apply: the renamed step ran, the step added before it never did.
    assert [r["applied"] for r in process.state["out"]] == [2, 6, 6]
    assert not any(s.name == "confirm" for s in process.steps)


async def test_a_branch_whose_key_is_gone_fails_and_runs_nothing(
    open_engine: Open, tmp_path: Path
) -> None:
    pid = await failed_at_apply(await open_engine("fork_v1"), tmp_path)
    engine = await open_engine("fork_v3")
    before = len((await engine.get(pid)).steps)
    with pytest.raises(InvalidTransition, match="step key 'apply' no longer exists"):
        await engine.retry(pid)
    process = await engine.get(pid)
    assert process.status == "failed" and len(process.steps) == before


@pytest.mark.sqlite_only  # reads the SQLite file itself
async def test_check_workflows_names_a_branch_new_code_would_strand(
    open_engine: Open, tmp_path: Path
) -> None:
    pid = await failed_at_apply(await open_engine("fork_v1"), tmp_path)
    db = tmp_path / "orchd.db"
    assert check(db, "fork_v2").returncode == 0
    result = check(db, "fork_v3", json_output=True)
    assert result.returncode == 1, result.stderr
    [found] = json.loads(result.stdout)["stranded"]
    assert found["id"] == pid
    assert found["problem"] == (
        "workflow changed: step key 'apply' no longer exists (branch 'Each/1')"
    )


def test_branch_paths_name_branches_of_nested_forks() -> None:
    from branch_flows import fan_in_branch, halves

    outer = next(s for s in fan_in_branch.steps if s.forks)
    assert [s.name for s in branch_steps(outer, "Outer/0") or ()] == ["Each", "sum them"]
    assert [s.name for s in branch_steps(outer, "Outer/0/Each/7") or ()] == ["configured sum"]
    assert branch_steps(outer, "Outer/2") is None and branch_steps(outer, "Other/0") is None
    each = next(s for s in halves.steps if s.forks)
    assert [s.name for s in branch_steps(each, "Each/3/Halves/1") or ()] == ["right half"]
