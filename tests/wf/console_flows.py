"""Workflows the web console's tests drive (tests/test_console*.py) in a real daemon.

Steps report through files in ``$ORCHD_TEST_DIR`` (see runfiles.py): ``flaky`` fails on its
first run only, so a retry from the console completes the process.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

from msgspec import Meta
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
    step,
    workflow,
)


class Speed(enum.Enum):
    SLOW = "1G"
    FAST = "10G"


class PortAnswer(Form):
    port_name: Annotated[str, Meta(min_length=1, description="as the router names it")]
    vlan: Annotated[int, Meta(ge=1, le=4094)]
    speed: Speed = Speed.SLOW
    confirm: bool = False


@inputstep("ask port")
def ask_port() -> type[Form]:
    return PortAnswer


@step("configure")
def configure(port_name: str, vlan: int, speed: str) -> State:
    return {"configured": f"{port_name}.{vlan} at {speed}"}


@workflow("Asks an operator for a port", target=Target.SYSTEM)
def console_ask() -> StepList:
    return init >> ask_port >> configure >> done


@step("flaky")
def flaky(process_id: str) -> State:
    if record_run(process_id, "flaky") == 0:
        raise RuntimeError("flaky: the first run fails")
    return {"flaky_ok": True}


@workflow("Fails once, then a retry succeeds", target=Target.SYSTEM)
def console_flaky() -> StepList:
    return init >> flaky >> done


@step("explode")
def explode() -> State:
    raise RuntimeError("kaput: this step always fails")


@step("after explode")
def after_explode() -> State:
    return {"went_on": True}


@workflow("Always fails at explode", target=Target.SYSTEM)
def console_fail() -> StepList:
    return init >> explode >> after_explode >> done


@step("hello")
def hello(name: str = "world") -> State:
    return {"greeting": f"hello {name}"}


@workflow("Says hello", target=Target.SYSTEM)
def console_quick() -> StepList:
    return init >> hello >> done


class WidgetForm(Form):
    name: Annotated[str, Meta(min_length=1)]
    customer_id: str
    size: Annotated[int, Meta(ge=1)] = 1


@step("make widget")
def make_widget(name: str, customer_id: str, size: int) -> State:
    return {
        "subscription": {
            "product": "console-widget",
            "customer_id": customer_id,
            "description": f"widget {name}",
            "attributes": {"size": size},
            "status": "active",
        }
    }


@workflow("Create a widget", initial_input_form=WidgetForm, target=Target.CREATE)
def console_create() -> StepList:
    return init >> make_widget >> done


@step("send request")
def send_request(callback_token: str) -> State:
    return {"request_sent": True}


@step("check answer")
def check_answer(callback_result: Any) -> State:
    return {"answer": callback_result}


@workflow("Waits for an external system", target=Target.SYSTEM)
def console_callback() -> StepList:
    return init >> callback_step("ask oss", send_request, check_answer) >> done


@step("pick names")
def pick_names() -> State:
    return {"inputs": [{"name": "a"}, {"name": "b"}]}


@workflow("Fans out to two children", target=Target.SYSTEM)
def console_parent() -> StepList:
    fan = children("greet each", workflow="console_quick", inputs="inputs", into="results")
    return init >> pick_names >> fan >> done
