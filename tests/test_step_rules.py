"""The step interpreter's rules hold alike on the process line and in a branch (issue 23):
each was written twice, and these are where the two copies had drifted apart. In-process, on
both backends."""

from __future__ import annotations

import pytest
from core_flows import Oss
from support.common import EngineFactory, settle

from orchd import Engine
from orchd.errors import CallbackNotFound

pytestmark = pytest.mark.engine


@pytest.fixture
def oss() -> Oss:
    return Oss()


@pytest.fixture
async def engine(engine_factory: EngineFactory, oss: Oss) -> Engine:
    return await engine_factory(["rules_flows", "core_flows"], resources={Oss: oss})


@pytest.mark.parametrize(
    ("workflow", "branch"),
    [("condition_raises_on_the_line", None), ("condition_raises_in_a_branch", "Both/0")],
)
async def test_a_condition_that_raises_fails_its_step(
    engine: Engine, workflow: str, branch: str | None
) -> None:
    # On the process line it crashed the actor, which ran the step again from its last
    # commit, backing off, for ever: the process stayed running.
    pid = await engine.start(workflow)
    process = await settle(engine, pid, "failed")
    assert "its condition raised KeyError" in (process.error or "")
    failed = [s for s in process.steps if s.status == "failed"]
    assert [(s.name, s.branch) for s in failed] == [("guarded work", branch)]


async def test_an_answer_for_an_action_that_raised_finds_no_wait_on_the_line_too(
    engine: Engine, oss: Oss
) -> None:
    # In a branch the token of an action that raised answers nothing (404); on the process
    # line the token stayed the process's, and the answer was refused as a wrong action (409).
    pid = await engine.start("main_order")
    process = await settle(engine, pid, "failed")
    assert "the OSS refused the order" in (process.error or "")
    with pytest.raises(CallbackNotFound):
        await engine.callback(oss.tokens[0], {"circuit": "C-1"})
    assert len(engine._runtime.waits) == 0
