"""Whatever step code raises or returns, the process ends in a status a person can act on (README
"Guarantees")."""

from __future__ import annotations

import pytest
from support.common import engine_fixture

from orchd import Engine

pytestmark = pytest.mark.anyio


engine = engine_fixture("failure_flows")


async def test_a_step_raising_cancelled_error_fails_instead_of_hanging(engine: Engine) -> None:
    p = await engine.wait(await engine.start("cancels_itself"), timeout=10)
    assert p.status == "failed"
    assert p.steps[-1].name == "raise CancelledError" and p.steps[-1].status == "failed"
    assert p.error is not None and "CancelledError" in p.error


async def test_a_retried_step_that_raises_cancelled_error_fails_again(
    engine: Engine,
) -> None:
    pid = await engine.start("cancels_itself")
    await engine.wait(pid, timeout=10)
    assert (await engine.retry(pid)) == "running"
    assert (await engine.wait(pid, timeout=10)).status == "failed"


@pytest.mark.parametrize(
    ("workflow", "where"),
    [("returns_nan", "ratio.values[1] = nan"), ("returns_infinity", "limit = -inf")],
)
async def test_a_step_returning_a_non_finite_number_fails_naming_it(
    engine: Engine, workflow: str, where: str
) -> None:
    p = await engine.wait(await engine.start(workflow), timeout=10)
    assert p.status == "failed"
    assert p.error is not None and where in p.error and "JSON" in p.error
    assert "ratio" not in p.state and "limit" not in p.state


async def test_a_null_beside_finite_numbers_is_stored_as_given(engine: Engine) -> None:
    p = await engine.wait(await engine.start("returns_null"), timeout=10)
    assert p.status == "completed"
    assert p.state["nothing"] is None and p.state["ratio"] == 0.5
