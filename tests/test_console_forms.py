"""The console's forms of several pages (issue 28) and its start of workflows without a form
(issue 30 item 3): one page at a time with a way back, errors beside their fields on the
page they belong to, the start (or resume) once every page is answered, and a JSON box for a
workflow that declares no form.

As tests/test_console_products.py: ``create_app`` over TCP (aiohttp's test server) with a real
Engine running tests/wf/product_flows.py; ``create_l2vpn_paged`` asks its size, then that many
ports among the active unused ones, then a VLAN; ``respeed_l2vpn`` suspends at an inputstep of
two pages. Each page is posted as the browser would post it: the page's own hidden fields
(the answers so far, the CSRF token, the idempotency key) and what the operator typed.
"""

from __future__ import annotations

import html as htmllib
import json
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support.common import console_client, engine_fixture

from orchd.api.console.forms import build_form, read_answer
from orchd.api.console.render import environment
from orchd.engine import Engine

Client = TestClient[web.Request, web.Application]
TOKEN = "console-forms-token-0123456789abcdefgh"
PAGED = "/ui/workflows/create_l2vpn_paged"


engine = engine_fixture("product_flows")


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[Client]:
    """A test client over TCP, logged in as "alice"."""
    async with console_client(engine, TOKEN) as logged_in:
        yield logged_in


async def created(engine: Engine, workflow: str, given: Any) -> str:
    pid = await engine.start(workflow, given, reporter="test")
    process = await engine.wait(pid)
    assert process.status == "completed", process.error
    return str(process.state["subscription_id"])


@pytest.fixture
async def ports(engine: Engine) -> list[str]:
    """Four active ports on one node, none in use: their subscription ids, by name."""
    node = await created(
        engine, "create_node", {"customer_id": "acme", "name": "ams-r1", "ims_id": 7}
    )
    return [
        await created(engine, "create_port", {"customer_id": "acme", "name": name, "node_id": node})
        for name in ("xe-0/0/1", "xe-0/0/2", "xe-0/0/3", "xe-0/0/4")
    ]


# -- reading a page as a browser holds it ------------------------------------------------------


class Page:
    """A console page as the browser got it: its HTML and status."""

    def __init__(self, html: str, status: int, url: str) -> None:
        self.html, self.status, self.url = html, status, url

    def hidden(self, name: str) -> str:
        found = re.search(rf'<input type="hidden" name="{name}" value="([^"]*)"', self.html)
        assert found, f"the page has no hidden field {name}"
        return htmllib.unescape(found.group(1))

    def carried(self) -> list[Any]:
        """The answers the page carries (its hidden field)."""
        return list(json.loads(self.hidden("orchd-answers")))

    def page_of(self) -> str:
        found = re.search(r'<p class="page-of" id="page-of">([^<]*)</p>', self.html)
        assert found, "the page says not which page of the form it is"
        return htmllib.unescape(found.group(1))

    def field(self, name: str) -> str:
        """The HTML of the field ``name`` (up to the next field)."""
        start = self.html.index(f'data-field="{name}"')
        end = self.html.find('data-field="', start + 1)
        return self.html[start : end if end > 0 else self.html.index("</form>", start)]

    def fields(self) -> list[str]:
        return re.findall(r'<div class="field[^"]*" data-field="([^"]+)"', self.html)

    def value(self, name: str) -> str:
        found = re.search(r'\bvalue="([^"]*)"', self.field(name))
        assert found, f"field {name} shows no value"
        return htmllib.unescape(found.group(1))

    def checked(self, name: str) -> list[str]:
        """The labels of the check boxes of ``name`` that are checked."""
        boxes = re.findall(
            r'<input type="checkbox" id="([^"]+)" name="[^"]+" value="[^"]*"( checked)?[^>]*>'
            r'\s*<label for="\1">([^<]*)</label>',
            self.field(name),
        )
        return [htmllib.unescape(label) for _, on, label in boxes if on]

    def offered(self, name: str) -> dict[str, str]:
        """The check boxes (or options) of ``name``: label -> the value posted."""
        field = self.field(name)
        boxes = re.findall(
            r'<input type="checkbox" id="([^"]+)" name="[^"]+" value="([^"]*)"[^>]*>'
            r'\s*<label for="\1">([^<]*)</label>',
            field,
        )
        options = re.findall(r'<option value="([^"]*)"[^>]*>([^<]*)</option>', field)
        pairs = [(label, value) for _, value, label in boxes] + [(lab, v) for v, lab in options]
        return {htmllib.unescape(label): htmllib.unescape(value) for label, value in pairs}

    def errors(self, name: str) -> str:
        found = re.search(r'<p class="error" id="[^"]+-error">(.*?)</p>', self.field(name), re.S)
        return htmllib.unescape(found.group(1)) if found else ""

    def buttons(self) -> list[str]:
        return re.findall(r"<button type=\"submit\"[^>]*>([^<]+)</button>", self.form())

    def form(self) -> str:
        start = self.html.index('id="start-form"' if "start-form" in self.html else 'id="resume')
        return self.html[start : self.html.index("</form>", start)]

    def action(self) -> str:
        found = re.search(
            r'<form method="post" action="([^"]+)"[^>]*id="(?:start|resume)-form"', self.html
        )
        assert found, "no start or resume form"
        return found.group(1)


async def get(client: Client, path: str) -> Page:
    resp = await client.get(path)
    return Page(await resp.text(), resp.status, str(resp.url))


async def submit(
    client: Client,
    page: Page,
    typed: Sequence[tuple[str, str]] = (),
    go: str = "next",
) -> Page:
    """Post the page's form as a browser does: its hidden fields, the text inputs as they
    show (unless typed over), what was typed (check boxes, selects, text areas), the button."""
    form = page.form()
    hidden = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)
    data = [(name, htmllib.unescape(value)) for name, value in hidden]
    data += [("csrf", page.hidden("csrf"))] if "csrf" not in dict(data) else []
    over = {name for name, _ in typed}
    shown = re.findall(r'<input id="[^"]+" name="([^"]+)" value="([^"]*)"', form)
    data += [(name, htmllib.unescape(value)) for name, value in shown if name not in over]
    data += list(typed)
    if "Next" in page.buttons():
        data.append(("orchd-go", go))
    resp = await client.post(page.action(), data=data, allow_redirects=False)
    if resp.status == 303:
        return Page("", 303, resp.headers["Location"])
    return Page(await resp.text(), resp.status, str(resp.url))


async def processes(engine: Engine, workflow: str) -> list[Any]:
    return list((await engine.list_processes(workflow=workflow)).items)


# -- a form of several pages, page by page ----------------------------------------------------


async def test_a_form_of_pages_is_asked_one_page_at_a_time_and_done_starts_it(
    client: Client, engine: Engine, ports: list[str]
) -> None:
    listed = await get(client, "/ui/workflows")
    assert re.search(r"create_l2vpn_paged</a>.*?a form of several pages", listed.html, re.S)

    first = await get(client, PAGED)
    assert first.status == 200
    assert first.page_of() == "Page 1: L2vpnSize"
    assert first.fields() == ["sap_count", "speed"]
    assert first.buttons() == ["Next"]  # no way back from the first page
    assert "The process starts once the last page is answered." in first.html
    assert first.carried() == []

    second = await submit(client, first, [("sap_count", "2"), ("speed", "10000")])
    assert second.status == 200, second.html
    assert second.page_of() == "Page 2: PickPorts"
    assert second.buttons() == ["Next", "Back"]
    assert second.carried() == [{"sap_count": 2, "speed": 10000}]
    for shown in (first, second):  # the strict CSP holds: nothing inline
        assert "style=" not in shown.html and not re.search(r"<script(?![^>]*\bsrc=)", shown.html)
    # The ports are offered by their titles, as check boxes; two are to be picked.
    offered = second.offered("ports")
    assert list(offered) == ["port xe-0/0/1", "port xe-0/0/2", "port xe-0/0/3", "port xe-0/0/4"]
    assert offered["port xe-0/0/2"] == ports[1]
    assert "Pick 2." in second.field("ports")
    assert '<legend>ports <span class="req"' in second.field("ports")

    picked = [("ports", ports[1]), ("ports", ports[3])]
    third = await submit(client, second, picked)
    assert third.page_of() == "Page 3: L2vpnVlan"
    assert third.fields() == ["vlan"]
    assert third.carried() == [{"sap_count": 2, "speed": 10000}, {"ports": [ports[1], ports[3]]}]
    assert await processes(engine, "create_l2vpn_paged") == []  # nothing started on the way

    done = await submit(client, third, [("vlan", "300")])
    assert done.status == 303
    assert re.fullmatch(r"/ui/processes/[0-9a-f-]{36}\?done=started", done.url)
    shown = await get(client, done.url)
    assert '<p class="notice" role="status">Started.</p>' in shown.html
    process = await engine.wait(done.url.split("/")[-1].split("?")[0])
    assert process.status == "completed", process.error
    assert process.actions[0].actor == "token (alice)"
    sub = await engine.get_subscription(str(process.state["subscription_id"]))
    assert sub.attributes["speed"] == 10000
    assert [s["port"] for s in sub.attributes["saps"]] == [ports[1], ports[3]]
    assert {s["vlan"] for s in sub.attributes["saps"]} == {300}


async def test_back_shows_the_page_before_with_its_answer_and_next_keeps_the_later_ones(
    client: Client, engine: Engine, ports: list[str]
) -> None:
    first = await get(client, PAGED)
    second = await submit(client, first, [("sap_count", "2")])
    third = await submit(client, second, [("ports", ports[0]), ("ports", ports[2])])
    assert third.page_of().startswith("Page 3")

    back = await submit(client, third, [("vlan", "77")], go="back")
    assert back.status == 200
    assert back.page_of().startswith("Page 2")
    assert back.checked("ports") == ["port xe-0/0/1", "port xe-0/0/3"]  # as answered
    assert back.carried() == [{"sap_count": 2, "speed": 1000}]

    again = await submit(client, back, [("ports", ports[0]), ("ports", ports[2])], go="back")
    assert again.page_of().startswith("Page 1")
    assert again.value("sap_count") == "2" and again.value("speed") == "1000"
    assert again.buttons() == ["Next"]
    assert again.carried() == []

    # Forward again: each later page shows what it held before going back.
    forward = await submit(client, again, [("sap_count", "2"), ("speed", "1000")])
    assert forward.checked("ports") == ["port xe-0/0/1", "port xe-0/0/3"]
    last = await submit(client, forward, [("ports", ports[0]), ("ports", ports[2])])
    assert last.value("vlan") == "77"
    assert await processes(engine, "create_l2vpn_paged") == []


async def test_a_wrong_answer_on_page_two_is_shown_beside_its_field(
    client: Client, engine: Engine, ports: list[str]
) -> None:
    first = await get(client, PAGED)
    second = await submit(client, first, [("sap_count", "2")])
    refused = await submit(client, second, [("ports", ports[2])])  # one port of two
    assert refused.status == 422
    assert refused.page_of().startswith("Page 2")  # the same page
    assert "Page 2: 1 field to correct, marked below." in refused.html
    assert "Expected `array` of length &gt;= 2" in refused.field("ports")
    assert 'aria-invalid="true"' in refused.field("ports")
    assert refused.checked("ports") == ["port xe-0/0/3"]  # what was picked stays
    assert refused.carried() == [{"sap_count": 2, "speed": 1000}]

    none = await submit(client, refused, [])  # none picked: the list is empty
    assert none.status == 422 and "length >= 2" in none.errors("ports")

    fixed = await submit(client, refused, [("ports", ports[2]), ("ports", ports[0])])
    assert fixed.status == 200 and fixed.page_of().startswith("Page 3")
    assert fixed.carried()[1] == {"ports": [ports[2], ports[0]]}
    assert await processes(engine, "create_l2vpn_paged") == []


async def test_an_answer_refused_on_an_earlier_page_sends_back_to_that_page(
    client: Client, engine: Engine, ports: list[str]
) -> None:
    first = await get(client, PAGED)
    second = await submit(client, first, [("sap_count", "2")])
    third = await submit(client, second, [("ports", ports[0]), ("ports", ports[1])])
    # Meanwhile someone else builds an L2VPN on the first port picked.
    await created(engine, "create_l2vpn", {"customer_id": "globex", "ports": [ports[0], ports[3]]})

    refused = await submit(client, third, [("vlan", "120")])
    assert refused.status == 422
    assert refused.page_of().startswith("Page 2")  # where the port was picked
    assert "An answer on page 2 is not accepted any more" in refused.html
    error = refused.errors("ports")
    assert error.startswith("choice 1: ") and ports[0] in error
    assert "not one of the active port subscriptions not in use" in error
    assert list(refused.offered("ports")) == ["port xe-0/0/2", "port xe-0/0/3"]  # read now
    assert refused.checked("ports") == ["port xe-0/0/2"]
    assert refused.carried() == [{"sap_count": 2, "speed": 1000}]

    fixed = await submit(client, refused, [("ports", ports[1]), ("ports", ports[2])])
    assert fixed.page_of().startswith("Page 3")
    assert fixed.value("vlan") == "120"  # the later page kept its answer
    done = await submit(client, fixed, [("vlan", "120")])
    assert done.status == 303
    process = (await processes(engine, "create_l2vpn_paged"))[0]
    assert (await engine.wait(process.id)).status == "completed"


async def test_done_starts_one_process_and_a_reload_starts_no_other(
    client: Client, engine: Engine, ports: list[str]
) -> None:
    first = await get(client, PAGED)
    key = first.hidden("idempotency_key")
    second = await submit(client, first, [("sap_count", "2")])
    third = await submit(client, second, [("ports", ports[0]), ("ports", ports[1])])
    assert third.hidden("idempotency_key") == key  # every page carries the first one's key
    done = await submit(client, third, [("vlan", "9")])
    assert done.status == 303
    pid = done.url.split("/")[-1].split("?")[0]

    for _ in range(2):  # the page after the post is a GET: reloading it posts nothing
        reloaded = await get(client, done.url)
        assert reloaded.status == 200 and pid[:8] in reloaded.html
    twice = await submit(client, third, [("vlan", "9")])  # the last page posted again
    assert twice.status == 303 and twice.url == f"/ui/processes/{pid}?done=already"
    told = await get(client, twice.url)
    assert "This form had started this process already: nothing else was started." in told.html
    assert [p.id for p in await processes(engine, "create_l2vpn_paged")] == [pid]


async def test_a_page_carrying_answers_that_are_not_a_list_is_refused(
    client: Client, engine: Engine, ports: list[str]
) -> None:
    first = await get(client, PAGED)
    csrf = first.hidden("csrf")
    resp = await client.post(
        PAGED, data={"csrf": csrf, "orchd-answers": '{"sap_count": 2}', "orchd-go": "next"}
    )
    assert resp.status == 400
    assert "not a JSON list of objects" in htmllib.unescape(await resp.text())
    # Without the CSRF token nothing is read at all.
    forged = await client.post(PAGED, data={"orchd-answers": "[]", "sap_count": "2"})
    assert forged.status == 403
    assert await processes(engine, "create_l2vpn_paged") == []


# -- a suspended process's form of several pages ----------------------------------------------


async def test_a_suspended_process_is_resumed_page_by_page(
    client: Client, engine: Engine, ports: list[str]
) -> None:
    l2vpn = await created(engine, "create_l2vpn", {"customer_id": "acme", "ports": ports[:2]})
    pid = await engine.start("respeed_l2vpn", {"subscription_id": l2vpn}, reporter="test")
    assert (await engine.wait(pid)).status == "suspended"

    first = await get(client, f"/ui/processes/{pid}")
    assert first.action() == f"/ui/processes/{pid}/resume"
    assert first.page_of() == "Page 1: NewSpeed"
    assert first.fields() == ["speed"] and first.buttons() == ["Next"]
    assert "The process goes on once the last page is answered." in first.html

    wrong = await submit(client, first, [("speed", "fast")])
    assert wrong.status == 422
    assert wrong.page_of().startswith("Page 1")
    assert "Expected `int`" in wrong.errors("speed") and wrong.value("speed") == "fast"

    second = await submit(client, wrong, [("speed", "10000")])
    assert second.status == 200 and second.page_of() == "Page 2: Confirm"
    assert second.fields() == ["confirm", "note"]
    assert second.value("note") == "from 1000 to 10000"  # built from page 1's answer
    assert (await engine.get(pid)).status == "suspended"

    back = await submit(client, second, [], go="back")
    assert back.page_of().startswith("Page 1") and back.value("speed") == "10000"
    second = await submit(client, back, [("speed", "10000")])
    done = await submit(client, second, [("confirm", "true"), ("note", "from 1000 to 10000")])
    assert done.status == 303 and done.url == f"/ui/processes/{pid}?done=resumed"
    process = await engine.wait(pid)
    assert process.status == "completed", process.error
    assert process.state["confirmed"] is True
    assert [(a.action, a.actor) for a in process.actions][-1] == ("resume", "token (alice)")
    assert (await engine.get_subscription(l2vpn)).attributes["speed"] == 10000

    after = await get(client, done.url)  # nothing left to answer
    assert 'id="resume-form"' not in after.html


# -- a workflow without a form, one-page forms with a choice ---------------------------------


async def test_a_workflow_without_a_form_is_started_with_a_json_box(
    client: Client, engine: Engine
) -> None:
    page = await get(client, "/ui/workflows/add_up_items")
    assert "takes no input" not in page.html
    assert page.fields() == ["orchd-input"]
    box = page.field("orchd-input")
    assert '<label for="start-orchd-input">Input' in box and "<textarea" in box
    assert "declares no form" in box
    listed = await get(client, "/ui/workflows")
    assert re.search(r"add_up_items</a>.*?<td data-label=\"Input\">JSON</td>", listed.html, re.S)

    for typed, said in (
        ('{"items": [1, 2', "not valid JSON"),
        ("[1, 2, 3]", "the input is a JSON object {...}, not a list"),
    ):
        refused = await submit(client, page, [("orchd-input", typed)])
        assert refused.status == 422
        assert said in refused.errors("orchd-input")
        assert f">{typed}</textarea>" in htmllib.unescape(refused.field("orchd-input"))  # kept
        assert 'aria-invalid="true"' in refused.field("orchd-input")
    assert await processes(engine, "add_up_items") == []

    done = await submit(client, page, [("orchd-input", '{"items": [1, 2, 3]}')])
    assert done.status == 303
    process = await engine.wait(done.url.split("/")[-1].split("?")[0])
    assert process.status == "completed" and process.state["total"] == 6


async def test_a_formless_workflow_on_a_subscription_asks_it_beside_the_json_box(
    client: Client, engine: Engine
) -> None:
    node = await created(
        engine, "create_node", {"customer_id": "acme", "name": "ams-r1", "ims_id": 7}
    )
    version = (await engine.get_subscription(node)).version
    page = await get(client, f"/ui/workflows/modify_node?subscription_id={node}&version={version}")
    assert page.fields() == ["subscription_id", "version", "orchd-input"]
    assert page.value("subscription_id") == node and page.value("version") == str(version)
    done = await submit(client, page, [("orchd-input", '{"new_name": "ams-r9"}')])
    assert done.status == 303
    process = await engine.wait(done.url.split("/")[-1].split("?")[0])
    assert process.status == "completed", process.error
    assert (await engine.get_subscription(node)).attributes["node"]["name"] == "ams-r9"


async def test_a_choice_of_one_subscription_is_a_select_showing_titles(
    client: Client, engine: Engine, ports: list[str]
) -> None:
    page = await get(client, "/ui/workflows/note_one_port")
    assert "<select" in page.field("port") and "page-of" not in page.html
    assert page.offered("port")["port xe-0/0/3"] == ports[2]
    assert page.buttons() == ["Start"]  # a one-page form: no page controls
    refused = await submit(client, page, [("port", "nope")])
    assert refused.status == 422 and "not one of the active port subscriptions" in (
        refused.errors("port")
    )
    done = await submit(client, page, [("port", ports[2])])
    assert done.status == 303
    process = await engine.wait(done.url.split("/")[-1].split("?")[0])
    assert process.state["noted"] == ports[2]


def test_a_choices_field_is_drawn_from_its_one_of_and_read_back() -> None:
    schema = {
        "type": "object",
        "properties": {
            "port": {"type": "string", "oneOf": [{"const": "p-1", "title": "ams xe-0/0/1"}]},
            "ports": {
                "type": "array",
                "items": {"type": "string", "oneOf": [{"const": "a", "title": "A <1>"}]},
                "minItems": 1,
                "maxItems": 3,
            },
            "none": {
                "type": "string",
                "enum": [],
                "description": "no active ports",
                "x-orchd-choices": "port",
            },
        },
        "required": ["port", "ports"],
    }
    form = build_form(schema, answer={"ports": ["a"]})
    drawn = (
        environment()
        .from_string('{% from "macros.html" import form_fields %}{{ form_fields(form, "t") }}')
        .render(form=form)
    )
    assert '<option value="p-1">ams xe-0/0/1</option>' in drawn
    assert 'value="a" checked>' in drawn and "A &lt;1&gt;" in drawn  # titles are escaped
    assert "Pick 1 to 3." in drawn
    assert "no active ports" in drawn
    answer, problems = read_answer(schema, {"port": "p-1", "ports": ["a", "a"]})
    assert answer == {"port": "p-1", "ports": ["a", "a"]} and problems == []
    assert read_answer(schema, {"port": "p-1"})[0]["ports"] == []  # none checked
