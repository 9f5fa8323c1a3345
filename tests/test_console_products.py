"""The console's products and subscriptions (issue 27): the products page, a subscription's page
(its blocks, its relations as links and as a graph, its note, its workflows and why one may not
start), and the subscription list's search and filters.

As tests/test_console.py: ``create_app`` over TCP (aiohttp's test server) with a real Engine
running tests/wf/product_flows.py (a node, ports on it, an L2VPN on ports).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support.common import console_client, engine_fixture

from orchd.api.console.products import product_fields
from orchd.api.console.render import environment
from orchd.engine import Engine
from orchd.model import ProductInfo

Client = TestClient[web.Request, web.Application]
TOKEN = "console-products-token-0123456789abcdef"


engine = engine_fixture("product_flows")


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[Client]:
    """A test client over TCP, logged in as "alice"."""
    async with console_client(engine, TOKEN) as logged_in:
        yield logged_in


class Network:
    """A node, two ports on it and an L2VPN over both ports: subscription ids."""

    def __init__(self, node: str, port1: str, port2: str, l2vpn: str) -> None:
        self.node, self.port1, self.port2, self.l2vpn = node, port1, port2, l2vpn


async def created(engine: Engine, workflow: str, given: dict[str, Any]) -> str:
    pid = await engine.start(workflow, given, reporter="test")
    process = await engine.wait(pid)
    assert process.status == "completed", process.error
    return str(process.state["subscription_id"])


@pytest.fixture
async def network(engine: Engine) -> Network:
    node = await created(
        engine, "create_node", {"customer_id": "acme", "name": "ams-r1", "ims_id": 7}
    )
    ports = [
        await created(engine, "create_port", {"customer_id": "acme", "name": name, "node_id": node})
        for name in ("xe-0/0/1", "ge-1/0/9")
    ]
    l2vpn = await created(engine, "create_l2vpn", {"customer_id": "globex", "ports": ports})
    return Network(node, ports[0], ports[1], l2vpn)


async def page(client: Client, path: str, status: int = 200) -> str:
    resp = await client.get(path)
    html = await resp.text()
    assert resp.status == status, html
    return html


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def section(html: str, element_id: str) -> str:
    """The element with this id, up to its closing tag (sections and tables do not nest in
    themselves here)."""
    start = html.index(f'id="{element_id}"')
    tag = html.rfind("<", 0, start)
    name = re.match(r"<(\w+)", html[tag:]).group(1)  # type: ignore[union-attr]
    return html[tag : html.index(f"</{name}>", start) + len(name) + 3]


def graph_of(html: str) -> str:
    start = html.index("<svg")
    return html[start : html.index("</svg>", start)]


def graph_nodes(svg: str) -> dict[str, tuple[str, int]]:
    """Each linked node of the graph: the subscription it links to -> (its label, its x)."""
    found = re.findall(
        r'<a href="/ui/subscriptions/([0-9a-f-]{36})" class="node[^"]*"[^>]*aria-label="([^"]*)"'
        r'>.*?<rect x="(\d+)"',
        svg,
        flags=re.S,
    )
    return {sid: (label, int(x)) for sid, label, x in found}


# -- the products page --------------------------------------------------------------------------


async def test_the_products_page_shows_each_products_workflows_and_fields(
    client: Client,
) -> None:
    home = await page(client, "/ui/subscriptions")
    assert '<a href="/ui/products">Products</a>' in home  # in the navigation
    html = await page(client, "/ui/products")
    assert '<a href="/ui/products" aria-current="page">Products</a>' in html

    node = section(html, "product-node")
    assert "A router" in node
    for workflow in ("create_node", "modify_node", "terminate_node", "validate_node"):
        assert f">{workflow}<" in node
    assert '<a href="/ui/workflows/create_node">create_node</a>' in node  # a CREATE starts here
    assert "referred to by" in node and '<a href="#product-port">port</a>' in node
    assert "<code>node</code>" in section(node, "product-node-h")  # its heading
    row = re.search(r'<tr data-field="node.ims_id">.*?</tr>', node, flags=re.S)
    assert row and "integer, may be empty" in row.group(0)

    l2vpn = section(html, "product-l2vpn")
    saps = re.search(r'<tr data-field="saps">.*?</tr>', l2vpn, flags=re.S)
    assert saps and "list of block SapBlock" in saps.group(0) and ">yes<" in saps.group(0)
    port = re.search(r'<tr data-field="saps\[\].port">.*?</tr>', l2vpn, flags=re.S)
    assert port and 'Ref to <a href="#product-port">port</a>' in port.group(0)
    speed = re.search(r'<tr data-field="speed">.*?</tr>', l2vpn, flags=re.S)
    assert speed and "<code>1000</code>" in speed.group(0)  # its default
    # The subscription's own fields are every product's: not listed as the product's.
    assert 'data-field="customer_id"' not in html and 'data-field="version"' not in html


def test_a_field_required_from_a_status_says_from_which() -> None:
    """When a product's schema names the status a field is required from
    (``x-orchd-required``), the fields table says it rather than "no"."""
    schema = {
        "type": "object",
        "properties": {"ims_id": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
        "x-orchd-required": {"ims_id": "active"},
    }
    info = ProductInfo(name="box", description="A box", schema=schema)
    html = (
        environment()
        .get_template("products.html")
        .render(
            session=None, version="t", last_event_id=0, actor="", notice=None, problem=None,
            nav="products", title="Products", referred_by={},
            products=[{"info": info, "fields": product_fields(schema), "workflows": []}],
        )
    )  # fmt: skip
    row = re.search(r'<tr data-field="ims_id">.*?</tr>', html, flags=re.S)
    assert row and "from <span" in row.group(0) and ">active</span> on" in row.group(0)


# -- one subscription ---------------------------------------------------------------------------


async def test_a_subscription_shows_what_it_depends_on_and_what_uses_it(
    client: Client, network: Network
) -> None:
    html = await page(client, f"/ui/subscriptions/{network.port1}")
    depends = section(html, "depends-on")
    assert f'<a href="/ui/subscriptions/{network.node}">' in depends
    assert "node ams-r1" in depends and "<code>node</code>" in depends  # where: its Ref
    users = section(html, "in-use-by")
    assert f'<a href="/ui/subscriptions/{network.l2vpn}">' in users
    assert "<code>saps[0].port</code>" in users
    fields = section(html, "fields")
    assert "xe-0/0/1" in fields
    # The Ref among its fields is a link to the node, with the node's description.
    assert f'<a class="ref" href="/ui/subscriptions/{network.node}">node' in fields


async def test_the_graph_draws_the_subscriptions_around_it_each_a_link(
    client: Client, network: Network
) -> None:
    html = await page(client, f"/ui/subscriptions/{network.port1}")
    svg = graph_of(html)
    nodes = graph_nodes(svg)
    # What it depends on on the left, what uses it on the right, itself in the middle.
    assert set(nodes) == {network.node, network.l2vpn}
    node_label, node_x = nodes[network.node]
    vpn_label, vpn_x = nodes[network.l2vpn]
    assert node_label.startswith("node ") and "node ams-r1" in node_label
    assert vpn_label.startswith("l2vpn ") and "(active)" in vpn_label
    center = re.search(
        r'<g class="node current[^"]*" data-id="([^"]+)".*?<rect x="(\d+)"', svg, re.S
    )
    assert center and center.group(1) == network.port1
    assert node_x < int(center.group(2)) < vpn_x
    assert "Depends on" in svg and "In use by" in svg
    assert svg.count('class="edge"') == 2

    # Each node leads to its subscription, whose graph leads back.
    node_page = await page(client, f"/ui/subscriptions/{network.node}")
    assert "<h1>node " in node_page
    around_node = graph_nodes(graph_of(node_page))
    assert set(around_node) == {network.port1, network.port2}
    assert all(x > 400 for _, x in around_node.values())  # both use it: the right column
    vpn_page = await page(client, f"/ui/subscriptions/{network.l2vpn}")
    around_vpn = graph_nodes(graph_of(vpn_page))
    assert set(around_vpn) == {network.port1, network.port2}
    assert all(x < 100 for _, x in around_vpn.values())  # it depends on both: the left


async def test_blocks_are_a_table_with_a_row_per_block(client: Client, network: Network) -> None:
    html = await page(client, f"/ui/subscriptions/{network.l2vpn}")
    saps = section(html, "fields")
    blocks = re.search(r'<table class="attrs blocks" data-path="saps">.*?</table>', saps, re.S)
    assert blocks, saps
    header = re.findall(r'<th scope="col">([^<]*)</th>', blocks.group(0))
    assert header == ["#", "port", "vlan"]
    rows = re.findall(r"<tr><td data-label=\"#\">(\d+)</td>(.*?)</tr>", blocks.group(0), re.S)
    assert [n for n, _ in rows] == ["0", "1"]
    assert f'href="/ui/subscriptions/{network.port1}"' in rows[0][1] and "100" in rows[0][1]
    assert f'href="/ui/subscriptions/{network.port2}"' in rows[1][1]
    assert re.search(r'<th scope="row">speed</th><td>1000', saps)
    assert re.search(r"<dt>Version</dt><dd>\d+</dd>", html)


async def test_a_subscription_without_relations_draws_no_graph(
    client: Client, engine: Engine
) -> None:
    given = {"customer_id": "acme", "name": "lone", "ims_id": 9}
    node = await created(engine, "create_node", given)
    html = await page(client, f"/ui/subscriptions/{node}")
    assert "<svg" not in html
    assert "It depends on no subscription and none uses it." in html


# -- its workflows --------------------------------------------------------------------------------


async def test_a_refused_workflow_is_disabled_with_its_reason(
    client: Client, network: Network
) -> None:
    html = await page(client, f"/ui/subscriptions/{network.node}")
    workflows = section(html, "workflows")
    terminate = re.search(r'<li data-workflow="terminate_node".*?</li>', workflows, re.S)
    assert terminate and 'data-usable="false"' in terminate.group(0)
    assert re.search(r"<button [^>]*disabled[^>]*>terminate_node</button>", terminate.group(0))
    assert "<code>in_use</code>" in terminate.group(0)
    for port in (network.port1, network.port2):  # what uses it, as links
        assert f'<a href="/ui/subscriptions/{port}">port' in terminate.group(0)
    enable = re.search(r'<li data-workflow="enable_node".*?</li>', workflows, re.S)
    assert enable and "<code>status</code>" in enable.group(0)
    assert "usable when disabled; it is active" in enable.group(0)
    assert 'href="/ui/workflows/terminate_node' not in workflows  # no way to start it here
    assert 'href="/ui/workflows/create_node' not in workflows  # a CREATE is not for it

    l2vpn = await page(client, f"/ui/subscriptions/{network.l2vpn}")
    modify = re.search(r'<li data-workflow="modify_l2vpn".*?</li>', l2vpn, re.S)
    assert modify and 'data-usable="true"' in modify.group(0)


async def test_a_usable_workflow_leads_to_its_start_with_the_subscription_filled_in(
    client: Client, engine: Engine, network: Network
) -> None:
    html = await page(client, f"/ui/subscriptions/{network.node}")
    version = (await engine.get_subscription(network.node)).version
    link = re.search(r'<a class="button" href="(/ui/workflows/validate_node\?[^"]+)"', html)
    assert link, section(html, "workflows")
    start = await page(client, link.group(1).replace("&amp;", "&"))
    assert re.search(rf'name="subscription_id" value="{network.node}"', start)
    assert re.search(rf'name="version" value="{version}"', start)
    form = dict(re.findall(r'name="(\w+)" value="([^"]*)"', start))
    resp = await client.post("/ui/workflows/validate_node", data=form, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    pid = resp.headers["Location"].split("/")[-1].split("?")[0]
    process = await engine.wait(pid)
    assert process.status == "completed" and process.subscription_id == network.node

    # Once the subscription has changed, the same form is refused as stale, and says so.
    await created_modify(engine, network.node, "ams-r2")
    form["idempotency_key"] = "another-start"
    refused = await client.post("/ui/workflows/validate_node", data=form)
    text = await refused.text()
    assert refused.status == 409, text
    assert "has changed" in text and f"version {version}" in text
    assert f'value="{network.node}"' in text  # what was given stays in the form


async def created_modify(engine: Engine, sid: str, name: str) -> None:
    pid = await engine.start("modify_node", {"subscription_id": sid, "new_name": name})
    assert (await engine.wait(pid)).status == "completed"


# -- its note -------------------------------------------------------------------------------------


async def test_the_note_form_sets_the_note_and_a_reload_does_not_set_it_again(
    client: Client, engine: Engine, network: Network
) -> None:
    path = f"/ui/subscriptions/{network.port1}"
    html = await page(client, path)
    assert "No note." in html
    note = "fibre cut at the patch panel\r\nticket 4711"
    resp = await client.post(
        f"{path}/note", data={"csrf": csrf_of(html), "note": note}, allow_redirects=False
    )
    assert resp.status == 303 and resp.headers["Location"] == f"{path}?done=noted"
    for _ in range(2):  # the page after the post, then a reload of it
        shown = await page(client, resp.headers["Location"])
        assert "The note was saved." in shown
        assert '<p class="note-text">fibre cut at the patch panel\nticket 4711</p>' in shown
        history = section(shown, "history")
        assert history.count('<td data-label="Action">note</td>') == 1
        assert "<code>token (alice)</code>" in history
    sub = await engine.get_subscription(network.port1)
    assert sub.note == "fibre cut at the patch panel\nticket 4711"
    assert [(a.action, a.actor) for a in sub.actions] == [("note", "token (alice)")]


async def test_a_note_post_without_the_csrf_token_or_too_long_changes_nothing(
    client: Client, engine: Engine, network: Network
) -> None:
    path = f"/ui/subscriptions/{network.port1}"
    html = await page(client, path)
    forged = await client.post(f"{path}/note", data={"note": "forged"})
    assert forged.status == 403 and "CSRF" in await forged.text()
    long = "x" * 10_001
    refused = await client.post(f"{path}/note", data={"csrf": csrf_of(html), "note": long})
    # Post/redirect/get: the refusal is shown on the subscription's page, once.
    assert refused.status == 200 and [r.status for r in refused.history] == [303]
    text = await refused.text()
    assert 'id="note-error"' in text and "10000" in text
    assert f">{long}</textarea>" in text  # what was typed stays
    sub = await engine.get_subscription(network.port1)
    assert sub.note is None and sub.actions == []
    missing = "00000000-0000-4000-8000-000000000000"
    gone = await client.post(
        f"/ui/subscriptions/{missing}/note", data={"csrf": csrf_of(html), "note": "x"}
    )
    assert gone.status == 404 and "does not exist" in await gone.text()


# -- the list: search and filters -----------------------------------------------------------------


def listed(html: str) -> list[str]:
    return re.findall(r'<tr data-id="([0-9a-f-]{36})">', section(html, "subscriptions"))


async def test_search_finds_subscriptions_by_text_and_filters_by_product_and_status(
    client: Client, engine: Engine, network: Network
) -> None:
    everything = await page(client, "/ui/subscriptions")
    assert set(listed(everything)) == {network.node, network.port1, network.port2, network.l2vpn}
    assert '<th scope="col">Version</th>' in everything
    row = re.search(rf'<tr data-id="{network.node}">.*?</tr>', everything, re.S)
    assert row and '<a href="/ui/products#product-node">node</a>' in row.group(0)
    assert re.search(r'<td data-label="Version">\d+</td>', row.group(0))

    found = await page(client, "/ui/subscriptions?q=ge-1/0")
    assert listed(found) == [network.port2]  # a text value among its fields
    assert 'name="q" type="search" value="ge-1/0"' in found
    by_customer_text = await page(client, "/ui/subscriptions?q=globex")
    assert listed(by_customer_text) == [network.l2vpn]
    nothing = await page(client, "/ui/subscriptions?q=no-such-thing")
    assert listed(nothing) == [] and "match these filters" in nothing

    ports = await page(client, "/ui/subscriptions?product=port")
    assert set(listed(ports)) == {network.port1, network.port2}
    assert '<option value="port">' in ports  # the product box suggests the products
    both = await page(client, "/ui/subscriptions?product=port&q=xe-0")
    assert listed(both) == [network.port1]

    spare = await created(
        engine, "create_port", {"customer_id": "acme", "name": "spare", "node_id": network.node}
    )
    pid = await engine.start("terminate_port", {"subscription_id": spare})
    assert (await engine.wait(pid)).status == "completed"
    terminated = await page(client, "/ui/subscriptions?status=terminated")
    assert listed(terminated) == [spare]
    assert '<option value="terminated" selected>' in terminated

    # The next page keeps the search.
    first = await page(client, "/ui/subscriptions?q=acme&limit=1")
    assert len(listed(first)) == 1
    more = re.search(r'<a rel="next" href="([^"]+)"', first)
    assert more and "q=acme&amp;" in more.group(1)
    second = await page(client, more.group(1).replace("&amp;", "&") + "&limit=1")
    assert len(listed(second)) == 1 and listed(second) != listed(first)


# -- what every page may not do -------------------------------------------------------------------


async def test_the_new_pages_carry_no_inline_script_or_style(
    client: Client, network: Network
) -> None:
    for path in (
        "/ui/products",
        f"/ui/subscriptions/{network.port1}",
        f"/ui/subscriptions/{network.l2vpn}",
        "/ui/subscriptions?q=xe",
    ):
        html = await page(client, path)
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], path
        assert re.findall(r"\son[a-z]+\s*=", html) == [], path
        assert "style=" not in html and "<style" not in html, path
