"""Workflows for ``orchd wait`` and the CLI's incident views (tests/test_cli_wait.py,
tests/test_cli_views.py).

Nothing here sleeps: a process moves on when the test acts (a retry, an operator's callback
answer, a resume of a child), so a test knows which status the process stands in.
"""

from __future__ import annotations

from typing import Any

from runfiles import record_run

from orchd import (
    Form,
    State,
    StepList,
    Target,
    callback_step,
    children,
    done,
    init,
    inputstep,
    retrystep,
    step,
    workflow,
)

# -- waits through waiting and awaiting_callback ------------------------------------------------


@retrystep("reach the far side", backoff=3600.0)
def reach(process_id: str) -> State:
    # Fails once; the next attempt is an hour away, so the process stays waiting until the
    # test retries it.
    if record_run(process_id, "reach") == 0:
        raise ConnectionError("the far side is down")
    return {"reached": True}


@step("send the request")
def send_request(callback_token: str) -> State:
    return {"sent": True}


@step("check the answer")
def check_answer(callback_result: dict[str, Any]) -> State:
    return {"answer": callback_result.get("answer")}


@workflow("Waits for a retry, then for a callback, then completes", target=Target.SYSTEM)
def wait_through() -> StepList:
    ask = callback_step("ask the far side", send_request, check_answer)
    return init >> reach >> ask >> done


# -- a parent awaiting its children -------------------------------------------------------------


class Go(Form):
    go: bool = True


@inputstep("confirm")
def confirm() -> type[Form]:
    return Go


@workflow("A child that asks a person before it completes", target=Target.SYSTEM)
def wait_asking_child() -> StepList:
    return init >> confirm >> done


@step("plan one child")
def plan_one() -> State:
    return {"child_inputs": [{}]}


@workflow("Waits for one child that asks a person", target=Target.SYSTEM)
def wait_parent() -> StepList:
    fan = children("run the child", workflow="wait_asking_child", inputs="child_inputs")
    return init >> plan_one >> fan >> done


@step("note")
def note() -> State:
    return {"noted": True}


@workflow("A child that completes at once", target=Target.SYSTEM)
def wait_quick_child() -> StepList:
    return init >> note >> done


@step("plan two children")
def plan_two() -> State:
    return {"child_inputs": [{}, {}]}


@workflow("Fans out two children that complete at once", target=Target.SYSTEM)
def wait_fanout() -> StepList:
    fan = children("run the children", workflow="wait_quick_child", inputs="child_inputs")
    return init >> plan_two >> fan >> done


# -- failures -----------------------------------------------------------------------------------


def parse_reply(reply: str) -> int:
    return int(reply)  # raises for a reply that is not a number


@step("read the reply")
async def read_reply() -> State:
    return {"value": parse_reply("not a number")}


@step("after the reply")
def after_reply() -> State:
    return {"after": True}


@workflow("Fails in a helper its async step calls", target=Target.SYSTEM)
def wait_broken() -> StepList:
    return init >> read_reply >> after_reply >> done


@step("do the work")
def do_work() -> State:
    raise RuntimeError("the work failed: disk full")


@workflow("Fails in a sync step", target=Target.SYSTEM)
def wait_broken_sync() -> StepList:
    return init >> do_work >> after_reply >> done
