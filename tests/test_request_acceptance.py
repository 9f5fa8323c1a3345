"""What the control API and the console take at all (README "The HTTP API"; issue 26 items 1, 2, 7,
9,
10, 11 and 14), against one real daemon (``orchd serve``, tests/wf/fuzz_flows.py) on its Unix
socket and on its TCP listener:

- a body sent to the JSON API is ``application/json`` or it is refused (415), on the socket too;
- a request that changes something is refused (403) when a browser sent it for another site;
- over TCP the ``Host`` must name this daemon (421; 400 without one), and a browser on the socket
  must come as localhost (a tunnel) or by an allowed name: DNS rebinding finds nothing;
- whitespace is not JSON (400, never "no body"), nor is an object that names a key twice;
- numbers too long for any id or count are a 400, not a 500;
- ``HEAD /api/events`` has no body;
- the metrics' names do not clash, the OpenAPI document describes the headers and answers;
- an ``Idempotency-Key`` answers only the input it was first sent with (422 otherwise).

Every refusal is checked to have changed nothing that the test can see.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from support.common import EngineFactory
from support.daemons import Answer, DaemonProcess, UnixHTTPConnection, free_port, running_daemon

from orchd.errors import IdempotencyKeyReused

TOKEN = "acceptance-token-0123456789abcdef"
#: The name the config allows besides the daemon's own.
ALLOWED = "orchd.example.net"
PROBLEM = "application/problem+json"
SCHEDULE = "tick-hourly"
#: Where a page that wants to act on the daemon comes from.
EVIL = "http://evil.example"
#: A JSON body that each body-taking route would take (or refuse for another reason).
BODY = b"{}"


@dataclass
class Served:
    daemon: DaemonProcess
    port: int


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One daemon: the Unix socket, TCP on a loopback port with a token, one allowed name."""
    directory = tmp_path_factory.mktemp("acceptance")
    token = directory / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    port = free_port()
    config = {
        "workflows": ["fuzz_flows"],
        "listen": f"127.0.0.1:{port}",
        "token_file": str(token),
        "allowed_hosts": [ALLOWED],
    }
    schedule = f'[[schedules]]\nname = "{SCHEDULE}"\nworkflow = "fuzz_tick"\nevery = "1h"\n'
    with running_daemon(directory / "daemon", config, raw_config=schedule) as daemon:
        yield Served(daemon, port)


def send(
    served: Served,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    tcp: bool = False,
) -> Answer:
    """One request with ``body`` sent as is (no Content-Type unless ``headers`` give one); over
    TCP with the token unless ``headers`` give an Authorization. A ``Host`` in ``headers``
    replaces the one http.client would send."""
    sent = dict(headers or {})
    conn: http.client.HTTPConnection
    if tcp:
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
        sent.setdefault("Authorization", f"Bearer {TOKEN}")
    else:
        conn = UnixHTTPConnection(served.daemon.socket)
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return Answer.of(response)
    finally:
        conn.close()


def json_post(served: Served, path: str, body: Any, **options: Any) -> Answer:
    headers = {"Content-Type": "application/json", **options.pop("headers", {})}
    return send(served, "POST", path, json.dumps(body).encode(), headers, **options)


def raw_exchange(served: Served, data: bytes, *, tcp: bool, until: bytes | None = None) -> bytes:
    """Send ``data`` on a fresh connection; return what the daemon sends back until it closes
    the connection (the request asks it to), or ``until`` came, or (without ``until``) the
    first byte after the answer's head."""
    family = socket.AF_INET if tcp else socket.AF_UNIX
    address: Any = ("127.0.0.1", served.port) if tcp else served.daemon.socket
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(address)
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
            head, sep, rest = received.partition(b"\r\n\r\n")
            if (until is None and sep and rest) or (until is not None and until in received):
                break
        return received


def processes(served: Served, workflow: str) -> set[str]:
    """The ids of the workflow's processes."""
    status, page = served.daemon.request("GET", f"/api/processes?workflow={workflow}&limit=500")
    assert status == 200, page
    return {str(p["id"]) for p in page["items"]}


def started(served: Served, workflow: str, body: Any = None) -> str:
    return served.daemon.start_process(workflow, body)


def assert_problem(reply: Answer, status: int) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.content_type == PROBLEM, reply.headers
    problem: dict[str, Any] = reply.json
    assert problem["status"] == status and problem["detail"], problem
    return problem


@pytest.fixture(scope="module")
def suspended(served: Served) -> str:
    """A process that waits for its form's answer: what a refused resume must leave alone."""
    pid = started(served, "fuzz_ask")
    served.daemon.wait_process(pid, ("suspended",))
    return pid


@pytest.fixture(scope="module")
def awaiting(served: Served) -> tuple[str, str]:
    """A process awaiting its callback, and the callback's token."""
    pid = started(served, "fuzz_callback")
    process = served.daemon.wait_process(pid, ("awaiting_callback",))
    return pid, str(process["state"]["sent_with"])


def body_routes(suspended: str, awaiting: tuple[str, str]) -> list[str]:
    pid, token = awaiting
    return [
        "/api/processes/fuzz_tick",
        f"/api/processes/{suspended}/resume",
        f"/api/processes/{suspended}/retry",
        f"/api/processes/{suspended}/skip",
        f"/api/processes/{pid}/callback",
        f"/api/callbacks/{token}",
        "/api/gc",
    ]


# -- 1. bodies only as application/json (415) ------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/json; charset=latin-1", "application/jsonx"],
)  # fmt: skip
@pytest.mark.parametrize("tcp", [False, True], ids=["socket", "tcp"])
def test_a_body_that_is_not_typed_json_is_415_on_every_json_route(
    served: Served,
    suspended: str,
    awaiting: tuple[str, str],
    content_type: str | None,
    tcp: bool,
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    ticks = processes(served, "fuzz_tick")
    for path in body_routes(suspended, awaiting):
        problem = assert_problem(send(served, "POST", path, BODY, headers, tcp=tcp), 415)
        assert "application/json" in problem["detail"], path
    # Nothing was started or answered: the suspended process still waits, the callback's
    # process still awaits its answer.
    assert processes(served, "fuzz_tick") == ticks
    assert served.daemon.get_process(suspended)["status"] == "suspended"
    assert served.daemon.get_process(awaiting[0])["status"] == "awaiting_callback"


def test_a_form_post_to_the_socket_starts_nothing(served: Served) -> None:
    # What a page could make a browser send through a tunnel without asking first.
    ticks = processes(served, "fuzz_tick")
    for content_type, body in (
        ("text/plain", b'{"x": 1}'),
        ("application/x-www-form-urlencoded", b"x=1"),
    ):
        reply = send(
            served, "POST", "/api/processes/fuzz_tick", body, {"Content-Type": content_type}
        )
        assert_problem(reply, 415)
    assert processes(served, "fuzz_tick") == ticks
    # JSON is taken, with or without a UTF-8 charset.
    for content_type in ("application/json", "Application/JSON;charset=UTF-8"):
        reply = send(
            served, "POST", "/api/processes/fuzz_tick", b'{"n": 1}', {"Content-Type": content_type}
        )
        assert reply.status == 201, reply.body


# -- 2. nothing changed on behalf of another site (403) --------------------------------------


CROSS_SITE: dict[str, dict[str, str]] = {
    "Origin of another site": {"Origin": EVIL},
    "Origin of another port": {"Origin": "http://localhost:1"},
    "Origin null": {"Origin": "null"},
    "Sec-Fetch-Site cross-site": {"Sec-Fetch-Site": "cross-site"},
    "Sec-Fetch-Site same-site": {"Sec-Fetch-Site": "same-site"},
}


@pytest.mark.parametrize("kind", list(CROSS_SITE))
@pytest.mark.parametrize("tcp", [False, True], ids=["socket", "tcp"])
def test_a_cross_site_request_changes_nothing(served: Served, kind: str, tcp: bool) -> None:
    """...and the same request from the page's own origin, or from a script, is taken."""
    host = f"localhost:{served.port}" if tcp else "localhost:8470"
    headers = {"Host": host, "Content-Type": "application/json", **CROSS_SITE[kind]}
    ticks = processes(served, "fuzz_tick")
    hold = started(served, "fuzz_hold")
    served.daemon.wait_step_started(hold, "wait for release")
    for path in (
        "/api/processes/fuzz_tick",
        f"/api/processes/{hold}/abort",
        f"/api/schedules/{SCHEDULE}/run",
        "/api/gc",
    ):
        problem = assert_problem(send(served, "POST", path, BODY, headers, tcp=tcp), 403)
        assert problem["type"] == "urn:orchd:problem:cross-site-request"
    assert processes(served, "fuzz_tick") == ticks
    assert served.daemon.get_process(hold)["status"] == "running"
    # Reading is not changing: a cross-site GET is answered (the browser keeps the answer
    # from the other site's script).
    reply = send(served, "GET", "/api/workflows", headers={"Origin": EVIL, "Host": host}, tcp=tcp)
    assert reply.status == 200
    # From the page's own origin, and from a script (no Origin), the same posts are taken.
    same = {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
    assert json_post(served, "/api/processes/fuzz_tick", {}, headers=same, tcp=tcp).status == 201
    assert json_post(served, "/api/processes/fuzz_tick", {}, tcp=tcp).status == 201
    assert send(served, "POST", f"/api/processes/{hold}/abort", b"", same, tcp=tcp).status == 202


def console_session(served: Served, path: str, host: str) -> tuple[str, str]:
    """Open a console page on the socket as a tunnelled browser does; return the session
    cookie and the CSRF token the page's forms carry."""
    reply = send(served, "GET", path, headers={"Host": host, "Sec-Fetch-Site": "none"})
    assert reply.status == 200, reply.body[:300]
    cookie = reply.headers["set-cookie"].split(";")[0]
    found = re.search(rb'name="csrf" value="([^"]+)"', reply.body)
    assert found, "the page has no CSRF field"
    return cookie, found.group(1).decode()


def test_a_console_form_posted_from_another_site_is_refused(served: Served) -> None:
    host = "localhost:8470"  # ssh -N -L 8470:/run/orchd/orchd.sock
    cookie, csrf = console_session(served, "/ui/workflows/fuzz_tick", host)
    ticks = processes(served, "fuzz_tick")
    form = f"csrf={csrf}".encode()
    headers = {
        "Host": host,
        "Cookie": cookie,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    # Even with the session's cookie and its CSRF token: the Origin is another site's.
    reply = send(served, "POST", "/ui/workflows/fuzz_tick", form, {**headers, "Origin": EVIL})
    assert_problem(reply, 403)
    assert processes(served, "fuzz_tick") == ticks
    # The console's own form, from its own page, goes through.
    own = {**headers, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
    reply = send(served, "POST", "/ui/workflows/fuzz_tick", form, own)
    assert reply.status == 303, reply.body[:300]
    assert len(processes(served, "fuzz_tick")) == len(ticks) + 1


def test_a_console_login_from_another_site_is_refused(served: Served) -> None:
    form = f"token={TOKEN}&next=/ui/".encode()
    headers = {
        "Host": f"127.0.0.1:{served.port}",
        "Content-Type": "application/x-www-form-urlencoded",
        "Authorization": "",
    }
    reply = send(served, "POST", "/ui/login", form, {**headers, "Origin": EVIL}, tcp=True)
    assert_problem(reply, 403)
    assert "set-cookie" not in reply.headers
    own = {**headers, "Origin": f"http://127.0.0.1:{served.port}"}
    reply = send(served, "POST", "/ui/login", form, own, tcp=True)
    assert reply.status == 303 and "set-cookie" in reply.headers


# -- 3. Host over TCP, and browsers on the socket (DNS rebinding) ----------------------------


def test_over_tcp_the_host_must_name_this_daemon(served: Served) -> None:
    port = served.port

    def health(host: str) -> Answer:
        return send(served, "GET", "/api/health", headers={"Host": host}, tcp=True)

    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"LOCALHOST:{port}",
        f"[::1]:{port}",
        ALLOWED,
        f"{ALLOWED}:443",
        f"{ALLOWED.upper()}.:8443",
    ):
        reply = health(host)
        assert reply.status == 200, (host, reply.body)
        assert reply.json["status"] == "ok"
    for host in (
        f"rebind.evil.example:{port}",
        "rebind.evil.example",
        f"localhost:{port + 1}",
        "localhost",
        f"127.0.0.2:{port}",
        f"sub.{ALLOWED}",
    ):
        problem = assert_problem(health(host), 421)
        assert problem["type"] == "urn:orchd:problem:misdirected-request", host


def test_over_tcp_a_misdirected_request_changes_nothing(served: Served) -> None:
    ticks = processes(served, "fuzz_tick")
    reply = json_post(
        served, "/api/processes/fuzz_tick", {}, headers={"Host": "rebind.evil.example"}, tcp=True
    )
    assert_problem(reply, 421)
    # The console neither: no login page, no session, no CSRF token for a rebinding name.
    reply = send(served, "GET", "/ui/login", headers={"Host": "rebind.evil.example"}, tcp=True)
    assert_problem(reply, 421)
    assert "set-cookie" not in reply.headers
    assert processes(served, "fuzz_tick") == ticks


@pytest.mark.parametrize(
    "head",
    # HTTP/1.1 without a Host is refused by the HTTP parser already; HTTP/1.0 needs none.
    [b"GET /api/health HTTP/1.0\r\n", b"GET /api/health HTTP/1.1\r\nHost: \r\n",
     b"GET /api/health HTTP/1.1\r\nHost: a b\r\n"],
    ids=["no Host", "empty Host", "malformed Host"],
)  # fmt: skip
def test_over_tcp_a_request_without_a_usable_host_is_400(served: Served, head: bytes) -> None:
    answer = raw_exchange(served, head + b"Connection: close\r\n\r\n", tcp=True)
    assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:300]
    assert b"application/problem+json" in answer.partition(b"\r\n\r\n")[0]


def test_on_the_socket_a_browser_must_come_as_localhost(served: Served) -> None:
    # Through `ssh -L 8470:/run/orchd/orchd.sock` a browser sends Host localhost:8470; a page
    # on a rebinding name reaches the same tunnel with its own name in Host.
    for host in ("localhost:8470", "127.0.0.1:9000", "[::1]:8470", ALLOWED):
        reply = send(served, "GET", "/ui/", headers={"Host": host, "Sec-Fetch-Site": "none"})
        assert reply.status == 200, (host, reply.body[:200])
    ticks = processes(served, "fuzz_tick")
    for host in ("rebind.evil.example:8470", "10.1.2.3:8470"):
        for browser in ({"Sec-Fetch-Site": "same-origin"}, {"Origin": f"http://{host}"}):
            headers = {"Host": host, **browser}
            reply = send(served, "GET", "/ui/workflows/fuzz_tick", headers=headers)
            assert_problem(reply, 421)
            assert "set-cookie" not in reply.headers and b'name="csrf"' not in reply.body
            reply = json_post(served, "/api/processes/fuzz_tick", {}, headers=headers)
            assert_problem(reply, 421)
    assert processes(served, "fuzz_tick") == ticks
    # Scripts send no Origin and no Sec-Fetch-Site: any Host will do
    # (curl --unix-socket orchd.sock http://x/api/...).
    reply = json_post(served, "/api/processes/fuzz_tick", {}, headers={"Host": "x"})
    assert reply.status == 201, reply.body


# -- 4. whitespace is not JSON; no key twice -------------------------------------------------


@pytest.mark.parametrize("body", [b"\x0c", b" ", b"\n", b"\t\r\n ", b"\x0b"], ids=repr)
def test_a_body_of_whitespace_is_400_not_no_body(
    served: Served, suspended: str, awaiting: tuple[str, str], body: bytes
) -> None:
    ticks = processes(served, "fuzz_tick")
    headers = {"Content-Type": "application/json"}
    for path in body_routes(suspended, awaiting):
        assert_problem(send(served, "POST", path, body, headers), 400)
    assert processes(served, "fuzz_tick") == ticks
    assert served.daemon.get_process(suspended)["status"] == "suspended"
    assert served.daemon.get_process(awaiting[0])["status"] == "awaiting_callback"
    # No body at all (Content-Length: 0, no type, as `curl -X POST` sends it) stays "no body"
    # where a route takes none.
    reply = send(served, "POST", "/api/gc", b"", {"Content-Length": "0"})
    assert reply.status == 200 and reply.json["dry_run"] is False, reply.body


def test_an_object_that_names_a_key_twice_is_400(served: Served, suspended: str) -> None:
    ticks = processes(served, "fuzz_tick")
    headers = {"Content-Type": "application/json"}
    for body in (
        b'{"n": 1, "n": 2}',
        b'{"outer": {"a": ":", "b": 1, "a": 2}}',
        b'{"list": [{"k": 1}, {"k": 2, "k": 3}]}',
    ):
        reply = send(served, "POST", "/api/processes/fuzz_tick", body, headers)
        problem = assert_problem(reply, 400)
        assert problem["type"] == "urn:orchd:problem:duplicate-key", problem
    reply = send(served, "POST", f"/api/processes/{suspended}/resume", b'{"count": 1, "count": 2}',
                 headers)  # fmt: skip
    assert_problem(reply, 400)
    assert processes(served, "fuzz_tick") == ticks
    assert served.daemon.get_process(suspended)["status"] == "suspended"
    # The same key in two objects, and colons inside strings, are fine.
    body = b'{"a": [{"k": "x:y"}, {"k": ":"}], "b\\":": {"k": 1}}'
    assert send(served, "POST", "/api/processes/fuzz_tick", body, headers).status == 201


# -- 5. integers too long for an id or a count -----------------------------------------------


HUGE = "9" * 5000


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/events", {"Last-Event-ID": HUGE}),
        (f"/api/events?after={HUGE}", {}),
        (f"/api/processes?limit={HUGE}", {}),
        (f"/api/subscriptions?limit={HUGE}", {}),
        (f"/api/processes?cursor={HUGE}", {}),
        ("/api/events", {"Last-Event-ID": str(2**63)}),
        (f"/api/events?after={2**63}", {}),
        (f"/api/processes?cursor={2**63}", {}),
    ],
    ids=["Last-Event-ID", "after", "limit", "subscriptions limit", "cursor",
         "Last-Event-ID 2**63", "after 2**63", "cursor 2**63"],
)  # fmt: skip
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_number_too_long_for_any_id_is_400(
    served: Served, path: str, headers: dict[str, str], method: str
) -> None:
    mark = len(served.daemon.stderr)
    reply = send(served, method, path, headers=headers)
    assert reply.status == 400, reply.body[:300]
    if method == "GET":
        assert_problem(reply, 400)
        assert len(reply.body) < 1000  # the number is not echoed whole
    assert "Traceback" not in served.daemon.stderr[mark:]


# -- 6. HEAD has no body ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/events", "/ui/events"])
def test_head_of_the_event_stream_has_no_body(served: Served, path: str) -> None:
    request = f"HEAD {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    answer = raw_exchange(served, request, tcp=False)
    head, sep, body = answer.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert b"text/event-stream" in head
    assert body == b""
    # The stream itself still has its first comment.
    get = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    assert b": connected" in raw_exchange(served, get, tcp=False, until=b": connected")


# -- 7. metrics, the OpenAPI document, the events' process filter ----------------------------


def test_no_metric_family_shares_its_base_name_with_another(served: Served) -> None:
    reply = send(served, "GET", "/metrics")
    assert reply.status == 200
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", reply.body.decode(), re.MULTILINE))
    assert "orchd_step_threads_abandoned_running" in types
    # OpenMetrics names a counter's family without its _total: a gauge of that name clashes.
    bases = [name.removesuffix("_total") if kind == "counter" else name for name, kind in
             types.items()]  # fmt: skip
    assert sorted(b for b in bases if bases.count(b) > 1) == []


@pytest.fixture(scope="module")
def document(served: Served) -> dict[str, Any]:
    status, doc = served.daemon.request("GET", "/api/openapi.json")
    assert status == 200
    return dict(doc)


def test_openapi_health_503_is_not_labelled_success(document: dict[str, Any]) -> None:
    answers = document["paths"]["/api/health"]["get"]["responses"]
    assert answers["200"]["description"] != answers["503"]["description"]
    assert "degraded" in answers["503"]["description"].lower()


def test_openapi_describes_the_headers_the_api_reads(document: dict[str, Any]) -> None:
    def headers(path: str, method: str) -> set[str]:
        params = document["paths"][path][method].get("parameters", [])
        return {p["name"] for p in params if p["in"] == "header"}

    assert "Idempotency-Key" in headers("/api/processes/{id}", "post")
    assert "Last-Event-ID" in headers("/api/events", "get")
    for path in ("/api/processes/{id}", "/api/processes/{id}/resume", "/api/processes/{id}/retry",
                 "/api/processes/{id}/skip", "/api/processes/{id}/abort",
                 "/api/processes/{id}/callback", "/api/callbacks/{token}"):  # fmt: skip
        assert "X-Orchd-Reporter" in headers(path, "post"), path
    assert "X-Orchd-Reporter" in headers("/api/subscriptions/{id}/note", "put")


def test_openapi_describes_the_refusals_of_this_file(document: dict[str, Any]) -> None:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            answers = operation["responses"]
            assert "421" in answers, (method, path)
            if method == "post":
                assert "403" in answers, (method, path)
            if "requestBody" in operation:
                assert "415" in answers and "400" in answers, (method, path)
    described = document["components"]["responses"]
    assert {"CrossSiteRequest", "UnsupportedMediaType", "MisdirectedRequest"} <= set(described)
    start = document["paths"]["/api/processes/{id}"]["post"]["responses"]
    assert "422" in start


def test_the_events_process_filter_takes_an_id_prefix(served: Served) -> None:
    other = started(served, "fuzz_tick")
    served.daemon.wait_process(other)
    pid = started(served, "fuzz_tick")
    served.daemon.wait_process(pid)
    with served.daemon.events(f"/api/events?after=0&process={pid[:8]}") as stream:
        events = [e.json() for e in stream.until(pid, "completed")]
    assert {e["process_id"] for e in events if e["kind"] != "reset"} == {pid}
    assert [e["status"] for e in events if e["kind"] == "process"][-1] == "completed"
    # What other routes answer for a prefix that names no process, or is no prefix at all.
    assert_problem(send(served, "GET", "/api/events?process=ffffffff-f"), 404)
    assert_problem(send(served, "GET", "/api/events?process=xyz"), 400)
    assert_problem(send(served, "GET", "/api/events?process=abc"), 400)


# -- 8. an Idempotency-Key answers the input it came with ------------------------------------


def test_an_idempotency_key_sent_again_with_another_input_is_422(served: Served) -> None:
    headers = {"Idempotency-Key": "acceptance-key-1"}
    first = json_post(served, "/api/processes/fuzz_tick", {"n": 1, "m": [1, 2]}, headers=headers)
    assert first.status == 201, first.body
    pid = first.json["id"]
    # The same input, written otherwise (another key order, other spacing): the same process.
    again = send(
        served,
        "POST",
        "/api/processes/fuzz_tick",
        b'{ "m" : [1,2] , "n":1 }',
        {**headers, "Content-Type": "application/json"},
    )
    assert again.status == 200 and again.json["id"] == pid, again.body
    ticks = processes(served, "fuzz_tick")
    for other in ({"n": 2, "m": [1, 2]}, {"n": 1}, {}):
        reply = json_post(served, "/api/processes/fuzz_tick", other, headers=headers)
        problem = assert_problem(reply, 422)
        assert problem["type"] == "urn:orchd:problem:idempotency-key-reused"
        assert pid in problem["detail"]
    assert processes(served, "fuzz_tick") == ticks


async def test_a_key_sent_again_with_another_input_is_refused_on_both_backends(
    engine_factory: EngineFactory,
) -> None:
    # The daemon above runs on SQLite; the digest is kept by the PostgreSQL store alike.
    engine = await engine_factory(["fuzz_flows"])
    pid = await engine.start("fuzz_tick", {"n": 1, "m": "x"}, idempotency_key="k")
    assert await engine.start("fuzz_tick", {"m": "x", "n": 1}, idempotency_key="k") == pid
    with pytest.raises(IdempotencyKeyReused, match=pid):
        await engine.start("fuzz_tick", {"n": 2, "m": "x"}, idempotency_key="k")
    assert [p.id for p in (await engine.list_processes(workflow="fuzz_tick")).items] == [pid]


def test_a_number_too_long_for_python_in_a_console_form_is_a_form_error(
    served: Served, suspended: str
) -> None:
    host = "localhost:8470"
    cookie, csrf = console_session(served, f"/ui/processes/{suspended}", host)
    headers = {
        "Host": host,
        "Cookie": cookie,
        "Content-Type": "application/x-www-form-urlencoded",
        "Origin": f"http://{host}",
    }
    mark = len(served.daemon.stderr)
    form = f"csrf={csrf}&count={HUGE}".encode()
    reply = send(served, "POST", f"/ui/processes/{suspended}/resume", form, headers)
    assert reply.status == 422, reply.body[:300]
    assert b'name="count"' in reply.body  # the form again, with its error
    assert served.daemon.get_process(suspended)["status"] == "suspended"
    assert "Traceback" not in served.daemon.stderr[mark:]
