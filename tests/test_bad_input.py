"""Bad input against a real daemon: malformed HTTP, hostile clients, bad JSON, bad workflow code.

The HTTP tests share one ``orchd serve`` subprocess (tests/wf/fuzz_flows.py) and talk to its Unix
socket with raw sockets, so nothing between the test and the daemon tidies up what is sent. Each
test ends by checking that the daemon still answers ``/api/health``, that what it refused changed
nothing, and that its stderr gained no traceback while the test ran. The workflow-code tests start
daemons of their own.
"""

from __future__ import annotations

import json
import random
import re
import signal
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from support.daemons import Answer, DaemonFactory, DaemonProcess

MAX_BODY = 64 * 1024
#: Seconds any single exchange may take; far more than a healthy daemon needs.
DEADLINE = 5.0
PROBLEM = "application/problem+json"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


# -- raw HTTP over the Unix socket -------------------------------------------------------------


def connect(daemon: DaemonProcess, timeout: float = DEADLINE) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(daemon.socket)
    return sock


def read_answer(sock: socket.socket) -> Answer:
    """Read one HTTP response (the request asked for ``Connection: close``)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP response: {data[:300]!r}"
    lines = head.decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    assert match, f"not an HTTP status line: {lines[0]!r}"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(match.group(1)), headers, body)


def exchange(daemon: DaemonProcess, data: bytes, timeout: float = DEADLINE) -> Answer:
    """Send ``data`` as is on a fresh connection and read the answer."""
    with connect(daemon, timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered (413) before reading everything: the answer is still there
        return read_answer(sock)


def request_bytes(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: orchd\r\nConnection: close\r\n"
    sent = dict(headers or {})
    if body is not None and "Transfer-Encoding" not in sent:
        sent.setdefault("Content-Type", "application/json")
        sent["Content-Length"] = str(len(body))
    head += "".join(f"{name}: {value}\r\n" for name, value in sent.items())
    return head.encode("latin-1") + b"\r\n" + (body or b"")


def call(
    daemon: DaemonProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    return exchange(daemon, request_bytes(method, path, body, headers))


def chunked(body: bytes, size: int = 4096) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


# -- the shared daemon and what every test checks at its end -----------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon for the HTTP tests, with processes in several statuses to compare against."""
    d = DaemonProcess(
        tmp_path_factory.mktemp("bad-input"),
        {"workflows": ["fuzz_flows"], "max_body": MAX_BODY},
    )
    try:
        d.start()
        d.wait_process(d.start_process("fuzz_ask"), ("suspended",))
        d.wait_process(d.start_process("fuzz_fail"), ("failed",))
        d.wait_process(d.start_process("fuzz_create", {"name": "n1"}))
        hold = d.start_process("fuzz_hold")
        d.wait_step_started(hold, "wait for release")
        yield d
    finally:
        d.kill()


def processes(daemon: DaemonProcess) -> list[dict[str, Any]]:
    status, page = daemon.request("GET", "/api/processes?limit=500")
    assert status == 200, page
    return list(page["items"])


def process_with(daemon: DaemonProcess, status: str) -> str:
    return next(str(p["id"]) for p in processes(daemon) if p["status"] == status)


class Watch:
    """What a test must leave as it found it: the process list and a clean stderr."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.before = processes(daemon)
        self.log_mark = len(daemon.stderr)

    def new_stderr(self) -> str:
        return self.daemon.stderr[self.log_mark :]

    def assert_healthy(self) -> None:
        status, health = self.daemon.request("GET", "/api/health", timeout=DEADLINE)
        assert status == 200 and health["status"] == "ok", health
        assert self.daemon.running

    def assert_no_traceback(self) -> None:
        err = self.new_stderr()
        assert "Traceback" not in err, err

    def assert_unchanged(self) -> None:
        assert processes(self.daemon) == self.before

    def assert_all(self) -> None:
        self.assert_healthy()
        self.assert_unchanged()
        self.assert_no_traceback()


@pytest.fixture
def watch(daemon: DaemonProcess) -> Watch:
    return Watch(daemon)


# -- malformed HTTP ----------------------------------------------------------------------------

_noise = random.Random(20261126)

MALFORMED: dict[str, bytes] = {
    "garbage": b"\x00\xff\xfe not http at all\r\n\r\n",
    "binary noise": _noise.randbytes(4096),
    "TLS client hello": bytes.fromhex("16030100c8010000c40303") + _noise.randbytes(200),
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "control character in a header": b"GET /api/health HTTP/1.1\r\nHost: x\r\n"
    b"X-Bad: \x01\x02\r\n\r\n",
    "huge header": request_bytes("GET", "/api/health", headers={"X-Big": "a" * 100_000}),
    "too many headers": request_bytes(
        "GET", "/api/health", headers={f"X-H{i}": "v" for i in range(2000)}
    ),
    "huge URL": request_bytes("GET", "/api/processes/" + "a" * 20_000),
    "unknown HTTP version": b"GET /api/health HTTP/9.9\r\nHost: x\r\n\r\n",
    "negative Content-Length": b"POST /api/processes/fuzz_ask HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: -1\r\n\r\n",
    "Content-Length and chunked": b"POST /api/processes/fuzz_ask HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "bad chunk size": b"POST /api/processes/fuzz_ask HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_http_is_refused_and_changes_nothing(
    daemon: DaemonProcess, watch: Watch, kind: str
) -> None:
    answer = exchange(daemon, MALFORMED[kind])
    assert answer.status in (400, 431), (answer.status, answer.body)
    assert answer.content_type == "application/problem+json", answer.headers
    assert answer.json["status"] == answer.status and answer.json["detail"]
    watch.assert_healthy()
    watch.assert_unchanged()


@pytest.mark.parametrize(
    "line",
    [
        b"Authorization: Bearer s3cret-token-value\x01",
        b"X-Orchd-Reporter: s3cret-token-value\x7f",
        b"Authorization Bearer s3cret-token-value",  # no colon
    ],
)
def test_a_malformed_header_is_not_echoed_back(
    daemon: DaemonProcess, watch: Watch, line: bytes
) -> None:
    answer = exchange(daemon, b"GET /api/health HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n")
    assert answer.status == 400
    assert b"s3cret" not in answer.body and b"s3cret" not in repr(answer.headers).encode()
    assert "s3cret" not in daemon.stderr
    watch.assert_healthy()


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_http_logs_no_traceback(daemon: DaemonProcess, watch: Watch, kind: str) -> None:
    exchange(daemon, MALFORMED[kind])
    watch.assert_healthy()
    watch.assert_no_traceback()


def test_huge_header_then_daemon_still_serves_on_the_same_and_new_connections(
    daemon: DaemonProcess, watch: Watch
) -> None:
    answer = call(daemon, "GET", "/api/health", headers={"X-Big": "b" * 100_000})
    assert answer.status in (400, 431)
    assert call(daemon, "GET", "/api/health").status == 200
    watch.assert_healthy()
    watch.assert_unchanged()


def test_half_sent_headers_then_a_normal_request(daemon: DaemonProcess, watch: Watch) -> None:
    # Headers without the final CRLF, then the client goes away.
    with connect(daemon) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: orchd\r\n")
    answer = call(daemon, "GET", "/api/health")
    assert answer.status == 200 and answer.json["status"] == "ok"
    watch.assert_all()


def send_body_cut_short(daemon: DaemonProcess) -> None:
    """Declare a body, send part of it, go away: no process may start from half a form.
    Returns once the daemon closed the connection: it has dealt with the request."""
    data = request_bytes("POST", "/api/processes/fuzz_ask", b'{"x": 1}' + b" " * 100)
    with connect(daemon) as sock:
        sock.sendall(data[:-60])
        # What a close sends (the end of the stream, mid-body), with the socket left open
        # to read until the daemon closes its side.
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass


def test_a_body_cut_short_starts_nothing(daemon: DaemonProcess, watch: Watch) -> None:
    send_body_cut_short(daemon)
    assert call(daemon, "GET", "/api/health").status == 200
    watch.assert_healthy()
    watch.assert_unchanged()


def test_a_body_cut_short_logs_no_traceback(daemon: DaemonProcess, watch: Watch) -> None:
    send_body_cut_short(daemon)
    # The daemon closed that connection, then answered the health check after it: what it
    # logs of the request cut short is written by now.
    watch.assert_healthy()
    watch.assert_no_traceback()


def test_slow_clients_do_not_stall_others(daemon: DaemonProcess, watch: Watch) -> None:
    """Slowloris: clients dribbling their request heads a byte at a time; everyone else is
    served meanwhile. The test holds the slow heads unfinished: each normal request is sent
    and answered between two of their bytes, so a daemon that waited for the slow clients
    would leave it unanswered (no time limit decides it, only the answer or its absence)."""
    slow_count = 20
    request = request_bytes("GET", "/api/health")
    cut = len(request) - 6  # the last bytes go one by one, a normal request after each
    sockets = [connect(daemon, timeout=30) for _ in range(slow_count)]
    try:
        for sock in sockets:
            sock.sendall(request[:cut])
        for i in range(cut, len(request) - 1):
            for sock in sockets:
                sock.sendall(request[i : i + 1])
            # Every slow head is still unfinished: its last byte is not sent.
            answer = exchange(daemon, request_bytes("GET", "/api/processes"), timeout=30)
            assert answer.status == 200
        for sock in sockets:
            sock.sendall(request[-1:])
        # The slow clients were not dropped either: each gets its answer.
        for sock in sockets:
            assert read_answer(sock).status == 200
    finally:
        for sock in sockets:
            sock.close()
    watch.assert_all()


# -- bodies ------------------------------------------------------------------------------------


def test_body_over_max_body_is_413_and_creates_nothing(daemon: DaemonProcess, watch: Watch) -> None:
    body = json.dumps({"name": "x" * (MAX_BODY + 1)}).encode()
    answer = call(daemon, "POST", "/api/processes/fuzz_create", body)
    assert answer.status == 413 and answer.content_type == PROBLEM, answer
    assert answer.json["status"] == 413
    watch.assert_all()


def test_chunked_body_over_max_body_is_413_and_creates_nothing(
    daemon: DaemonProcess, watch: Watch
) -> None:
    body = json.dumps({"name": "x" * (2 * MAX_BODY)}).encode()
    data = request_bytes(
        "POST",
        "/api/processes/fuzz_create",
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
    )
    answer = exchange(daemon, data + chunked(body))
    assert answer.status == 413 and answer.content_type == PROBLEM, answer
    watch.assert_all()


def test_chunked_body_within_max_body_is_read(daemon: DaemonProcess, watch: Watch) -> None:
    # The counterpart of the 413: chunked transfer works and only the size is refused.
    data = request_bytes(
        "POST",
        "/api/processes/fuzz_create",
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
    )
    answer = exchange(daemon, data + chunked(b'{"name": "chunky"}', size=3))
    assert answer.status == 201, answer
    process = daemon.wait_process(answer.json["id"])
    assert process["state"]["name"] == "chunky"
    watch.assert_healthy()
    watch.assert_no_traceback()


def test_over_max_body_on_resume_changes_nothing(daemon: DaemonProcess, watch: Watch) -> None:
    pid = process_with(daemon, "suspended")
    before = daemon.get_process(pid)
    body = json.dumps({"count": 1, "note": "x" * (MAX_BODY + 1)}).encode()
    answer = call(daemon, "POST", f"/api/processes/{pid}/resume", body)
    assert answer.status == 413, answer
    assert daemon.get_process(pid) == before
    watch.assert_all()


BAD_JSON: dict[str, bytes] = {
    "nested 10,000 arrays": b"[" * 10_000 + b"]" * 10_000,
    "nested 10,000 objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "NaN": b'{"name": "x", "size": NaN}',
    "Infinity": b'{"name": "x", "size": Infinity}',
    "-Infinity": b'{"name": "x", "size": -Infinity}',
    "invalid UTF-8": b'{"name": "\xff\xfe"}',
    "overlong UTF-8": b'{"name": "\xc0\xaf"}',
    "lone surrogate escape": b'{"name": "\\udc00\\ud800"}',
    "truncated": b'{"name": "x"',
    "trailing garbage": b'{"name": "x"} {}',
    "byte order mark": b'\xef\xbb\xbf{"name": "x"}',
    "number out of range": b'{"name": "x", "size": 1e400}',
    "single quotes": b"{'name': 'x'}",
}


@pytest.mark.parametrize("kind", list(BAD_JSON))
def test_bad_json_is_400_problem(daemon: DaemonProcess, watch: Watch, kind: str) -> None:
    answer = call(daemon, "POST", "/api/processes/fuzz_create", BAD_JSON[kind])
    assert answer.status == 400, (answer.status, answer.body)
    assert answer.content_type == PROBLEM
    problem = answer.json
    assert problem["status"] == 400 and problem["detail"], problem
    watch.assert_all()


@pytest.mark.parametrize("kind", ["nested 10,000 arrays", "NaN", "invalid UTF-8"])
def test_bad_json_on_resume_and_callback_is_400(
    daemon: DaemonProcess, watch: Watch, kind: str
) -> None:
    pid = process_with(daemon, "suspended")
    before = daemon.get_process(pid)
    assert call(daemon, "POST", f"/api/processes/{pid}/resume", BAD_JSON[kind]).status == 400
    assert call(daemon, "POST", "/api/callbacks/sometoken", BAD_JSON[kind]).status == 400
    assert daemon.get_process(pid) == before
    watch.assert_all()


# -- forms -------------------------------------------------------------------------------------

FORM_ERRORS: dict[str, tuple[bytes, list[Any]]] = {
    "unknown field": (b'{"name": "x", "bogus": 1}', ["bogus"]),
    "missing field": (b'{"size": 2}', ["name"]),
    "string for int": (b'{"name": "x", "size": "big"}', ["size"]),
    "int for string": (b'{"name": 5}', ["name"]),
    "null for string": (b'{"name": null}', ["name"]),
    "object for list": (b'{"name": "x", "tags": {"a": 1}}', ["tags"]),
    "wrong item type": (b'{"name": "x", "tags": ["a", 2]}', ["tags", 1]),
    "float for int": (b'{"name": "x", "size": 1.5}', ["size"]),
    # A list is the answers of the form's pages: its first answer is no object.
    "a list whose page answer is no object": (b"[1, 2]", ["pages", 0]),
    "string instead of an object": (b'"name"', []),
}


@pytest.mark.parametrize("kind", list(FORM_ERRORS))
def test_form_errors_on_start_are_422_with_loc(
    daemon: DaemonProcess, watch: Watch, kind: str
) -> None:
    body, loc = FORM_ERRORS[kind]
    answer = call(daemon, "POST", "/api/processes/fuzz_create", body)
    assert answer.status == 422 and answer.content_type == PROBLEM, (answer.status, answer.body)
    problem = answer.json
    assert problem["status"] == 422
    assert problem["errors"] and all({"loc", "msg"} <= set(e) for e in problem["errors"])
    assert problem["errors"][0]["loc"] == loc, problem
    watch.assert_all()


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b'{"count": 1, "extra": true}', ["extra"]),
        (b'{"count": "one"}', ["count"]),
        (b"{}", ["count"]),
        (b'{"count": 1, "note": []}', ["note"]),
    ],
)
def test_form_errors_on_resume_are_422_and_keep_the_process_suspended(
    daemon: DaemonProcess, watch: Watch, body: bytes, loc: list[Any]
) -> None:
    pid = process_with(daemon, "suspended")
    before = daemon.get_process(pid)
    answer = call(daemon, "POST", f"/api/processes/{pid}/resume", body)
    assert answer.status == 422 and answer.content_type == PROBLEM, (answer.status, answer.body)
    assert answer.json["errors"][0]["loc"] == loc
    assert daemon.get_process(pid) == before
    watch.assert_all()


# -- ids, routes, methods ----------------------------------------------------------------------

NOT_UUIDS = ["not-a-uuid", "1", "%00", "%ff%fe", UNKNOWN_ID[:-1], "a" * 300, "..%2f..%2fetc"]


@pytest.mark.parametrize("pid", NOT_UUIDS)
@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("POST", "/resume"), ("POST", "/retry"), ("POST", "/abort")],
)
def test_a_process_id_that_is_not_a_uuid_is_404(
    daemon: DaemonProcess, watch: Watch, pid: str, method: str, suffix: str
) -> None:
    body = b"{}" if method == "POST" else None
    answer = call(daemon, method, f"/api/processes/{pid}{suffix}", body)
    assert answer.status == 404 and answer.content_type == PROBLEM, (answer.status, answer.body)
    assert answer.json["status"] == 404
    watch.assert_all()


@pytest.mark.parametrize("suffix", ["", "/resume", "/retry", "/abort"])
def test_an_unknown_process_is_404(daemon: DaemonProcess, watch: Watch, suffix: str) -> None:
    method = "GET" if not suffix else "POST"
    answer = call(daemon, method, f"/api/processes/{UNKNOWN_ID}{suffix}", b"{}" if suffix else None)
    assert answer.status == 404 and answer.content_type == PROBLEM
    watch.assert_all()


@pytest.mark.parametrize(
    "path", ["/nope", "/api", "/api/processes/x/y/z", "/api/health/", "/%ff", "/api/callbacks"]
)
def test_an_unknown_route_is_404_problem(daemon: DaemonProcess, watch: Watch, path: str) -> None:
    answer = call(daemon, "GET", path)
    assert answer.status == 404 and answer.content_type == PROBLEM, (answer.status, answer.body)
    assert answer.json["status"] == 404
    watch.assert_all()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/api/health"),
        ("PUT", "/api/processes"),
        ("POST", "/api/workflows"),
        ("PATCH", "/api/processes/{id}"),
        ("GET", "/api/processes/{id}/retry"),
        ("DELETE", "/api/processes/{id}"),
        ("GET", "/api/callbacks/token"),
    ],
)
def test_a_wrong_method_is_405_problem_with_allow(
    daemon: DaemonProcess, watch: Watch, method: str, path: str
) -> None:
    pid = process_with(daemon, "suspended")
    before = daemon.get_process(pid)
    answer = call(daemon, method, path.format(id=pid), b"{}")
    assert answer.status == 405 and answer.content_type == PROBLEM, (answer.status, answer.body)
    assert answer.json["status"] == 405
    assert answer.headers.get("allow")
    assert daemon.get_process(pid) == before
    watch.assert_all()


def test_actions_not_allowed_in_the_status_change_nothing(
    daemon: DaemonProcess, watch: Watch
) -> None:
    done = process_with(daemon, "completed")
    before = daemon.get_process(done)
    for action in ("resume", "retry", "abort"):
        answer = call(daemon, "POST", f"/api/processes/{done}/{action}", b"{}")
        assert answer.status == 409 and answer.content_type == PROBLEM, (action, answer.body)
    assert daemon.get_process(done) == before
    watch.assert_all()


def test_an_unknown_workflow_is_404_whatever_the_body(daemon: DaemonProcess, watch: Watch) -> None:
    for body in (b"{}", b"[" * 10_000, b"\xff"):
        answer = call(daemon, "POST", "/api/processes/no_such_workflow", body)
        assert answer.status == 404 and answer.content_type == PROBLEM
    watch.assert_all()


# -- misbehaving workflow code, end to end -----------------------------------------------------


def run_to_end(daemon: DaemonProcess, workflow: str) -> dict[str, Any]:
    return daemon.wait_process(
        daemon.start_process(workflow), ("failed", "completed", "waiting"), timeout=10
    )


def failed_step(process: dict[str, Any]) -> dict[str, Any]:
    failed = [s for s in process["steps"] if s["status"] == "failed"]
    assert len(failed) == 1, process["steps"]
    return dict(failed[0])


@pytest.fixture
def flows(daemon_factory: DaemonFactory) -> DaemonProcess:
    return daemon_factory({"workflows": ["fuzz_flows"]})


@pytest.mark.parametrize(
    ("workflow", "message"),
    [
        ("bad_list", "step 'returns a list' returned list; a step returns a dict or None"),
        ("bad_str", "step 'returns a string' returned str; a step returns a dict or None"),
        ("bad_object", "step 'returns an object' returned a value State cannot hold"),
        ("bad_instance", "step 'returns an instance' returned a value State cannot hold"),
        ("bad_key", "step 'returns a tuple key' returned a value State cannot hold"),
        ("bad_cycle", "step 'returns a cycle' returned a value State cannot hold"),
    ],
)
def test_a_step_returning_what_state_cannot_hold_fails_the_process(
    flows: DaemonProcess, workflow: str, message: str
) -> None:
    process = run_to_end(flows, workflow)
    assert process["status"] == "failed", process
    assert message in process["error"], process["error"]
    assert failed_step(process)["error"] == process["error"]
    assert "Traceback" not in flows.stderr
    assert flows.request("GET", "/api/health")[0] == 200


def test_a_step_returning_a_set_stores_a_list(flows: DaemonProcess) -> None:
    # msgspec encodes a set as a JSON array: State holds it as a list (order not kept).
    process = run_to_end(flows, "bad_set")
    assert process["status"] == "completed", process
    assert sorted(process["state"]["tags"]) == ["a", "b"]


@pytest.mark.parametrize(
    ("workflow", "step"),
    [("hangs", "never returns"), ("hangs_in_a_thread", "never returns in a thread")],
)
def test_a_step_that_never_returns_fails_at_its_timeout(
    flows: DaemonProcess, workflow: str, step: str
) -> None:
    began = time.monotonic()
    process = run_to_end(flows, workflow)
    assert process["status"] == "failed", process
    assert process["error"] == f"step {step!r} did not finish within 0.5 s"
    assert failed_step(process)["name"] == step
    assert time.monotonic() - began < 8
    # The daemon keeps working while the abandoned thread (if any) still polls.
    assert run_to_end(flows, "fuzz_tick")["status"] == "completed"
    if workflow == "hangs_in_a_thread":
        flows.release(process["id"])


@pytest.mark.parametrize(
    "error", ["kaboom at import", "line one\nline two of a multi-line message"]
)
def test_a_workflow_module_that_fails_to_import_exits_2_with_one_line(
    daemon_factory: DaemonFactory, error: str
) -> None:
    daemon = daemon_factory(
        {"workflows": ["daemon_flows", "fuzz_flows"]},
        start=False,
        env={"ORCHD_FUZZ_FLOWS_IMPORT_ERROR": error},
    )
    assert daemon.run_to_exit() == 2
    lines = daemon.last_run_stderr().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert str(daemon.config_path) in line
    assert "workflows[1]" in line and "fuzz_flows" in line
    assert f"RuntimeError: {error.splitlines()[0]}" in line
    assert not Path(daemon.socket).exists()


def test_a_workflow_module_with_a_syntax_error_exits_2(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "fuzz_broken_syntax.py").write_text("def oops(:\n    pass\n")
    daemon = daemon_factory({"workflows": ["fuzz_broken_syntax"]}, start=False)
    daemon.extra_env["PYTHONPATH"] = f"{modules}:{daemon.environment()['PYTHONPATH']}"
    assert daemon.run_to_exit() == 2
    lines = daemon.last_run_stderr().splitlines()
    assert len(lines) == 1, lines
    assert str(daemon.config_path) in lines[0]
    assert "workflows[0]" in lines[0] and "SyntaxError" in lines[0]


@pytest.mark.parametrize("version", ["renamed", "removed"])
def test_a_step_changed_between_a_crash_and_a_restart_fails_the_process(
    daemon_factory: DaemonFactory, version: str
) -> None:
    daemon = daemon_factory({"workflows": ["fuzz_flows"]}, env={"ORCHD_FUZZ_FLOWS_VERSION": "A"})
    pid = daemon.start_process("fuzz_versioned")
    daemon.wait_step_started(pid, "wait for release")
    daemon.stop(signal.SIGKILL)
    # The release file is there now: version A's step would finish at once if it ran again.
    daemon.release(pid)
    daemon.extra_env["ORCHD_FUZZ_FLOWS_VERSION"] = version
    daemon.start()
    process = daemon.wait_process(pid, ("failed", "completed"), timeout=10)
    assert process["status"] == "failed", process
    assert process["error"] == "workflow changed: step key 'wait for release' no longer exists"
    # Nothing after the crash ran: neither a renamed or inserted step nor the ones after it.
    for step in ("wait for release, renamed", "extra", "finish"):
        assert daemon.step_runs(pid, step) == 0, step
    assert daemon.step_runs(pid, "prepare") == 1
    assert daemon.step_runs(pid, "wait for release") == 1
    # A retry is refused and changes nothing; the daemon itself is fine.
    status, problem = daemon.request("POST", f"/api/processes/{pid}/retry")
    assert status == 409, problem
    assert daemon.get_process(pid)["status"] == "failed"
    assert run_to_end(daemon, "fuzz_tick")["status"] == "completed"
    assert "Traceback" not in daemon.last_run_stderr()


def test_a_step_inserted_before_the_position_between_a_crash_and_a_restart_does_not_matter(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory({"workflows": ["fuzz_flows"]}, env={"ORCHD_FUZZ_FLOWS_VERSION": "A"})
    pid = daemon.start_process("fuzz_versioned")
    daemon.wait_step_started(pid, "wait for release")
    daemon.stop(signal.SIGKILL)
    daemon.release(pid)
    daemon.extra_env["ORCHD_FUZZ_FLOWS_VERSION"] = "inserted"
    daemon.start()
    process = daemon.wait_process(pid, ("failed", "completed"), timeout=10)
    assert process["status"] == "completed", process
    # It went on at its key: the interrupted step ran again, the one inserted before it never.
    assert daemon.step_runs(pid, "extra") == 0
    assert daemon.step_runs(pid, "wait for release") == 2
    assert daemon.step_runs(pid, "finish") == 1
