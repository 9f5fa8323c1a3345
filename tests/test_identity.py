"""One identity check for the control API, the web console and the TCP guard (issue 26 item
16): who is asking is decided by orchd.api.identity alone, the console takes the API's public
parts and never its routes, and the rules the two share (the token, the Idempotency-Key) are
answered alike.

The API and the console run as the daemon composes them (orchd.api.app.create_app) over TCP
in aiohttp's test server, with a real Engine running tests/wf/console_flows.py.
"""

from __future__ import annotations

import ast
import asyncio
import html
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support.common import EngineFactory, console_client

import orchd
from orchd.api.app import API as API_KEY
from orchd.api.guard import TcpGuard, network_prefix
from orchd.api.logins import FailedLogins, address_key
from orchd.engine import Engine
from orchd.settings import TcpSettings

Client = TestClient[web.Request, web.Application]
#: A token with a "?" in it: the one character a header byte that is not UTF-8 used to pass
#: for (the API compared tokens with undecodable bytes replaced by "?").
TOKEN = "identity-test-token?0123456789abcdef"
API = Path(orchd.__file__).parent / "api"


@pytest.fixture
async def engine(engine_factory: EngineFactory) -> Engine:
    return await engine_factory(["console_flows"], name="identity.db")


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[Client]:
    """The API and the console over TCP with TOKEN, logged in to the console as "alice"."""
    async with console_client(engine, TOKEN) as logged_in:
        yield logged_in


def hidden(page: str, name: str) -> str:
    found = re.search(rf'<input type="hidden" name="{name}" value="([^"]*)"', page)
    assert found, f"the page has no hidden field {name}"
    return html.unescape(found.group(1))


# -- the Idempotency-Key: one rule ------------------------------------------------------------


@pytest.mark.parametrize("key", ["k" * 201, "two words", "tab\there"])
async def test_the_console_refuses_an_idempotency_key_the_api_refuses_with_its_message(
    client: Client, engine: Engine, key: str
) -> None:
    api = await client.post(
        "/api/processes/console_quick",
        json={},
        headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": key},
    )
    assert api.status == 400
    detail = (await api.json())["detail"]
    assert detail.startswith("Idempotency-Key: ")

    form = await (await client.get("/ui/workflows/console_quick")).text()
    data = {"csrf": hidden(form, "csrf"), "idempotency_key": key}
    page = await client.post("/ui/workflows/console_quick", data=data, allow_redirects=False)
    assert page.status == 400
    assert html.escape(detail, quote=False) in await page.text()
    assert (await engine.list_processes()).items == []  # neither started anything


async def test_the_console_still_takes_the_key_of_its_own_form(
    client: Client, engine: Engine
) -> None:
    form = await (await client.get("/ui/workflows/console_quick")).text()
    data = {"csrf": hidden(form, "csrf"), "idempotency_key": hidden(form, "idempotency_key")}
    first = await client.post("/ui/workflows/console_quick", data=data, allow_redirects=False)
    again = await client.post("/ui/workflows/console_quick", data=data, allow_redirects=False)
    assert first.status == again.status == 303
    assert first.headers["Location"] == again.headers["Location"]
    assert len((await engine.list_processes()).items) == 1


# -- the token: one check ----------------------------------------------------------------------

#: Authorization values, and whether each gives the right token (as the API has always said).
VARIANTS = [
    (None, False),  # no header
    (f"Basic {TOKEN}", False),  # another scheme
    ("Bearer", False),  # empty
    ("Bearer    ", False),  # empty, spaces
    ("Bearer wrong-token", False),  # wrong
    (f"Bearer {TOKEN}x", False),  # wrong: one character more
    (f"bearer {TOKEN}", True),  # the scheme in any case
    (f"Bearer   {TOKEN}  ", True),  # spaces around the token
]
#: The variants that give a token, which is then compared: each wrong one is a failed login.
WRONG_GIVEN = 2


async def raw_get(client: Client, path: str, authorization: bytes | None) -> int:
    """The status of a GET whose Authorization header is sent as these very bytes."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{client.port}\r\n".encode()
        if authorization is not None:
            head += b"Authorization: " + authorization + b"\r\n"
        writer.write(head + b"Connection: close\r\n\r\n")
        status = await reader.readline()
        return int(status.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


def reserve_guard() -> TcpGuard:
    guard = TcpGuard(TcpSettings(), FailedLogins(limit=0, window=60.0))
    guard.set_token(TOKEN)
    return guard


def head(authorization: bytes | None) -> bytes:
    """A request head as a connection on probation for a reserved slot sends it."""
    lines = b"GET /api/workflows HTTP/1.1\nHost: 127.0.0.1\n"
    return lines + (b"Authorization: " + authorization if authorization is not None else b"")


async def test_the_api_and_the_reserved_slots_answer_each_authorization_alike(
    client: Client,
) -> None:
    app_logins = logins_of(client)
    guard = reserve_guard()
    for value, right in VARIANTS:
        raw = None if value is None else value.encode()
        status = await raw_get(client, "/api/workflows", raw)
        assert status == (200 if right else 401), value
        assert guard.earns_reserve(head(raw), "192.0.2.1") is right, value
    # Only a token given and wrong is a failed login, on either side.
    assert app_logins.failures_total == guard.logins.failures_total == WRONG_GIVEN


async def test_a_header_byte_that_is_not_utf8_is_not_the_character_of_the_token(
    client: Client,
) -> None:
    # aiohttp decodes the byte \xff as a surrogate; comparing the header with it replaced by
    # "?" took this wrong token for TOKEN on the API, while the reserved slots refused it.
    forged = b"Bearer " + TOKEN.encode().replace(b"?", b"\xff")
    assert await raw_get(client, "/api/workflows", forged) == 401
    assert reserve_guard().earns_reserve(head(forged), "192.0.2.1") is False
    assert await raw_get(client, "/api/workflows", f"Bearer {TOKEN}".encode()) == 200


async def test_the_console_login_takes_the_token_the_api_takes(engine: Engine) -> None:
    async with console_client(engine, TOKEN) as client:
        logins = logins_of(client)
        before = logins.failures_total
        for typed, right in [("", False), ("wrong-token", False), (f"  {TOKEN} ", True)]:
            resp = await client.post(
                "/ui/login",
                data={"token": typed, "label": "", "next": "/ui/"},
                allow_redirects=False,
            )
            assert resp.status == (303 if right else 401), typed
        # A typed token is always given: the empty one and the wrong one are failed logins.
        assert logins.failures_total - before == 2


async def test_the_audit_trail_names_a_console_session_as_the_api_names_the_token(
    client: Client, engine: Engine
) -> None:
    api = await client.post(
        "/api/processes/console_quick",
        json={},
        headers={"Authorization": f"Bearer {TOKEN}", "X-Orchd-Reporter": "alice"},
    )
    assert api.status == 201
    form = await (await client.get("/ui/workflows/console_quick")).text()
    data = {"csrf": hidden(form, "csrf"), "idempotency_key": hidden(form, "idempotency_key")}
    started = await client.post("/ui/workflows/console_quick", data=data, allow_redirects=False)
    assert started.status == 303
    reporters = {p.reporter for p in (await engine.list_processes()).items}
    assert reporters == {"token (alice)"}


async def test_a_label_is_held_to_one_rule_on_the_api_and_at_the_console_login(
    engine: Engine,
) -> None:
    async with console_client(engine, TOKEN) as client:
        for given, why in [("x" * 201, "longer than 200 characters"), ("a\x85b", "control")]:
            api = await client.post(
                "/api/processes/console_quick",
                json={},
                headers={"Authorization": f"Bearer {TOKEN}", "X-Orchd-Reporter": given},
            )
            assert api.status == 400 and why in (await api.json())["detail"]
            login = await client.post(
                "/ui/login", data={"token": TOKEN, "label": given, "next": "/ui/"}
            )
            assert login.status == 401 and why in await login.text()


def logins_of(client: Client) -> FailedLogins:
    """The failed logins the client's app counts (its API's identity check)."""
    assert client.app is not None
    return client.app[API_KEY].identity.logins


# -- the console uses the API's public parts only ----------------------------------------------


def imports_and_private_names(path: Path) -> tuple[set[str], list[str]]:
    """The orchd modules ``path`` imports (anywhere in it), and the private names of other
    objects or modules it uses (``x._name``, ``from m import _name``)."""
    tree = ast.parse(path.read_text())
    modules: set[str] = set()
    private: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
            private += [a.name for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                private.append(f"{ast.unparse(node.value)}.{node.attr}")
    return {m for m in modules if m.startswith("orchd")}, private


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_the_console_imports_nothing_of_the_routes_and_no_private_name() -> None:
    modules = sorted((API / "console").glob("*.py"))
    assert len(modules) > 3
    for path in modules:
        imported, private = imports_and_private_names(path)
        assert not {m for m in imported if m.startswith("orchd.api.routes")}, path.name
        assert private == [], (path.name, private)


def test_the_routes_do_not_build_the_console_the_app_composes_both() -> None:
    routes, _ = imports_and_private_names(API / "routes.py")
    assert not {m for m in routes if m.startswith("orchd.api.console")}
    app, _ = imports_and_private_names(API / "app.py")
    assert {"orchd.api.routes", "orchd.api.console"} <= app


def test_one_host_is_one_address_for_the_login_throttle_and_the_connection_caps() -> None:
    for given, host, network in [
        ("192.0.2.7", "192.0.2.7", "192.0.2.0/24"),
        ("::ffff:192.0.2.7", "192.0.2.7", "192.0.2.0/24"),
        ("2001:db8::1%eth0", "2001:db8::/64", "2001:db8::/64"),
        ("?", "?", "?"),
    ]:
        assert (address_key(given), network_prefix(given)) == (host, network), given


async def test_a_csrf_token_header_byte_that_is_not_utf8_is_refused_not_a_crash(
    client: Client,
) -> None:
    assert client.port is not None
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))["orchd_session"]
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(
            f"POST /ui/logout HTTP/1.1\r\nHost: 127.0.0.1:{client.port}\r\n".encode()
            + f"Cookie: orchd_session={cookie.value}\r\n".encode()
            + b"X-CSRF-Token: \xff\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        status = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    assert int(status.split()[1]) == 403  # was a 500 and a traceback: the token as bytes
    assert (await client.get("/ui/processes", allow_redirects=False)).status == 200
