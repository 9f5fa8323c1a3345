"""What the README's CLI examples act on, beside the README's own first workflow module.

The CLI block of the README (tests/test_readme.py runs it against a daemon) retries, skips,
aborts, resumes and answers processes; these workflows put processes in the states those
commands need: failed, suspended on a maintenance window, awaiting a callback, a parent with
children, and the task the block starts with an idempotency key.
"""

from __future__ import annotations

from typing import Any

import runfiles

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


@step("push the configuration")
def push_configuration() -> State:
    raise RuntimeError("the router refused the configuration")


@workflow("Push a configuration the router refuses", target=Target.SYSTEM)
def refused_push() -> StepList:
    return init >> push_configuration >> done


class MaintenanceWindow(Form):
    confirm: bool
    window: str


@inputstep("confirm the maintenance window")
async def confirm_window() -> type[Form]:
    return MaintenanceWindow


@workflow("Change a node in a maintenance window", target=Target.SYSTEM)
def maintenance() -> StepList:
    return init >> confirm_window >> done


@step("order the port")
def order_port(process_id: str, callback_token: str) -> State:
    # The external system keeps the token (a capability: it stays out of State); here the
    # external system is the test, which reads it from its folder.
    (runfiles.folder() / f"{process_id}.token").write_text(callback_token)
    return {"ordered": True}


@step("check the answer")
def check_answer(callback_result: dict[str, Any]) -> State:
    return {"answer": callback_result}


@workflow("Order a port from an external system", target=Target.SYSTEM)
def order_port_externally() -> StepList:
    return init >> callback_step("await the port", order_port, check_answer) >> done


@step("list the nodes")
def list_nodes() -> State:
    return {"node_inputs": [{"name": "n1"}, {"name": "n2"}]}


@workflow("Create several nodes", target=Target.SYSTEM)
def create_nodes() -> StepList:
    return (
        init
        >> list_nodes
        >> children("create each", workflow="create_node", inputs="node_inputs")
        >> done
    )


@step("validate the nodes")
def validate() -> State:
    return {"valid": True}


@workflow("The nightly validation", target=Target.SYSTEM)
def nightly() -> StepList:
    return init >> validate >> done
