"""Workflows for the console's incident views (tests/test_console_views.py): a callback whose
validate step refuses the answer (a retry may ask again), a parent whose children each handle
an element of a list, and a foreach of many branches where one branch waits for a retry (the
timeline's lanes, waits and retries).
"""

from __future__ import annotations

from typing import Any

from runfiles import record_run

from orchd import (
    State,
    StepList,
    Target,
    begin,
    callback_step,
    children,
    done,
    foreach,
    init,
    retrystep,
    step,
    workflow,
)


@step("send order")
def send_order(callback_token: str) -> State:
    return {"order_sent": True}


@step("check order")
def check_order(callback_result: Any) -> State:
    if callback_result != {"ok": True}:
        raise RuntimeError(f"the OSS answered {callback_result!r}")
    return {"ordered": True}


@workflow("Orders from an OSS that may answer badly", target=Target.SYSTEM)
def view_order() -> StepList:
    return init >> callback_step("await order", send_order, check_order) >> done


@step("configure one")
def configure_one(port: str, vlan: int) -> State:
    return {"configured": f"{port}.{vlan}"}


@workflow("Configures one port", target=Target.SYSTEM)
def view_child() -> StepList:
    return init >> configure_one >> done


@workflow("Configures each port in a child", target=Target.SYSTEM)
def view_parent() -> StepList:
    return init >> children("configure each", workflow="view_child", inputs="ports") >> done


@retrystep("settle port", backoff=0.05)
def settle_port(process_id: str, item: int, item_index: int) -> State:
    # The fourth branch fails its first attempt: it waits, and its retry succeeds.
    if item_index == 3 and record_run(process_id, f"settle-{item_index}") == 0:
        raise RuntimeError("port 3: not settled yet")
    return {"settled": item}


@workflow("Settles twenty ports at once", target=Target.SYSTEM)
def view_fan_out() -> StepList:
    return init >> foreach("Settle ports", "ports", begin >> settle_port, into="settled") >> done
