"""Workflows for the acceptance tests (tests/test_e2e_cli.py, tests/test_e2e_api.py).

The daemon is another process, so the tests steer steps through files in ``$ORCHD_TEST_DIR``:
a held step waits until ``<process id>.release`` exists, and steps that must fail a given
number of times count their runs in ``<process id>.<step>.runs``.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from msgspec import Meta
from runfiles import held, record_run
from shared_steps import tick

from orchd import (
    Form,
    State,
    StepList,
    Target,
    callback_step,
    conditional,
    done,
    init,
    inputstep,
    retrystep,
    step,
    workflow,
)

#: How long a held step waits for its release file before giving up (and failing).
HOLD_LIMIT = 60.0


async def _held(process_id: str) -> None:
    if not await held(process_id, HOLD_LIMIT):
        raise TimeoutError(f"{process_id}.release did not appear within {HOLD_LIMIT:g} s")


# -- SYSTEM tasks --------------------------------------------------------------------------------


@step("greet")
def greet(state: State) -> State:
    # What the step saw of the engine's reserved keys, so the test can check them too.
    seen = {
        key: state.get(key)
        for key in ("process_id", "workflow_name", "workflow_target", "reporter")
    }
    return {"greeting": f"hello {state.get('name', 'world')}", "seen": seen}


@workflow("Say hello", target=Target.SYSTEM)
def e2e_hello() -> StepList:
    return init >> greet >> done


@workflow("A task the config schedules", target=Target.SYSTEM)
def e2e_tick() -> StepList:
    return init >> tick >> done


@step("hold")
async def hold(process_id: str) -> State:
    await _held(process_id)
    return {"held": True}


@step("after_hold")
def after_hold() -> State:
    return {"after_hold": True}


@workflow("Holds until the test releases it", target=Target.SYSTEM)
def e2e_hold() -> StepList:
    return init >> hold >> after_hold >> done


@step("explode")
def explode() -> State:
    raise RuntimeError("kaput: the e2e step always fails")


@workflow("Always fails", target=Target.SYSTEM)
def e2e_fail() -> StepList:
    return init >> explode >> done


@step("flaky")
def flaky(process_id: str) -> State:
    if record_run(process_id, "flaky") == 0:
        raise RuntimeError("flaky: first run fails")
    return {"flaky_ok": True}


@workflow("Fails once, then a retry succeeds", target=Target.SYSTEM)
def e2e_flaky() -> StepList:
    return init >> flaky >> done


@retrystep("unstable")
def unstable(process_id: str) -> State:
    if record_run(process_id, "unstable") < 2:
        raise ConnectionError("unstable: not yet")
    return {"unstable_ok": True}


@workflow("A retrystep that fails twice, then succeeds", target=Target.SYSTEM)
def e2e_retry_twice() -> StepList:
    return init >> unstable >> done


@retrystep("stuck", backoff=300.0)
def stuck() -> State:
    raise ConnectionError("stuck: the far side is down")


@workflow("A retrystep that waits a long time before its next attempt", target=Target.SYSTEM)
def e2e_stuck() -> StepList:
    return init >> stuck >> done


class Count(Form):
    count: Annotated[int, Meta(ge=1)]
    note: str = ""


@inputstep("ask_count")
def ask_count() -> type[Form]:
    return Count


@step("use_count")
def use_count(count: int) -> State:
    return {"doubled": count * 2}


@workflow("Asks the user for a count", target=Target.SYSTEM)
def e2e_ask() -> StepList:
    return init >> ask_count >> use_count >> done


@step("send_request")
def send_request(callback_token: str) -> State:
    return {"sent_token": callback_token}


@step("check_answer")
def check_answer(callback_result: dict[str, Any]) -> State:
    return {"answer_ok": callback_result.get("ok") is True}


@workflow("Waits for an external system's callback", target=Target.SYSTEM)
def e2e_callback() -> StepList:
    return init >> callback_step("external", send_request, check_answer) >> done


@step("decide")
def decide() -> State:
    return {"flag": False}


@step("maybe")
def maybe() -> State:
    return {"maybe_ran": True}


@step("always")
def always() -> State:
    return {"always_ran": True}


@workflow("Skips `maybe`: its condition is false", target=Target.SYSTEM)
def e2e_cond() -> StepList:
    skipped = conditional(lambda state: state.get("flag") is True)(maybe)
    return init >> decide >> skipped >> always >> done


# -- subscriptions ------------------------------------------------------------------------------


class CreateForm(Form):
    name: Annotated[str, Meta(min_length=1)]
    customer_id: str
    hold: bool = False


@step("make_subscription")
def make_subscription(name: str, customer_id: str) -> State:
    return {
        "subscription": {
            "product": "e2e-widget",
            "customer_id": customer_id,
            "description": f"widget {name}",
            "attributes": {"name": name},
        }
    }


@step("maybe_hold")
async def maybe_hold(process_id: str, hold: bool = False) -> State:
    if hold:
        await _held(process_id)
    return {}


@step("activate")
def activate(subscription: dict[str, Any]) -> State:
    return {"subscription": {**subscription, "status": "active"}}


@workflow("Create a widget", initial_input_form=CreateForm, target=Target.CREATE)
def e2e_create() -> StepList:
    return init >> make_subscription >> maybe_hold >> activate >> done


class ModifyForm(Form):
    subscription_id: UUID
    description: str


class Confirm(Form):
    ok: bool


@inputstep("confirm_change")
def confirm_change() -> type[Form]:
    return Confirm


@step("apply_change")
def apply_change(subscription: dict[str, Any], description: str) -> State:
    return {"subscription": {**subscription, "description": description}}


@workflow("Modify a widget (asks for confirmation)", initial_input_form=ModifyForm,
          target=Target.MODIFY)  # fmt: skip
def e2e_modify() -> StepList:
    return init >> confirm_change >> apply_change >> done


class TerminateForm(Form):
    subscription_id: UUID
    hold: bool = False


@step("tear_down")
def tear_down() -> State:
    return {"torn_down": True}


@workflow("Terminate a widget", initial_input_form=TerminateForm, target=Target.TERMINATE)
def e2e_terminate() -> StepList:
    return init >> maybe_hold >> tear_down >> done
