"""The console's incident views (issue 30 item 8): the process list's search, subscription
column and top-level rows; which element each child handles; the retry form's "ask again" only
where the engine would do it; every action answered with a redirect (a reload posts nothing);
the steps drawn as a timeline. Over HTTP against a real Engine (tests/test_console_browser.py
drives the timeline and a reload in Chromium).
"""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support.common import EngineFactory, console_client, settle

from orchd.api.console import timeline
from orchd.engine import Engine
from orchd.model import Process, ProcessStatus, StepRecord, StepStatus, Target

Client = TestClient[web.Request, web.Application]
TOKEN = "console-views-token-0123456789abcdefghij"
API = {"Authorization": f"Bearer {TOKEN}"}
PORTS = [{"port": f"xe-0/0/{n}", "vlan": 100 + n} for n in range(3)]


@pytest.fixture(autouse=True)
def run_files(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workflows' steps count their runs in files (runfiles.py): here, not in the cwd."""
    monkeypatch.setenv("ORCHD_TEST_DIR", str(tmp_path))


@pytest.fixture
async def engine(engine_factory: EngineFactory) -> Engine:
    return await engine_factory(["console_flows", "console_view_flows"], name="views.db")


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[Client]:
    async with console_client(engine, TOKEN) as client:
        yield client


async def page(client: Client, path: str) -> str:
    resp = await client.get(path)
    assert resp.status == 200, (path, await resp.text())
    return await resp.text()


def csrf_of(text: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', text)
    assert found, "the page has no CSRF field"
    return found.group(1)


def row_ids(text: str) -> list[str]:
    return re.findall(r'<tr data-id="([0-9a-f-]{36})"', text)


async def post(client: Client, path: str, **data: str) -> str:
    """Post a console form as the page would; the redirect's target (the answer is a 303)."""
    csrf = csrf_of(await page(client, "/ui/processes"))
    resp = await client.post(path, data={"csrf": csrf, **data}, allow_redirects=False)
    assert resp.status == 303, (resp.status, await resp.text())
    return resp.headers["Location"]


async def failed_order(engine: Engine, answer: Any) -> str:
    """A view_order failed at its validate step, the OSS having answered ``answer``."""
    pid = await engine.start("view_order", {})
    assert (await engine.wait(pid)).status == "awaiting_callback"
    await engine.answer_callback(pid, answer)
    process = await engine.wait(pid)
    assert (process.status, process.current_step) == ("failed", "check order")
    return pid


# -- (a) the list -----------------------------------------------------------------------------


async def test_the_list_shows_top_level_processes_with_their_subscription(
    engine: Engine, client: Client
) -> None:
    widget = await engine.start("console_create", {"name": "w1", "customer_id": "acme"})
    assert (await engine.wait(widget)).status == "completed"
    parent = await engine.start("view_parent", {"ports": PORTS})
    done = await settle(engine, parent, "completed")
    assert len(done.children) == 3
    kids = {c.id for c in done.children}

    listed = await page(client, "/ui/processes")
    assert set(row_ids(listed)) == {widget, parent}
    row = listed[listed.index(f'<tr data-id="{widget}"') :].split("</tr>")[0]
    assert "widget w1" in row and "customer acme" in row
    # Children: on the parent's page, or with the toggle, each naming its parent.
    everything = await page(client, "/ui/processes?children=true")
    assert set(row_ids(everything)) == {widget, parent, *kids}
    assert f'child of <a href="/ui/processes/{parent}">' in everything
    of_parent = await page(client, f"/ui/processes?parent={parent}")
    assert set(row_ids(of_parent)) == kids
    # The live list's refresh of one row shows it as the list does.
    fresh = await page(client, f"/ui/processes/{widget}/row")
    assert "widget w1" in fresh and "customer acme" in fresh


async def test_the_list_searches_as_the_api_does(engine: Engine, client: Client) -> None:
    widget = await engine.start("console_create", {"name": "w1", "customer_id": "Acme-EU"})
    other = await engine.start("console_create", {"name": "w2", "customer_id": "globex"})
    hello = await engine.start("console_quick", {})
    for pid in (widget, other, hello):
        assert (await engine.wait(pid)).status == "completed"
    searches = {
        "acme-eu": {widget},  # the subscription's customer, any case
        "WIDGET W2": {other},  # its description
        hello[:8]: {hello},  # an id as `show` prints it
        "console_quick": {hello},  # a workflow
        "100%": set(),  # a wildcard is a character like any other
    }
    for q, expected in searches.items():
        listed = await page(client, f"/ui/processes?q={q.replace('%', '%25')}")
        assert set(row_ids(listed)) == expected, q
        resp = await client.get("/api/processes", params={"q": q, "top": "true"}, headers=API)
        assert {p["id"] for p in (await resp.json())["items"]} == expected, q
    assert 'value="acme-eu"' in await page(client, "/ui/processes?q=acme-eu")
    bad = await client.get("/api/processes", params={"top": "yes"}, headers=API)
    assert bad.status == 400 and "top" in (await bad.json())["detail"]


# -- (b) the children table -------------------------------------------------------------------


async def test_each_child_names_the_element_it_handles(engine: Engine, client: Client) -> None:
    parent = await engine.start("view_parent", {"ports": PORTS})
    process = await settle(engine, parent, "completed")
    text = await page(client, f"/ui/processes/{parent}")
    children = text[text.index('id="children"') :].split("</section>")[0]
    for child in process.children:
        assert child.element is not None
        row = children[children.index(f'<tr data-id="{child.id}"') :].split("</tr>")[0]
        # Which child handles which element comes from the store, not from the row's order.
        state = (await engine.get(child.id)).state
        assert (state["port"], state["vlan"]) == (PORTS[child.element]["port"],
                                                  PORTS[child.element]["vlan"])  # fmt: skip
        assert f"ports[{child.element}]" in row
        assert f'"port":"{state["port"]}"' in htmllib.unescape(row)


# -- (c) the retry form -----------------------------------------------------------------------


async def test_asking_again_is_offered_only_where_the_engine_does_it(
    engine: Engine, client: Client
) -> None:
    order = await failed_order(engine, {"ok": False})
    plain = await engine.start("console_fail", {})
    assert (await engine.wait(plain)).status == "failed"

    assert 'name="reissue"' not in await page(client, f"/ui/processes/{plain}")
    # The engine refuses it there: the form is right not to offer it.
    refused = await post(client, f"/ui/processes/{plain}/retry", reissue="true")
    assert "is not part of a callback_step" in await page(client, refused)
    assert (await engine.get(plain)).status == "failed"

    text = await page(client, f"/ui/processes/{order}")
    assert 'name="reissue"' in text and 'id="retry-form"' in text
    await post(client, f"/ui/processes/{order}/retry", reissue="true")
    asked = await settle(engine, order, "awaiting_callback")
    assert asked.current_step == "await order"
    assert [a.action for a in asked.actions][-1] == "retry"


# -- (d) post/redirect/get ---------------------------------------------------------------------


async def test_an_action_redirects_and_a_reload_posts_nothing(
    engine: Engine, client: Client
) -> None:
    pid = await engine.start("console_flaky", {})
    assert (await engine.wait(pid)).status == "failed"
    target = await post(client, f"/ui/processes/{pid}/retry")
    assert target == f"/ui/processes/{pid}?done=retried"
    assert "Retrying the failed step." in await page(client, target)
    await settle(engine, pid, "completed")
    await page(client, target)  # a reload of the page the redirect named
    retries = [a for a in (await engine.get(pid)).actions if a.action == "retry"]
    assert len(retries) == 1

    # A refusal (409: it completed) redirects too; its problem is shown once.
    refused = await post(client, f"/ui/processes/{pid}/abort")
    assert re.fullmatch(rf"/ui/processes/{pid}\?flash=[\w-]+", refused)
    first = await page(client, refused)
    assert 'id="problem"' in first and "cannot abort" in first
    assert 'id="problem"' not in await page(client, refused)
    assert (await engine.get(pid)).status == "completed"


async def test_a_refused_form_comes_back_with_what_was_typed(
    engine: Engine, client: Client
) -> None:
    pid = await engine.start("console_fail", {})
    assert (await engine.wait(pid)).status == "failed"
    target = await post(client, f"/ui/processes/{pid}/skip", reason="   ")
    text = await page(client, target)
    form = text[text.index('id="skip-form"') :].split("</form>")[0]
    assert 'id="skip-error"' in form and 'aria-invalid="true"' in form
    assert (await engine.get(pid)).status == "failed"
    # Another session cannot read it.
    async with console_client(engine, TOKEN, label="bob") as other:
        assert 'id="skip-error"' not in await page(other, target)


# -- (f) the timeline -------------------------------------------------------------------------


async def test_the_timeline_draws_a_lane_per_branch_with_waits_and_retries(
    engine: Engine, client: Client
) -> None:
    pid = await engine.start("view_fan_out", {"ports": list(range(20))})
    await settle(engine, pid, "completed")
    text = await page(client, f"/ui/processes/{pid}")
    figure = text[text.index('<figure class="timeline"') :].split("</figure>")[0]
    lanes = re.findall(r'<g class="lane[^"]*" data-lane="([^"]+)"', figure)
    assert lanes == ["main", *(f"Settle ports/{n}" for n in range(20))]
    # Branch 3 failed its first attempt, waited, and its retry succeeded.
    assert len(re.findall(r'<g class="bar s-waiting">', figure)) == 1
    assert len(re.findall(r'<g class="wait s-waiting">', figure)) == 1
    retried = re.findall(r'<g class="bar s-success retry"><title>([^<]+)</title>', figure)
    assert len(retried) == 1 and "settle port" in retried[0] and "attempt 2" in retried[0]
    assert "21 lanes, 1 wait, 1 retry" in figure
    assert "style=" not in text and "<script>" not in text


async def test_the_timeline_escapes_what_workflows_wrote(engine: Engine, client: Client) -> None:
    pid = await failed_order(engine, {"x": "<script>alert(1)</script>"})
    text = await page(client, f"/ui/processes/{pid}")
    figure = text[text.index('<figure class="timeline"') :].split("</figure>")[0]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in figure
    assert "<script>alert" not in text


def test_a_timeline_of_many_branches_draws_sixty_lanes_and_a_wait_until_now() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = [
        StepRecord(
            name="settle port",
            status=StepStatus.SUCCESS,
            started_at=start + timedelta(seconds=n % 7),
            finished_at=start + timedelta(seconds=n % 7 + 1),
            branch=f"Each/{n}",
        )
        for n in range(100)
    ]
    records.append(
        StepRecord(
            name="ask port",
            status=StepStatus.SUSPENDED,
            started_at=start + timedelta(seconds=9),
            finished_at=start + timedelta(seconds=9),
        )
    )
    process = Process(
        id="00000000-0000-4000-8000-000000000001",
        workflow="w",
        target=Target.SYSTEM,
        status=ProcessStatus.SUSPENDED,
        state={},
        steps=records,
        actions=[],
        created_at=start,
        updated_at=start + timedelta(seconds=9),
    )
    numbered = [(n + 1, r, r.branch) for n, r in enumerate(records)]
    drawn = timeline.build(process, numbered, now=start + timedelta(seconds=20))
    assert drawn is not None
    assert len(drawn.lanes) == timeline.MAX_LANES and drawn.more_lanes == 101 - 60
    assert [lane.name for lane in drawn.lanes[:3]] == ["main", "Each/0", "Each/1"]  # 1 before 10
    assert len(drawn.bars) == 1 + 59  # the main line's and the drawn branches'
    (wait,) = drawn.waits  # from the form's question until now, the whole right half
    assert wait.title == "ask port: waited for a form, 11.0 s"
    assert wait.x + wait.width == pytest.approx(timeline.LABEL_W + timeline.CHART_W, abs=0.2)
    assert drawn.now_x == pytest.approx(timeline.LABEL_W + timeline.CHART_W)
    assert [t.label for t in drawn.ticks] == ["0", "5 s", "10 s", "15 s", "20 s"]
