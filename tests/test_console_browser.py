"""The web console in a real browser: Chromium (the distribution's) driven by Playwright
against a real daemon that listens on TCP with a token.

One daemon and one browser serve the whole module; each test gets a fresh browser context
(its own cookies) and logs in through the login page. The daemon runs tests/wf/console_flows.py.
`make test` installs Chromium when it is missing and it runs as root; elsewhere these tests skip
and say why.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from support.daemons import DaemonFactory, DaemonProcess, free_port

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (make install adds it)"
)
from playwright.sync_api import Browser, BrowserContext, Page, expect  # noqa: E402

CHROMIUM = os.environ.get("ORCHD_CHROMIUM", "/usr/bin/chromium")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        f"no Chromium at {CHROMIUM} (ORCHD_CHROMIUM): `make test` installs Debian's chromium "
        "when run as root; Playwright cannot download its own browser here",
        allow_module_level=True,
    )

TOKEN = "console-browser-token-0123456789abcdef"
#: Generous for a shared 2-core machine; a passing run waits far less.
WAIT_MS = 15_000
expect.set_options(timeout=WAIT_MS)


class Console:
    """The daemon under test and its console's address."""

    def __init__(self, daemon: DaemonProcess, base: str) -> None:
        self.daemon = daemon
        self.base = base

    def url(self, path: str) -> str:
        return self.base + path

    def started(self, workflow: str, status: str, body: Any = None) -> str:
        pid = self.daemon.start_process(workflow, body)
        self.daemon.wait_process(pid, (status,))
        return pid


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    base = tmp_path_factory.mktemp("console")
    token = base / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    port = free_port()
    factory = DaemonFactory(base)
    schedule = '[[schedules]]\nworkflow = "console_quick"\nevery = "1h"\n'
    try:
        daemon = factory(
            {
                "workflows": ["console_flows", "console_view_flows"],
                "listen": f"127.0.0.1:{port}",
                "token_file": str(token),
            },
            raw_config=schedule,
        )
        yield Console(daemon, f"http://127.0.0.1:{port}")
    finally:
        factory.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: BrowserContext, console: Console) -> Page:
    """A page logged in as "operator"."""
    page = context.new_page()
    log_in(page, console, "operator")
    return page


def log_in(page: Page, console: Console, name: str = "") -> None:
    page.goto(console.url("/ui/"))
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.get_by_label("Token").fill(TOKEN)
    page.get_by_label("Your name").fill(name)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(console.url("/ui/"))
    expect(page.get_by_role("heading", name="Processes")).to_be_visible()


def status_of(page: Page) -> Any:
    return page.locator("h1 .status")


# -- logging in, the live list -------------------------------------------------------------


def test_log_in_and_see_a_process_appear_live(page: Page, console: Console) -> None:
    page.evaluate("window.notReloaded = true")
    pid = console.daemon.start_process("console_quick", {"name": "live"})
    row = page.locator(f'tr[data-id="{pid}"]')
    expect(row).to_be_visible()
    expect(row.locator(".status")).to_have_text("completed")
    expect(page.locator("#announce")).to_contain_text(pid[:8])  # told to screen readers
    assert page.evaluate("window.notReloaded") is True  # no reload happened
    row.get_by_role("link").click()
    expect(page).to_have_url(console.url(f"/ui/processes/{pid}"))
    expect(status_of(page)).to_have_text("completed")
    expect(page.locator('tr[data-step="hello"] details.delta')).to_contain_text("greeting")


def test_a_filtered_list_takes_only_matching_processes(page: Page, console: Console) -> None:
    page.get_by_label("Status").select_option("suspended")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"status=suspended"))
    quick = console.daemon.start_process("console_quick")
    asked = console.daemon.start_process("console_ask")
    expect(page.locator(f'tr[data-id="{asked}"] .status')).to_have_text("suspended")
    console.daemon.wait_process(quick)
    expect(page.locator(f'tr[data-id="{quick}"]')).to_have_count(0)


# -- actions on a process ------------------------------------------------------------------


def test_answer_a_form_after_a_422_shown_in_place(page: Page, console: Console) -> None:
    pid = console.started("console_ask", "suspended")
    page.goto(console.url(f"/ui/processes/{pid}"))
    form = page.locator("#resume-form")
    form.get_by_label("vlan").fill("5000")
    with page.expect_response(re.compile(r"/resume$")) as answer:
        form.get_by_role("button", name="Resume").click()
    assert answer.value.status == 422
    expect(page.locator('[data-field="vlan"] .error')).to_contain_text("4094")
    expect(page.locator('[data-field="port_name"] .error')).to_contain_text("required")
    expect(form.get_by_label("vlan")).to_have_value("5000")  # what was typed stays
    expect(form.get_by_label("port name")).to_be_focused()  # the first field at fault
    assert console.daemon.get_process(pid)["status"] == "suspended"

    form.get_by_label("port name").fill("xe-0/0/1")
    form.get_by_label("vlan").fill("12")
    form.get_by_label("Speed").select_option("10G")
    form.get_by_label("confirm").check()
    form.get_by_role("button", name="Resume").click()
    expect(page.locator(".notice")).to_contain_text("accepted")
    expect(status_of(page)).to_have_text("completed")  # updated live
    process = console.daemon.get_process(pid)
    assert process["state"]["configured"] == "xe-0/0/1.12 at 10G"
    assert process["state"]["confirm"] is True
    assert process["actions"][-1]["action"] == "resume"
    assert process["actions"][-1]["actor"] == "token (operator)"


def test_retry_a_failed_process(page: Page, console: Console) -> None:
    pid = console.started("console_flaky", "failed")
    page.goto(console.url(f"/ui/processes/{pid}"))
    expect(page.locator('tr[data-step="flaky"] details')).to_contain_text("Traceback")
    expect(page.locator(".process-error")).to_contain_text("the first run fails")
    page.locator("#retry-form").get_by_role("button", name="Retry").click()
    expect(status_of(page)).to_have_text("completed")
    process = console.daemon.get_process(pid)
    assert [s["status"] for s in process["steps"] if s["name"] == "flaky"] == [
        "failed",
        "success",
    ]
    assert process["actions"][-1]["action"] == "retry"


def test_skip_a_failed_step_with_a_reason(page: Page, console: Console) -> None:
    pid = console.started("console_fail", "failed")
    page.goto(console.url(f"/ui/processes/{pid}"))
    skip = page.locator("#skip-form")
    skip.get_by_role("button", name="Skip").click()
    expect(page.locator("#skip-error")).to_be_visible()  # a reason is required
    assert console.daemon.get_process(pid)["status"] == "failed"
    page.locator("#skip-form").get_by_label("Reason").fill("done by hand on the router")
    page.locator("#skip-form").get_by_role("button", name="Skip").click()
    expect(status_of(page)).to_have_text("completed")
    expect(page.locator('tr[data-step="explode"][data-status="skipped"]')).to_contain_text(
        "done by hand on the router"
    )
    process = console.daemon.get_process(pid)
    skipped = [s for s in process["steps"] if s["status"] == "skipped"]
    assert skipped[-1]["reason"] == "done by hand on the router"
    assert skipped[-1]["actor"] == "token (operator)"
    assert process["state"]["went_on"] is True


def test_abort_after_confirming(page: Page, console: Console) -> None:
    pid = console.started("console_ask", "suspended")
    page.goto(console.url(f"/ui/processes/{pid}"))
    asked: list[str] = []

    def answer(accept: bool) -> Any:
        def handle(dialog: Any) -> None:
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        return handle

    page.once("dialog", answer(False))
    page.locator("#abort-form").get_by_role("button", name="Abort").click()
    assert asked and pid[:8] in asked[0]
    page.wait_for_timeout(300)  # time for a post that should not happen
    expect(status_of(page)).to_have_text("suspended")  # cancelled: nothing was posted
    assert console.daemon.get_process(pid)["status"] == "suspended"
    page.once("dialog", answer(True))
    page.locator("#abort-form").get_by_role("button", name="Abort").click()
    expect(status_of(page)).to_have_text("aborted")
    expect(page.locator("#actions")).to_contain_text("None")
    assert console.daemon.get_process(pid)["status"] == "aborted"


def test_answer_a_callback_as_the_operator(page: Page, console: Console) -> None:
    pid = console.started("console_callback", "awaiting_callback")
    page.goto(console.url(f"/ui/processes/{pid}"))
    page.get_by_label("Answer (JSON)").fill('{"ok": tru')
    page.get_by_role("button", name="Send the answer").click()
    expect(page.locator("#callback-error")).to_contain_text("not valid JSON")
    page.get_by_label("Answer (JSON)").fill('{"ok": true, "ref": 7}')
    page.get_by_role("button", name="Send the answer").click()
    expect(status_of(page)).to_have_text("completed")
    assert console.daemon.get_process(pid)["state"]["answer"] == {"ok": True, "ref": 7}


def test_a_parent_shows_its_children(page: Page, console: Console) -> None:
    pid = console.started("console_parent", "completed")
    page.goto(console.url(f"/ui/processes/{pid}"))
    children = page.locator("#children tbody tr")
    expect(children).to_have_count(2)
    expect(children.locator(".status")).to_have_text(["completed", "completed"])


def test_the_timeline_draws_under_the_csp_and_a_reload_repeats_no_action(
    page: Page, console: Console
) -> None:
    complaints: list[str] = []  # what the browser reports: a CSP violation is a console error
    page.on("console", lambda m: complaints.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: complaints.append(str(exc)))
    fan = console.started("view_fan_out", "completed", {"ports": list(range(20))})
    page.goto(console.url(f"/ui/processes/{fan}"))
    timeline = page.locator("figure.timeline svg")
    expect(timeline).to_be_visible()
    expect(timeline.locator("g.lane")).to_have_count(21)  # the main line and 20 branches
    expect(timeline.locator("g.bar.retry")).to_have_count(1)
    expect(timeline.locator("g.wait")).to_have_count(1)
    box = timeline.bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 21 * 18

    pid = console.started("console_flaky", "failed")
    page.goto(console.url(f"/ui/processes/{pid}"))
    expect(page.locator("figure.timeline g.bar.s-failed")).to_have_count(1)
    page.locator("#retry-form").get_by_role("button", name="Retry").click()
    expect(page.locator(".notice")).to_contain_text("Retrying")
    expect(page).to_have_url(console.url(f"/ui/processes/{pid}"))  # ?done= dropped
    expect(status_of(page)).to_have_text("completed")
    expect(page.locator("figure.timeline g.bar.retry")).to_have_count(1)  # updated live
    page.reload()
    expect(status_of(page)).to_have_text("completed")
    expect(page.locator(".notice")).to_have_count(0)
    retries = [a for a in console.daemon.get_process(pid)["actions"] if a["action"] == "retry"]
    assert len(retries) == 1  # the reload posted nothing
    assert complaints == []


# -- starting workflows, schedules ---------------------------------------------------------


def test_start_a_workflow_from_its_form(page: Page, console: Console) -> None:
    page.get_by_role("link", name="Start").click()
    page.get_by_role("link", name="console_create").click()
    form = page.locator("#start-form")
    expect(form.get_by_label("size")).to_have_value("1")  # the schema's default
    form.get_by_label("customer id").fill("acme")
    form.get_by_role("button", name="Start").click()
    expect(page.locator('[data-field="name"] .error')).to_contain_text("required")
    form = page.locator("#start-form")
    expect(form.get_by_label("customer id")).to_have_value("acme")
    form.get_by_label("name").fill("w1")
    form.get_by_label("size").fill("3")
    form.get_by_role("button", name="Start").click()
    expect(page.locator(".notice")).to_contain_text("Started.")
    expect(page).to_have_url(re.compile(r"/ui/processes/[0-9a-f-]{36}$"))  # ?done= dropped
    expect(status_of(page)).to_have_text("completed")
    page.locator("#summary").get_by_role("link").first.click()  # its subscription
    expect(page.get_by_role("heading", name=re.compile("console-widget"))).to_be_visible()
    expect(page.locator("#processes tbody")).to_contain_text("console_create")


def test_run_a_schedule_now(page: Page, console: Console) -> None:
    page.get_by_role("link", name="Schedules").click()
    page.get_by_role("button", name="Run console_quick now").click()
    expect(page.locator(".notice")).to_contain_text("started now")
    expect(page).to_have_url(re.compile(r"/ui/processes/[0-9a-f-]{36}$"))  # ?done= dropped
    expect(status_of(page)).to_have_text("completed")


# -- security ------------------------------------------------------------------------------


def test_a_forged_post_is_refused_and_changes_nothing(
    page: Page, context: BrowserContext, console: Console
) -> None:
    pid = console.started("console_ask", "suspended")
    # The browser holds a live session cookie; a post that lacks the page's token is refused.
    for form in ({}, {"csrf": "forged"}):
        resp = context.request.post(console.url(f"/ui/processes/{pid}/abort"), form=form)
        assert resp.status == 403
    process = console.daemon.get_process(pid)
    assert process["status"] == "suspended"
    assert [a["action"] for a in process["actions"]] == ["start"]


def test_log_out(page: Page, console: Console) -> None:
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/ui/login"))
    page.goto(console.url("/ui/schedules"))
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))


# -- products and subscriptions ------------------------------------------------------------


class Network:
    """A daemon running tests/wf/product_flows.py with a node, two ports on it and an L2VPN
    over both ports (subscription ids)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.node = self.created(
            "create_node", {"customer_id": "acme", "name": "ams-r1", "ims_id": 7}
        )
        self.port = self.created(
            "create_port", {"customer_id": "acme", "name": "xe-0/0/1", "node_id": self.node}
        )
        other = self.created(
            "create_port", {"customer_id": "acme", "name": "xe-0/0/2", "node_id": self.node}
        )
        self.l2vpn = self.created(
            "create_l2vpn", {"customer_id": "acme", "ports": [self.port, other]}
        )

    def created(self, workflow: str, body: Any) -> str:
        pid = self.console.started(workflow, "completed", body)
        return str(self.console.daemon.get_process(pid)["state"]["subscription_id"])


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """Its own daemon: the product workflows stay out of the other tests' lists."""
    base = tmp_path_factory.mktemp("network")
    token = base / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    port = free_port()
    factory = DaemonFactory(base)
    try:
        daemon = factory(
            {
                "workflows": ["product_flows"],
                "listen": f"127.0.0.1:{port}",
                "token_file": str(token),
            }
        )
        yield Network(Console(daemon, f"http://127.0.0.1:{port}"))
    finally:
        factory.close()


def test_walk_the_relations_graph_and_leave_a_note(
    context: BrowserContext, network: Network
) -> None:
    console = network.console
    page = context.new_page()
    log_in(page, console, "operator")
    page.get_by_role("link", name="Subscriptions").click()
    page.get_by_role("searchbox", name="Search").fill("xe-0/0/1")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("#subscriptions tbody tr")
    expect(rows).to_have_count(1)
    rows.get_by_role("link").first.click()
    expect(page).to_have_url(console.url(f"/ui/subscriptions/{network.port}"))

    # The port depends on the node (left) and is used by the L2VPN (right): both are links.
    graph = page.locator("figure.graph svg")
    expect(graph).to_be_visible()
    terminate = page.locator('li[data-workflow="terminate_port"]')
    expect(terminate.get_by_role("button", name="terminate_port")).to_be_disabled()
    expect(terminate).to_contain_text("in_use")
    graph.locator(f'a[href="/ui/subscriptions/{network.node}"]').click()
    expect(page).to_have_url(console.url(f"/ui/subscriptions/{network.node}"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("node")
    expect(page.locator("figure.graph svg a.node")).to_have_count(2)  # both ports use it
    page.locator(f'figure.graph svg a[href="/ui/subscriptions/{network.port}"]').click()
    expect(page).to_have_url(console.url(f"/ui/subscriptions/{network.port}"))
    page.locator(f'figure.graph svg a[href="/ui/subscriptions/{network.l2vpn}"]').click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("l2vpn")

    page.get_by_role("textbox", name="Note").fill("migrating to the new core\nticket 4711")
    page.get_by_role("button", name="Save the note").click()
    expect(page.locator(".notice")).to_contain_text("The note was saved.")
    expect(page.locator(".note-text")).to_have_text("migrating to the new core\nticket 4711")
    page.reload()  # the page after the post is a GET: nothing is posted again
    expect(page.locator(".notice")).to_have_count(0)  # said once: the address lost ?done=
    expect(page.locator("#history tbody tr")).to_have_count(1)
    expect(page.locator("#history tbody")).to_contain_text("token (operator)")
    _, sub = console.daemon.request("GET", f"/api/subscriptions/{network.l2vpn}")
    assert sub["note"] == "migrating to the new core\nticket 4711"
    assert [a["actor"] for a in sub["actions"]] == ["token (operator)"]


# -- small screens and the keyboard --------------------------------------------------------


def test_phone_width_and_keyboard(browser: Browser, console: Console) -> None:
    pid = console.started("console_ask", "suspended")
    ctx = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = ctx.new_page()
        log_in(page, console)
        for path in ("/ui/", f"/ui/processes/{pid}"):
            page.goto(console.url(path))
            wide = page.evaluate("document.documentElement.scrollWidth")
            assert wide <= 390, f"{path} scrolls sideways at phone width ({wide}px)"
        page.keyboard.press("Tab")
        expect(page.locator(":focus")).to_have_text("Skip to content")
        page.keyboard.press("Enter")
        page.keyboard.press("Tab")  # into the page: the first field of the form
        page.keyboard.type("ge-1/1/1")
        expect(page.get_by_label("port name")).to_have_value("ge-1/1/1")
    finally:
        ctx.close()


# -- a form of several pages ---------------------------------------------------------------


def test_walk_a_form_of_three_pages_with_a_wrong_answer_on_page_two(
    context: BrowserContext, network: Network
) -> None:
    console = network.console
    node = network.created("create_node", {"customer_id": "acme", "name": "fra-r2", "ims_id": 9})
    ports = [
        network.created("create_port", {"customer_id": "acme", "name": name, "node_id": node})
        for name in ("ge-2/0/1", "ge-2/0/2")
    ]
    page = context.new_page()
    log_in(page, console, "operator")
    page.get_by_role("link", name="Start").click()
    page.get_by_role("link", name="create_l2vpn_paged").click()
    form = page.locator("#start-form")
    where = page.locator("#page-of")
    expect(where).to_have_text("Page 1: L2vpnSize")
    expect(form.get_by_role("button", name="Back")).to_have_count(0)
    form.get_by_label("sap count").fill("2")
    form.get_by_role("button", name="Next").click()

    expect(where).to_have_text("Page 2: PickPorts")
    group = form.get_by_role("group", name="ports")
    expect(group).to_contain_text("Pick 2.")
    group.get_by_label("port ge-2/0/1").check()  # one port of the two it needs
    with page.expect_response(re.compile(r"/ui/workflows/create_l2vpn_paged$")) as answer:
        form.get_by_role("button", name="Next").click()
    assert answer.value.status == 422
    expect(where).to_have_text("Page 2: PickPorts")  # the page it belongs to
    expect(page.locator('[data-field="ports"] .error')).to_contain_text("length >= 2")
    first = group.get_by_label("port ge-2/0/1")
    expect(first).to_be_checked()  # what was picked stays
    expect(first).to_be_focused()  # the first field at fault
    group.get_by_label("port ge-2/0/2").check()
    form.get_by_role("button", name="Next").click()

    expect(where).to_have_text("Page 3: L2vpnVlan")
    form.get_by_label("vlan").fill("300")
    form.get_by_role("button", name="Back").click()  # a look back: the ports stay picked
    expect(where).to_have_text("Page 2: PickPorts")
    expect(group.get_by_label("port ge-2/0/1")).to_be_checked()
    expect(group.get_by_label("port ge-2/0/2")).to_be_checked()
    form.get_by_role("button", name="Next").click()
    expect(form.get_by_label("vlan")).to_have_value("300")  # and the VLAN typed before
    assert (
        console.daemon.request("GET", "/api/processes?workflow=create_l2vpn_paged")[1]["items"]
        == []
    )
    form.get_by_role("button", name="Next").click()

    expect(page.locator(".notice")).to_contain_text("Started.")
    expect(page).to_have_url(re.compile(r"/ui/processes/[0-9a-f-]{36}$"))  # ?done= dropped
    expect(page.locator(".notice")).to_contain_text("Started.")
    expect(status_of(page)).to_have_text("completed")
    pid = page.url.split("/")[-1].split("?")[0]
    process = console.daemon.get_process(pid)
    assert process["actions"][0]["actor"] == "token (operator)"
    _, sub = console.daemon.request(
        "GET", f"/api/subscriptions/{process['state']['subscription_id']}"
    )
    assert [s["port"] for s in sub["attributes"]["saps"]] == ports
    assert {s["vlan"] for s in sub["attributes"]["saps"]} == {300}
