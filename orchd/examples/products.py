"""The products of the bundled examples: a small network.

- ``node``: a router, provisioned in the OSS (``orchd.examples.node``); its configured
  ports' VLANs are kept on it (``orchd.examples.ports``).
- ``port``: a port on a node (a ``Ref`` to it), with its speed.
- ``core_link``: a link between two ports of two nodes.
- ``l2vpn``: a layer-2 VPN, one service access point (SAP) per port it joins, each with its
  VLAN.

Relations follow from the ``Ref`` fields: a port is in use by the core links and L2VPNs on it,
so terminating it is refused while they last, and a node is in use by its ports.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from orchd import Block, Product, Ref, product, required

Role = Literal["core", "edge", "access"]
Vlan = Annotated[int, Meta(ge=1, le=4094)]
#: Port speeds in Mbit/s.
Speed = Literal[1000, 10000, 100000]


class NodePort(Block):
    """A port configured on a node through the OSS (``provision_port``)."""

    port: str
    vlan: Vlan


@product("node", description="A network node (router), provisioned in the OSS")
class Node(Product, omit_defaults=True):
    name: str
    role: Role = "edge"
    #: The OSS's id of the node: known once the OSS reserved it.
    node_id: Annotated[str | None, required("provisioning")] = None
    ports: list[NodePort] = []


@product("port", description="A port on a node")
class Port(Product):
    node: Ref[Node]
    name: str
    speed: Speed = 10000


class LinkEnd(Block):
    port: Ref[Port]


@product("core_link", description="A link between ports of two nodes")
class CoreLink(Product):
    a: LinkEnd
    b: LinkEnd
    #: Measured once the link is up.
    latency_ms: Annotated[float | None, required("active")] = None


class Sap(Block):
    """A service access point: where the L2VPN meets a port."""

    port: Ref[Port]
    vlan: Annotated[Vlan | None, required("provisioning")] = None


@product("l2vpn", description="A layer-2 VPN between ports")
class L2vpn(Product):
    saps: list[Sap]
    speed: int = 1000
