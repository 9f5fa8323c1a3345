"""The web console over HTTP, without a browser: headers, the login session and its cookie,
CSRF, the actor of its actions, forms from JSON Schema (tests/test_console_browser.py drives
it in Chromium).

In-process tests run ``create_app`` over TCP (aiohttp's test server) with a real Engine on a
temporary SQLite file; the Unix-socket actor is checked against a real daemon.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from support.common import EngineFactory, engine_fixture
from support.daemons import DaemonFactory, UnixHTTPConnection

from orchd.api.app import create_app
from orchd.api.console import CONSOLE
from orchd.api.console.forms import build_form, read_answer
from orchd.api.console.render import CSP
from orchd.api.console.session import Sessions
from orchd.engine import Engine
from orchd.settings import ConsoleSettings
from orchd.state import form_schema

Client = TestClient[web.Request, web.Application]
TOKEN = "console-test-token-0123456789abcdefghij"


engine = engine_fixture("console_flows")


@pytest.fixture
async def serve(
    engine: Engine, app_client: Callable[..., Awaitable[Client]]
) -> Callable[..., Awaitable[Client]]:
    """``await serve(**create_app_options)``: a test client over TCP (token set by default)."""

    async def make(**options: Any) -> Client:
        options.setdefault("token", TOKEN)
        return await app_client(engine, **options)

    return make


async def login(client: Client, label: str = "") -> str:
    """Log in with the token; return the session's CSRF token (from the next page)."""
    resp = await client.post(
        "/ui/login", data={"token": TOKEN, "label": label, "next": "/ui/"}, allow_redirects=False
    )
    assert resp.status == 303, await resp.text()
    page = await client.get("/ui/processes")
    assert page.status == 200
    return csrf_of(await page.text())


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


async def suspended(engine: Engine) -> str:
    pid = await engine.start("console_ask", {})
    process = await engine.wait(pid)
    assert process.status == "suspended"
    return pid


# -- headers ----------------------------------------------------------------------------------


async def test_every_page_forbids_inline_script_and_framing(serve: Any, engine: Engine) -> None:
    client = await serve()
    pid = await suspended(engine)
    login_page = await client.get("/ui/login")
    assert login_page.headers["Content-Security-Policy"] == CSP
    await login(client)
    for path in (
        "/ui/",
        f"/ui/processes/{pid}",
        "/ui/workflows",
        "/ui/workflows/console_create",
        "/ui/subscriptions",
        "/ui/schedules",
        "/ui/health",
        "/ui/processes/00000000-0000-0000-0000-000000000000",  # the 404 page too
    ):
        resp = await client.get(path)
        assert resp.content_type == "text/html", path
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert resp.headers["Cache-Control"] == "no-store"  # pages hold a CSRF token
        html = await resp.text()
        # Nothing the policy would have to allow: every script is a file, no handler inline.
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], path
        assert re.findall(r"\son[a-z]+\s*=", html) == [], path
        assert "style=" not in html, path


async def test_state_from_workflow_code_is_escaped(serve: Any, engine: Engine) -> None:
    client = await serve()
    pid = await engine.start("console_quick", {"name": "<script>alert(1)</script>"})
    await engine.wait(pid)
    await login(client)
    html = await (await client.get(f"/ui/processes/{pid}")).text()
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# -- the login session ------------------------------------------------------------------------


async def test_login_sets_a_strict_http_only_session_cookie(serve: Any) -> None:
    client = await serve(console=ConsoleSettings(session_timeout=3600.0))
    resp = await client.post(
        "/ui/login", data={"token": TOKEN, "next": "/ui/health"}, allow_redirects=False
    )
    assert resp.status == 303 and resp.headers["Location"] == "/ui/health"
    cookie = resp.headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "samesite", "max-age"} <= attributes
    assert "SameSite=Strict" in cookie and "Path=/" in cookie
    assert 3590 <= int(re.search(r"Max-Age=(\d+)", cookie).group(1)) <= 3600  # type: ignore[union-attr]
    assert TOKEN not in cookie  # the browser never holds the token
    assert (await client.get("/ui/health")).status == 200


async def test_without_a_session_tcp_pages_send_to_the_login(serve: Any, engine: Engine) -> None:
    client = await serve()
    pid = await suspended(engine)
    resp = await client.get("/ui/processes?status=failed", allow_redirects=False)
    assert resp.status == 303
    target = urllib.parse.unquote(resp.headers["Location"])
    assert target == "/ui/login?next=/ui/processes?status=failed"
    # A post or the event stream is refused outright, and nothing happens.
    assert (await client.post(f"/ui/processes/{pid}/abort", data={})).status == 401
    assert (await client.get("/ui/events")).status == 401
    assert (await engine.get(pid)).status == "suspended"


async def test_a_wrong_token_is_refused_without_a_session(serve: Any) -> None:
    client = await serve()
    resp = await client.post("/ui/login", data={"token": "guess", "next": "/ui/"})
    assert resp.status == 401
    assert "not the daemon" in await resp.text()
    assert "Set-Cookie" not in resp.headers
    assert (await client.get("/ui/", allow_redirects=False)).status == 303


async def test_the_login_only_redirects_inside_the_console(serve: Any) -> None:
    client = await serve()
    for target in ("https://evil.example/", "//evil.example/ui/", "/api/processes"):
        resp = await client.post(
            "/ui/login", data={"token": TOKEN, "next": target}, allow_redirects=False
        )
        assert resp.headers["Location"] == "/ui/", target


async def test_sessions_expire(serve: Any) -> None:
    client = await serve(console=ConsoleSettings(session_timeout=0.5))
    # The sessions run on a clock of the test's: on a busy machine the login and the first
    # page could take longer than the timeout itself.
    now = [time.time()]
    console = client.app[CONSOLE]
    assert console.sessions.timeout == 0.5
    console.sessions = Sessions(console.sessions.timeout, clock=lambda: now[0])
    await login(client)
    assert (await client.get("/ui/health", allow_redirects=False)).status == 200
    now[0] += 0.7
    resp = await client.get("/ui/health", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/ui/login")


async def test_logout_ends_the_session(serve: Any) -> None:
    client = await serve()
    csrf = await login(client)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))["orchd_session"]
    resp = await client.post("/ui/logout", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/ui/login"
    assert (
        "orchd_session=;" in resp.headers["Set-Cookie"] or "Max-Age=0" in resp.headers["Set-Cookie"]
    )
    # The old session id is dead on the server too, not only forgotten by this browser.
    again = await client.get(
        "/ui/health", headers={"Cookie": f"orchd_session={cookie.value}"}, allow_redirects=False
    )
    assert again.status == 303


async def test_the_session_cookie_does_not_open_the_api(serve: Any) -> None:
    client = await serve()
    await login(client)
    assert (await client.get("/api/processes")).status == 401  # the API wants the token


async def test_the_console_can_be_turned_off(serve: Any) -> None:
    client = await serve(console=ConsoleSettings(enabled=False))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.get("/ui/login", headers=bearer)).status == 404


# -- CSRF and the actor -----------------------------------------------------------------------


async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    serve: Any, engine: Engine
) -> None:
    client = await serve()
    pid = await suspended(engine)
    csrf = await login(client)
    for data in ({}, {"csrf": "not-the-token"}, {"csrf": csrf[:-1]}):
        resp = await client.post(f"/ui/processes/{pid}/abort", data=data)
        assert resp.status == 403, data
        assert "CSRF" in await resp.text()
    process = await engine.get(pid)
    assert process.status == "suspended"
    assert [a.action for a in process.actions] == ["start"]
    resp = await client.post(f"/ui/processes/{pid}/abort", data={"csrf": csrf})
    assert resp.status == 200  # followed the redirect to the process page
    process = await engine.get(pid)
    assert process.status == "aborted"
    assert (process.actions[-1].action, process.actions[-1].actor) == ("abort", "token")


async def test_the_name_given_at_login_labels_the_token_in_the_audit_trail(
    serve: Any, engine: Engine
) -> None:
    client = await serve()
    pid = await suspended(engine)
    csrf = await login(client, label="alice")
    data = {"csrf": csrf, "port_name": "xe-0/0/1", "vlan": "12", "speed": "10G"}
    resp = await client.post(f"/ui/processes/{pid}/resume", data=data, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == f"/ui/processes/{pid}?done=resumed"
    process = await engine.wait(pid)
    assert process.status == "completed"
    assert process.state["configured"] == "xe-0/0/1.12 at 10G"
    assert process.state["confirm"] is False  # an unchecked box is false
    assert process.actions[-1].actor == "token (alice)"


async def test_a_refused_answer_is_shown_next_to_its_fields(serve: Any, engine: Engine) -> None:
    client = await serve()
    pid = await suspended(engine)
    csrf = await login(client)
    data = {"csrf": csrf, "port_name": "", "vlan": "5000", "speed": "1G"}
    resp = await client.post(f"/ui/processes/{pid}/resume", data=data)
    assert resp.status == 422
    html = await resp.text()
    vlan = field_html(html, "vlan")
    assert 'value="5000"' in vlan and 'aria-invalid="true"' in vlan and "4094" in vlan
    assert "required" in field_html(html, "port_name")
    assert "speed" not in re.findall(r'data-field="(\w+)"[^>]*class', html)
    process = await engine.get(pid)
    assert process.status == "suspended" and [a.action for a in process.actions] == ["start"]


def field_html(html: str, name: str) -> str:
    start = html.index(f'data-field="{name}"')
    end = html.find('data-field="', start + 1)
    return html[start : end if end > 0 else len(html)]


async def test_skip_needs_a_reason_as_the_api_does(serve: Any, engine: Engine) -> None:
    client = await serve()
    pid = await engine.start("console_fail", {})
    assert (await engine.wait(pid)).status == "failed"
    csrf = await login(client)
    resp = await client.post(f"/ui/processes/{pid}/skip", data={"csrf": csrf, "reason": "  "})
    # Post/redirect/get: the refusal is shown on the process's page.
    assert resp.status == 200 and [r.status for r in resp.history] == [303]
    assert 'id="skip-error"' in await resp.text()
    assert (await engine.get(pid)).status == "failed"


async def test_a_start_that_the_engine_refuses_keeps_the_input(serve: Any, engine: Engine) -> None:
    client = await serve()
    csrf = await login(client)
    data = {"csrf": csrf, "name": "n1", "customer_id": "c1", "size": "0"}
    resp = await client.post("/ui/workflows/console_create", data=data)
    assert resp.status == 422
    html = await resp.text()
    assert 'value="n1"' in field_html(html, "name")
    assert "Expected `int` &gt;= 1" in field_html(html, "size")
    assert (await engine.list_processes()).items == []


async def test_a_double_submitted_start_makes_one_process(serve: Any, engine: Engine) -> None:
    client = await serve()
    csrf = await login(client)
    html = await (await client.get("/ui/workflows/console_quick")).text()
    key = re.search(r'name="idempotency_key" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    data = {"csrf": csrf, "idempotency_key": key}
    first = await client.post("/ui/workflows/console_quick", data=data, allow_redirects=False)
    second = await client.post("/ui/workflows/console_quick", data=data, allow_redirects=False)
    assert first.headers["Location"] == second.headers["Location"]
    assert len((await engine.list_processes()).items) == 1


async def test_the_console_stream_carries_the_engines_events(serve: Any, engine: Engine) -> None:
    client = await serve()
    await login(client)
    resp = await client.get(f"/ui/events?after={engine.last_event_id}")
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    pid = await engine.start("console_quick", {})
    seen = b""
    async with asyncio.timeout(5):
        while b'"status":"completed"' not in seen:
            seen += await resp.content.readany()
    assert pid.encode() in seen
    resp.close()


# -- the Unix socket ---------------------------------------------------------------------------


def unix_call(
    socket_path: str, method: str, path: str, body: str | None = None, cookie: str = ""
) -> tuple[int, dict[str, str], str]:
    conn = UnixHTTPConnection(socket_path)
    try:
        headers = {"Cookie": cookie} if cookie else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        resp: http.client.HTTPResponse = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


def test_on_the_socket_the_peer_uid_is_the_actor(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"workflows": ["console_flows"]})
    pid = daemon.start_process("console_ask")
    daemon.wait_process(pid, ("suspended",))
    status, headers, html = unix_call(daemon.socket, "GET", f"/ui/processes/{pid}")
    assert status == 200 and "/ui/login" not in html  # no login on the socket
    cookie = headers["Set-Cookie"].split(";")[0]
    csrf = csrf_of(html)
    # Through a tunnel, another site could make the browser post: without the token, refused.
    assert unix_call(daemon.socket, "POST", f"/ui/processes/{pid}/abort", "", cookie)[0] == 403
    assert daemon.get_process(pid)["status"] == "suspended"
    body = urllib.parse.urlencode({"csrf": csrf})
    status, headers, _ = unix_call(
        daemon.socket, "POST", f"/ui/processes/{pid}/abort", body, cookie
    )
    assert status == 303
    process = daemon.get_process(pid)
    assert process["status"] == "aborted"
    assert process["actions"][-1]["action"] == "abort"
    assert process["actions"][-1]["actor"] == f"uid:{os.getuid()}"


# -- forms from JSON Schema --------------------------------------------------------------------


def test_fields_follow_the_schema() -> None:
    from console_flows import PortAnswer, WidgetForm

    form = build_form(form_schema(PortAnswer))
    kinds = {f.name: (f.kind, f.required, f.value) for f in form.fields}
    assert kinds == {
        "port_name": ("text", True, ""),
        "vlan": ("integer", True, ""),
        "speed": ("choice", False, "1G"),  # the enum's default is preselected
        "confirm": ("boolean", False, ""),
    }
    speed = form.field_named("speed")
    assert speed is not None and [v for v, _ in speed.choices] == ["10G", "1G"]
    vlan = form.field_named("vlan")
    assert vlan is not None and vlan.attrs == {"min": "1", "max": "4094"}
    size = build_form(form_schema(WidgetForm)).field_named("size")
    assert size is not None and size.value == "1"


def test_posted_text_becomes_the_json_the_api_would_get() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "x": {"type": "number"},
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "level": {"enum": [1, 2]},
        },
    }
    answer, problems = read_answer(
        schema, {"n": "42", "x": "2.5", "tags": '["a"]', "note": "", "level": "2"}
    )
    assert answer == {"n": 42, "x": 2.5, "ok": False, "tags": ["a"], "level": 2}
    assert problems == []
    answer, problems = read_answer(schema, {"n": "forty", "tags": "[oops", "ok": "true"})
    assert answer["n"] == "forty"  # passed on for the engine to name the problem
    assert answer["ok"] is True
    assert [p["loc"] for p in problems] == [["tags"]]


def test_every_console_file_ships_in_the_package() -> None:
    """A non-editable install has only what package-data names: a template or script that
    matches none of its patterns would be missing from a wheel."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["orchd.api.console"]
    folder = root / "orchd" / "api" / "console"
    files = [
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    ]
    assert files, "the console has no templates or static files"
    assert [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)] == []


def test_the_console_table_of_the_config(tmp_path: Any) -> None:
    from orchd.config import load_config
    from orchd.errors import ConfigError

    path = tmp_path / "orchd.toml"
    path.write_text('[console]\nsession_timeout = "30m"\nenabled = false\n')
    assert load_config(path, env={}).config.console == ConsoleSettings(
        enabled=False, session_timeout=1800.0
    )
    path.write_text('[console]\nsession_timeout = "0s"\n')
    with pytest.raises(ConfigError, match=r"console\.session_timeout: .*greater than zero"):
        load_config(path, env={})


async def test_a_forked_process_shows_its_branches_and_one_branchs_steps(
    engine_factory: EngineFactory,
) -> None:
    from branch_flows import Ledger

    ledger = Ledger()
    ledger.failing.add(3)
    engine = await engine_factory(["branch_flows"], name="forks.db", resources={Ledger: ledger})
    pid = await engine.start("ports", {"ports": list(range(1, 41))})
    assert (await engine.wait(pid)).status == "failed"
    client: Client = TestClient(TestServer(create_app(engine, token=TOKEN)))
    await client.start_server()
    try:
        await login(client)
        page = await (await client.get(f"/ui/processes/{pid}")).text()
        assert 'id="forks-h">Branches' in page and "Configure ports/2" in page
        # 40 branch steps are few enough to show with the main line, each with its branch.
        assert page.count('data-label="Branch">Configure ports/') == 40
        one = await (await client.get(f"/ui/processes/{pid}?branch=Configure+ports/2")).text()
        assert "Steps of Configure ports/2" in one
        assert one.count('data-label="Branch">') == 1 and "3 is failing" in one
    finally:
        await client.close()


def test_a_large_fork_leaves_its_branch_steps_out_of_the_timeline() -> None:
    from datetime import UTC, datetime

    from orchd.api.console.pages import TIMELINE_BRANCH_STEPS, timeline
    from orchd.model import Process, StepRecord

    now = datetime.now(UTC)

    def record(name: str, branch: str | None) -> StepRecord:
        return StepRecord(
            name=name, status="success", started_at=now, finished_at=now, branch=branch
        )

    fan = [record("work", f"F/{i}") for i in range(TIMELINE_BRANCH_STEPS + 1)]
    process = Process(
        id="6f1c1d2e-0000-4000-8000-000000000001", workflow="wf", target="SYSTEM",
        status="completed", state={}, steps=[record("init", None), *fan, record("done", None)],
        actions=[], created_at=now, updated_at=now,
    )  # fmt: skip
    shown, hidden = timeline(process)
    assert [s.name for _, s, _ in shown] == ["init", "done"] and hidden == len(fan)
    shown, hidden = timeline(process, "F/7")
    assert [(n, b) for n, _, b in shown] == [(9, "F/7")] and hidden == 0
