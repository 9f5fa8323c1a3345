"""Ports, core links and L2VPNs on the example nodes (``orchd.examples.products``).

``create_l2vpn`` asks in three pages (a form of several pages): how many ports, then which
ones (only the active ports no other service uses are offered), then the VLAN. The module
leaves out ``from __future__ import annotations``: the page of ports is built inside the
form's generator and refers to its ``count``, which only annotations evaluated at once see.

None of them talks to the OSS but to check that a port's node is there: the example keeps
their inventory in the subscriptions themselves, which is enough to show relations at work.
A port is in use by the core links and L2VPNs on it, so ``terminate_port`` is refused with
reason ``in_use`` while they last, and ``terminate_node`` while the node has ports.
"""

import random
from collections.abc import Generator
from typing import Annotated, Any
from uuid import UUID

from msgspec import Meta

from orchd import Form, State, StepList, Target, choices, done, init, step, workflow
from orchd.engine.builtins import Subscriptions
from orchd.errors import FormValidationError
from orchd.examples.oss import NodeFault, node_url
from orchd.examples.products import CoreLink, L2vpn, LinkEnd, Port, Sap, Speed, Vlan
from orchd.http import HttpClient

PortName = Annotated[str, Meta(min_length=1, max_length=64)]


# -- ports ------------------------------------------------------------------------------------


class CreatePortForm(Form):
    node: UUID
    name: PortName
    speed: Speed = 10000
    customer_id: str = "demo"


@step("check_node_in_oss")
async def check_node_in_oss(node: str, subscriptions: Subscriptions, http: HttpClient) -> State:
    found = await subscriptions.get(node)
    node_id = (found.attributes.get("node_id") if found else None) or ""
    answer = await http.request("GET", node_url(node_id), expect=(200, 404)) if node_id else None
    if answer is None or answer.status == 404:
        raise NodeFault(f"node subscription {node} has no node in the OSS")
    return {"node_name": found.attributes.get("name") if found else None}


@step("record_port")
def record_port(node: str, node_name: str, name: str, speed: int, customer_id: str) -> State:
    port = Port(
        customer_id=customer_id,
        description=f"{node_name} {name}",
        status="active",
        node=node,  # type: ignore[arg-type]
        name=name,
        speed=speed,  # type: ignore[arg-type]
    )
    return {"subscription": port}


@workflow("Create a port on a node", initial_input_form=CreatePortForm, product=Port)
def create_port() -> StepList:
    return init >> check_node_in_oss >> record_port >> done


@step("release_port")
def release_port(subscription: Port) -> State:
    return {"released": subscription.name}


@workflow("Remove a port", target=Target.TERMINATE, product=Port)
def terminate_port() -> StepList:
    return init >> release_port >> done


# -- core links -------------------------------------------------------------------------------


class CreateCoreLinkForm(Form):
    port_a: UUID
    port_b: UUID
    customer_id: str = "demo"


@step("plan_link")
def plan_link(port_a: str, port_b: str, customer_id: str) -> State:
    if port_a == port_b:
        raise ValueError("a core link joins two different ports")
    link = CoreLink(
        customer_id=customer_id,
        description="core link",
        status="provisioning",
        a=LinkEnd(port=port_a),  # type: ignore[arg-type]
        b=LinkEnd(port=port_b),  # type: ignore[arg-type]
    )
    return {"subscription": link}


@step("measure_latency")
def measure_latency(subscription: CoreLink) -> State:
    # A stand-in for a real measurement: latency is required once the link is active.
    subscription.latency_ms = round(random.uniform(0.2, 3.0), 2)
    subscription.status = "active"
    return {"subscription": subscription}


@workflow(
    "Create a core link between two ports", initial_input_form=CreateCoreLinkForm, product=CoreLink
)
def create_core_link() -> StepList:
    return init >> plan_link >> measure_latency >> done


@workflow("Remove a core link", target=Target.TERMINATE, product=CoreLink)
def terminate_core_link() -> StepList:
    return init >> done


# -- L2VPNs -----------------------------------------------------------------------------------


class L2vpnSize(Form):
    """Page 0: how many ports, and at what speed."""

    sap_count: Annotated[int, Meta(ge=2, le=16)]
    speed: int = 1000
    customer_id: str = "demo"


class L2vpnVlan(Form):
    """Page 2: the VLAN every service access point gets."""

    vlan: Vlan


def l2vpn_pages() -> Generator[type[Form], Any, State]:
    """Three pages: the size, then that many ports among the active ones no other service
    uses (read when the page is built, and again when the process starts), then a VLAN."""
    size = yield L2vpnSize
    count = size.sap_count

    class PickPorts(Form):
        ports: Annotated[
            list[choices("port", status="active", unused=True)],  # type: ignore[valid-type]
            Meta(min_length=count, max_length=count),
        ]

    picked = yield PickPorts
    if len(set(picked.ports)) != count:
        raise FormValidationError(
            "each port once", [{"loc": ["ports"], "msg": "a port is named twice"}]
        )
    vlan = yield L2vpnVlan
    return {
        "customer_id": size.customer_id,
        "ports": picked.ports,
        "vlan": vlan.vlan,
        "speed": size.speed,
    }


@step("record_l2vpn")
def record_l2vpn(ports: list[str], vlan: int, speed: int, customer_id: str) -> State:
    l2vpn = L2vpn(
        customer_id=customer_id,
        description=f"L2VPN vlan {vlan} over {len(ports)} ports",
        status="active",
        saps=[Sap(port=p, vlan=vlan) for p in ports],  # type: ignore[arg-type]
        speed=speed,
    )
    return {"subscription": l2vpn}


@workflow("Create an L2VPN between ports", initial_input_form=l2vpn_pages, product=L2vpn)
def create_l2vpn() -> StepList:
    return init >> record_l2vpn >> done


class ChangeSpeedForm(Form):
    subscription_id: UUID
    speed: Annotated[int, Meta(ge=1)]


@step("change_speed")
def change_speed(subscription: L2vpn, speed: int) -> State:
    subscription.speed = speed
    return {"subscription": subscription}


@workflow(
    "Change an L2VPN's speed",
    initial_input_form=ChangeSpeedForm,
    target=Target.MODIFY,
    product=L2vpn,
)
def modify_l2vpn_speed() -> StepList:
    return init >> change_speed >> done


@workflow("Remove an L2VPN", target=Target.TERMINATE, product=L2vpn)
def terminate_l2vpn() -> StepList:
    return init >> done


@step("check_saps")
async def check_saps(subscription: L2vpn, subscriptions: Subscriptions) -> State:
    for i, sap in enumerate(subscription.saps):
        port = await subscriptions.get(str(sap.port))
        if port is None or port.status != "active":
            raise ValueError(f"saps[{i}]: port {sap.port} is not active")
    return {"saps_checked": len(subscription.saps)}


@workflow("Check that every port of an L2VPN is active", target=Target.VALIDATE, product=L2vpn)
def validate_l2vpn() -> StepList:
    return init >> check_saps >> done
