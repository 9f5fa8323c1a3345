"""The "node" product (``orchd.examples.products.Node``): create, modify and terminate a
network node through the OSS.

A node subscription's attributes are ``{"node_id", "name", "role"}`` (and ``ports`` once some
are configured); ``node_id`` is the OSS's id, required from ``provisioning`` on. The OSS
provisions and deletes asynchronously, so the workflows poll it, in a ``retrystep``: an OSS
that is down or slow makes the process ``waiting``, not ``failed``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from msgspec import Meta

from orchd import (
    Form,
    State,
    StepList,
    Target,
    abort,
    conditional,
    done,
    init,
    inputstep,
    retrystep,
    step,
    workflow,
)
from orchd.examples.oss import (
    POLL_DEADLINE,
    POLL_INTERVAL,
    POLL_MAX_INTERVAL,
    NodeFault,
    node_id_of,
    node_url,
)
from orchd.http import HttpClient, poll

Role = Literal["core", "edge", "access"]
Name = Annotated[str, Meta(min_length=1, max_length=63)]


async def _wait_for(http: HttpClient, node_id: str, wanted: str) -> str:
    """Poll the node until its status is ``wanted`` (``"gone"``: until the OSS answers 404)."""
    url = node_url(node_id)

    async def check() -> str | None:
        answer = await http.request("GET", url, expect=(200, 404))
        status = "gone" if answer.status == 404 else str(answer.json().get("status"))
        if status == wanted:
            return status
        if status in ("error", "gone"):
            raise NodeFault(f"node {node_id} is {status} while waiting for {wanted}")
        return None

    return await poll(
        check,
        interval=POLL_INTERVAL,
        max_interval=POLL_MAX_INTERVAL,
        deadline=POLL_DEADLINE,
        what=f"node {node_id} to be {wanted}",
    )


# -- create ----------------------------------------------------------------------------------


class CreateNodeForm(Form):
    name: Name
    customer_id: str = "demo"
    role: Role = "edge"


@step("reserve_node")
async def reserve_node(
    name: str, customer_id: str, role: str, process_id: str, http: HttpClient
) -> State:
    # The key makes the POST safe to repeat: a retry, or this step run again after a crash,
    # gets the node the first attempt created instead of a second one.
    node = await http.post_json(
        node_url(),
        {"name": name, "customer_id": customer_id, "role": role},
        headers={"Idempotency-Key": f"{process_id}:reserve_node"},
        idempotent=True,
    )
    return {
        "node_id": node["id"],
        "subscription": {
            "product": "node",
            "customer_id": customer_id,
            "description": f"{role} node {name}",
            "status": "provisioning",
            "attributes": {"node_id": node["id"], "name": name, "role": role},
        },
    }


@retrystep("wait_until_active", max_attempts=5, backoff=10.0)
async def wait_until_active(node_id: str, http: HttpClient) -> State:
    return {"node_status": await _wait_for(http, node_id, "active")}


@step("activate")
async def activate(subscription: dict[str, Any]) -> State:
    return {"subscription": {**subscription, "status": "active"}}


@workflow(
    "Create a network node", initial_input_form=CreateNodeForm, target=Target.CREATE, product="node"
)
def create_node() -> StepList:
    return init >> reserve_node >> wait_until_active >> activate >> done


# -- modify ----------------------------------------------------------------------------------


class ModifyNodeForm(Form):
    subscription_id: UUID
    description: str | None = None
    role: Role | None = None


class MaintenanceWindow(Form):
    """Asked before a core node changes: changing one disturbs traffic."""

    confirm: bool
    window: str


@step("plan_change")
async def plan_change(
    subscription: dict[str, Any], description: str | None = None, role: str | None = None
) -> State:
    # Fill in what the form left out, so later steps (and the conditional) see the outcome.
    attributes = subscription.get("attributes") or {}
    return {
        "description": description if description is not None else subscription["description"],
        "role": role if role is not None else attributes.get("role", "edge"),
    }


@inputstep("confirm_maintenance")
async def confirm_maintenance() -> type[Form]:
    return MaintenanceWindow


@step("update_node")
async def update_node(
    subscription: dict[str, Any],
    description: str,
    role: str,
    http: HttpClient,
    window: str | None = None,
) -> State:
    change: dict[str, Any] = {"description": description, "role": role}
    if window:
        change["maintenance_window"] = window
    await http.put_json(node_url(node_id_of(subscription)), change)
    attributes = {**(subscription.get("attributes") or {}), "role": role}
    return {"subscription": {**subscription, "description": description, "attributes": attributes}}


def _is_core(state: State) -> bool:
    return state.get("role") == "core"


def _declined(state: State) -> bool:
    return not state.get("confirm")


@workflow(
    "Change a node's description or role",
    initial_input_form=ModifyNodeForm,
    target=Target.MODIFY,
    product="node",
)
def modify_node() -> StepList:
    # A core node waits for an operator to confirm a maintenance window; declining aborts
    # (the nested conditional only runs for core nodes, so the other roles never abort).
    return (
        init
        >> plan_change
        >> conditional(_is_core)(confirm_maintenance >> conditional(_declined)(abort))
        >> update_node
        >> done
    )


# -- terminate -------------------------------------------------------------------------------


class TerminateNodeForm(Form):
    subscription_id: UUID


@step("delete_node")
async def delete_node(subscription: dict[str, Any], http: HttpClient) -> State:
    node_id = node_id_of(subscription)
    # 404: already gone (this step ran before a crash, or someone deleted it by hand).
    await http.delete(node_url(node_id), expect=(200, 202, 204, 404))
    return {"node_id": node_id}


@retrystep("wait_until_gone", max_attempts=5, backoff=10.0)
async def wait_until_gone(node_id: str, http: HttpClient) -> State:
    return {"node_status": await _wait_for(http, node_id, "gone")}


@workflow(
    "Delete a network node",
    initial_input_form=TerminateNodeForm,
    target=Target.TERMINATE,
    product="node",
)
def terminate_node() -> StepList:
    return init >> delete_node >> wait_until_gone >> done
