"""Small workflows for the control API's tests (tests/test_api.py)."""

from __future__ import annotations

from typing import Any

from shared_steps import boom

from orchd import (
    Form,
    State,
    StepList,
    Target,
    callback_step,
    done,
    init,
    inputstep,
    step,
    workflow,
)
from orchd.testing import Gate


class NodeForm(Form):
    name: str
    size: int = 1


class Confirm(Form):
    ok: bool
    note: str = ""


class Count(Form):
    count: int


@step("make_subscription")
def make_subscription(name: str, size: int) -> State:
    return {
        "subscription": {"product": "node", "customer_id": "c1", "description": name},
        "double": size * 2,
    }


@workflow("Create a node", initial_input_form=NodeForm)
def api_create() -> StepList:
    return init >> make_subscription >> done


@inputstep("confirm")
def confirm() -> type[Form]:
    return Confirm


@workflow("Modify a node", target=Target.MODIFY)
def api_modify() -> StepList:
    return init >> confirm >> done


@inputstep("ask_count")
def ask_count() -> type[Form]:
    return Count


@workflow("Ask for a count", target=Target.SYSTEM)
def api_ask() -> StepList:
    return init >> ask_count >> done


@workflow("Always fails", target=Target.SYSTEM)
def api_fail() -> StepList:
    return init >> boom >> done


@step("hold")
async def hold(gate: Gate) -> State:
    await gate.passage()
    return {"held": True}


@workflow("Waits for the test's gate", target=Target.SYSTEM)
def api_gated() -> StepList:
    return init >> hold >> done


@step("send_request")
def send_request(callback_token: str) -> State:
    return {"sent_with": callback_token}


@step("check_answer")
def check_answer(callback_result: dict[str, Any]) -> State:
    return {"checked": callback_result.get("ok") is True}


@workflow("Waits for an external system", target=Target.SYSTEM)
def api_callback() -> StepList:
    return init >> callback_step("external", send_request, check_answer) >> done
