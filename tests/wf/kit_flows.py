"""Workflows for the authoring kit's tests (tests/test_testing_kit.py).

They show what workflow authors write: steps that take typed State values, a ``Gate`` and
the shared ``HttpClient`` as resources, and talk to the fake OSS at ``state["oss_url"]``.
"""

from __future__ import annotations

import threading
from datetime import datetime
from uuid import UUID

from orchd import Form, State, StepList, Target, done, init, inputstep, step, workflow
from orchd.http import HttpClient
from orchd.testing import Gate


class NodeForm(Form):
    name: str
    oss_url: str


@step("plan")
def plan(node_id: UUID, due: datetime) -> State:
    return {"planned": {"node": node_id, "weekday": due.strftime("%A"), "at": due}}


@step("where am I")
def where_am_i() -> State:
    return {"thread": threading.current_thread().name}


@step("where am I, async")
async def where_am_i_async() -> State:
    return {"thread": threading.current_thread().name}


@step("opaque")
def opaque() -> State:
    return {"thing": object()}


@workflow("Returns a value State cannot hold", target=Target.SYSTEM)
def kit_opaque() -> StepList:
    return init >> opaque >> done


@step("count")
def count(amount: int) -> State:
    return {"doubled": amount * 2}


@workflow("Doubles an int from its input", target=Target.SYSTEM)
def kit_count() -> StepList:
    return init >> count >> done


@step("hold")
async def hold(gate: Gate) -> State:
    await gate.passage()
    return {"held": True}


@step("after hold")
def after_hold() -> State:
    return {"after": True}


@workflow("Holds at the test's gate", target=Target.SYSTEM)
def kit_gated() -> StepList:
    return init >> hold >> after_hold >> done


@step("order node")
async def order_node(name: str, oss_url: str, http: HttpClient) -> State:
    node = await http.post_json(f"{oss_url}/nodes", {"name": name, "customer_id": "kit"})
    return {"node_id": node["id"], "node_status": node["status"]}


@step("read node")
async def read_node(node_id: str, oss_url: str, http: HttpClient) -> State:
    node = await http.get_json(f"{oss_url}/nodes/{node_id}")
    return {"node_status": node["status"]}


@workflow("Orders a node from the OSS", initial_input_form=NodeForm)
def kit_order() -> StepList:
    return init >> order_node >> read_node >> done


class Confirm(Form):
    ok: bool


@inputstep("confirm")
def confirm() -> type[Form]:
    return Confirm
