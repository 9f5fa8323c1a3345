"""Products for the product tests: a node, a port on a node, an L2VPN whose service access
points sit on ports; and their CREATE, MODIFY, TERMINATE and VALIDATE workflows.

No ``from __future__ import annotations`` here: the pages of a form built inside its generator
refer to the generator's own variables (``count``), which only annotations evaluated at once
can see."""

import asyncio
from collections.abc import Generator
from typing import Annotated, Any

from msgspec import Meta
from runfiles import record_run
from steering import FailurePlan

from orchd import (
    Block,
    Form,
    Product,
    Ref,
    State,
    Target,
    choices,
    done,
    init,
    inputstep,
    product,
    required,
    step,
    workflow,
)


class NodeBlock(Block):
    name: Annotated[str | None, required("provisioning")] = None
    ims_id: Annotated[int | None, required("active")] = None


@product("node", description="A router")
class Node(Product):
    node: NodeBlock


@product("port", description="A port on a node")
class Port(Product):
    name: str
    node: Ref[Node]


class SapBlock(Block):
    port: Ref[Port]
    vlan: Annotated[int | None, required("provisioning")] = None


@product("l2vpn", description="A layer-2 VPN between ports")
class L2vpn(Product):
    saps: list[SapBlock]
    speed: int = 1000


# -- nodes ------------------------------------------------------------------------------------


class NodeForm(Form):
    customer_id: str
    name: str
    ims_id: int | None = None
    status: str = "active"


@step("Build node")
def build_node(customer_id: str, name: str, ims_id: int | None, status: str) -> State:
    model = Node(
        customer_id=customer_id,
        description=f"node {name}",
        status="initial",
        node=NodeBlock(name=name, ims_id=ims_id),
    )
    return {"subscription": model, "wanted_status": status}


@step("Activate")
def activate(subscription: Node, wanted_status: str) -> State:
    subscription.status = wanted_status  # type: ignore[assignment]
    return {"subscription": subscription}


@workflow("Create a node", initial_input_form=NodeForm, product=Node)
def create_node() -> object:
    return init >> build_node >> activate >> done


@step("Rename node")
def rename_node(subscription: Node, new_name: str) -> State:
    subscription.node.name = new_name
    return {"subscription": subscription}


@workflow("Rename a node", target=Target.MODIFY, product="node")
def modify_node() -> object:
    return init >> rename_node >> done


@step("Forget the name")
def forget_name(subscription: Node) -> State:
    subscription.node.name = None
    return {"subscription": subscription}


@workflow("Blank a node's name (refused when active)", target=Target.MODIFY, product="node")
def blank_node() -> object:
    return init >> forget_name >> done


@step("Deprovision node")
def deprovision_node() -> State:
    return {}


@workflow("Terminate a node", target=Target.TERMINATE, product="node")
def terminate_node() -> object:
    return init >> deprovision_node >> done


@step("Compare with the inventory")
def compare_node(subscription: Node, resources: FailurePlan) -> State:
    resources.check("compare_node")
    return {"checked": subscription.node.name}


@workflow("Check a node against the inventory", target=Target.VALIDATE, product=Node)
def validate_node() -> object:
    return init >> compare_node >> done


@workflow(
    "Bring a disabled node back",
    target=Target.MODIFY,
    product=Node,
    usable_when=("disabled",),
)
def enable_node() -> object:
    return init >> deprovision_node >> done


# -- ports ------------------------------------------------------------------------------------


class PortForm(Form):
    customer_id: str
    name: str
    node_id: str


@step("Build port")
def build_port(customer_id: str, name: str, node_id: str) -> State:
    sub = {
        "product": "port",
        "customer_id": customer_id,
        "description": f"port {name}",
        "status": "active",
        "attributes": {"name": name, "node": node_id},
    }
    return {"subscription": sub}


@workflow("Create a port", initial_input_form=PortForm, product=Port)
def create_port() -> object:
    return init >> build_port >> done


@workflow("Terminate a port", target=Target.TERMINATE, product=Port)
def terminate_port() -> object:
    return init >> deprovision_node >> done


# -- L2VPNs -----------------------------------------------------------------------------------


class L2vpnForm(Form):
    customer_id: str
    ports: list[str]
    vlan: int | None = 100


@step("Build L2VPN")
def build_l2vpn(customer_id: str, ports: list[str], vlan: int | None) -> State:
    model = L2vpn(
        customer_id=customer_id,
        description="l2vpn",
        status="active",
        saps=[SapBlock(port=p, vlan=vlan) for p in ports],  # type: ignore[arg-type]
    )
    return {"subscription": model}


@workflow("Create an L2VPN", initial_input_form=L2vpnForm, product=L2vpn)
def create_l2vpn() -> object:
    return init >> build_l2vpn >> done


@step("Change speed")
def change_speed(subscription: L2vpn, speed: int) -> State:
    subscription.speed = speed
    for sap in subscription.saps:
        sap.vlan = (sap.vlan or 0) + 1
    return {"subscription": subscription}


@workflow("Change an L2VPN's speed", target=Target.MODIFY, product=L2vpn)
def modify_l2vpn() -> object:
    return init >> change_speed >> done


@step("Read a node as an L2VPN")
def wrong_product(subscription: L2vpn) -> State:
    return {"speed": subscription.speed}


@workflow("Read a node as the wrong product", target=Target.MODIFY, product=Node)
def misread_node() -> object:
    return init >> wrong_product >> done


@step("Hold until restarted")
async def hold(process_id: str) -> State:
    # The first run waits for a SIGKILL; the run after the restart goes on.
    if record_run(process_id, "hold") == 0:
        await asyncio.sleep(3600)
    return {"held": True}


@workflow(
    "Create an L2VPN, held after its subscription is saved",
    initial_input_form=L2vpnForm,
    product=L2vpn,
)
def create_l2vpn_held() -> object:
    return init >> build_l2vpn >> hold >> done


# -- forms of several pages -------------------------------------------------------------------


class L2vpnSize(Form):
    sap_count: Annotated[int, Meta(ge=2, le=8)]
    speed: int = 1000


class L2vpnVlan(Form):
    vlan: Annotated[int, Meta(ge=1, le=4094)]


def l2vpn_pages() -> Generator[type[Form], Any, State]:
    size = yield L2vpnSize
    count = size.sap_count

    class PickPorts(Form):
        ports: Annotated[
            list[choices("port", status="active", unused=True)],  # type: ignore[valid-type]
            Meta(min_length=count, max_length=count),
        ]

    picked = yield PickPorts
    vlan = yield L2vpnVlan
    return {"customer_id": "acme", "ports": picked.ports, "vlan": vlan.vlan, "speed": size.speed}


@step("Build L2VPN of the pages")
def build_paged_l2vpn(customer_id: str, ports: list[str], vlan: int, speed: int) -> State:
    model = L2vpn(
        customer_id=customer_id,
        description=f"l2vpn over {len(ports)} ports",
        status="active",
        saps=[SapBlock(port=p, vlan=vlan) for p in ports],  # type: ignore[arg-type]
        speed=speed,
    )
    return {"subscription": model}


@workflow("Create an L2VPN, asked in three pages", initial_input_form=l2vpn_pages, product=L2vpn)
def create_l2vpn_paged() -> object:
    return init >> build_paged_l2vpn >> done


class NewSpeed(Form):
    speed: int


@inputstep("Ask the new speed, then confirm")
def ask_speed(subscription: L2vpn) -> Generator[type[Form], Any, State]:
    speed = yield NewSpeed

    class Confirm(Form):
        confirm: bool
        note: str = f"from {subscription.speed} to {speed.speed}"

    confirmed = yield Confirm
    return {"speed": speed.speed, "confirmed": confirmed.confirm}


@workflow("Change an L2VPN's speed, asked in two pages", target=Target.MODIFY, product=L2vpn)
def respeed_l2vpn() -> object:
    return init >> ask_speed >> change_speed >> done


# -- the console's forms (tests/test_console_forms.py) ----------------------------------------


@step("Add the items up")
def add_items(items: list[int]) -> State:
    return {"total": sum(items)}


@workflow("Adds up the items it is given (no form: its input is free JSON)", target=Target.SYSTEM)
def add_up_items() -> object:
    return init >> add_items >> done


class PickOnePort(Form):
    port: choices("port", status="active")  # type: ignore[valid-type]


@step("Note the port")
def note_port(port: str) -> State:
    return {"noted": port}


@workflow(
    "Notes one active port (a one-page form with a choice)",
    initial_input_form=PickOnePort,
)
def note_one_port() -> object:
    return init >> note_port >> done


@inputstep("Pick the form")
def pick_form(resources: FailurePlan) -> type[Form]:
    resources.check("pick_form")  # the test makes the form's own code fail when it says so
    return NewSpeed


@workflow("Ask a form whose code may fail", target=Target.SYSTEM)
def flaky_form() -> object:
    return init >> pick_form >> done
