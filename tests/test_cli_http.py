"""The CLI's HTTP handling, against a stub server.

A tiny real HTTP server (``socketserver`` + ``http.server``, on a Unix socket or on TCP) answers
with canned, contract-shaped JSON, problem+json and server-sent events. This tests what the client
does with answers: rendering, exit statuses, problem details, SSE parsing and ``start --wait``. It
does not test the daemon: the end-to-end tests against a real daemon cover the real thing.
"""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from orchd import cli, client
from orchd.client import Event, parse_sse

PID = "3f2b8c1e-6c1a-4d2e-9d7e-2f1f0c9a1b11"
SUB = "9a1b2c3d-0000-4000-8000-000000000001"

PROCESS: dict[str, Any] = {
    "id": PID,
    "workflow": "create_node",
    "target": "CREATE",
    "status": "failed",
    "state": {"name": "n1"},
    "steps": [
        {
            "name": "init",
            "status": "success",
            "started_at": "2024-05-01T10:00:00+00:00",
            "finished_at": "2024-05-01T10:00:00.004000+00:00",
            "error": None,
        },
        {
            "name": "Provision node",
            "status": "failed",
            "started_at": "2024-05-01T10:00:01+00:00",
            "finished_at": "2024-05-01T10:00:03.500000+00:00",
            "error": "ConnectionError: oss unreachable",
            "traceback": 'Traceback (most recent call last):\n  File "wf.py"\nConnectionError',
        },
    ],
    "form": None,
    "created_at": "2024-05-01T10:00:00+00:00",
    "updated_at": "2024-05-01T10:00:03.500000+00:00",
    "current_step": "Provision node",
    "error": "ConnectionError: oss unreachable",
}


def problem(status: int, detail: str, **extra: Any) -> tuple[int, dict[str, Any], str]:
    body = {"type": "urn:orchd:problem:x", "title": "Refused", "status": status, "detail": detail}
    return status, body | extra, "application/problem+json"


Route = Callable[["Handler", dict[str, str], Any], None]


class Stub:
    """Routes ``(method, path)`` to a canned answer or a function; records every request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Any] = {}
        self.requests: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.process = dict(PROCESS, status="running")
        self.address = ""

    def on(self, method: str, path: str, answer: Any) -> None:
        self.routes[(method, path)] = answer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean (and client_address is '' on a Unix socket)

    def do_GET(self) -> None:
        self.dispatch()

    def do_POST(self) -> None:
        self.dispatch()

    def dispatch(self) -> None:
        stub: Stub = self.server.stub
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        stub.requests.append(
            {
                "method": self.command,
                "path": parts.path,
                "query": query,
                "body": body,
                "headers": dict(self.headers),
            }
        )
        answer = stub.routes.get((self.command, parts.path))
        if answer is None:
            answer = problem(404, f"no route {self.command} {parts.path}")
        if callable(answer):
            answer(self, query, body)
        else:
            self.answer(*answer)

    def answer(self, status: int, body: Any, content_type: str = "application/json") -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(raw)
        self.close_connection = True

    def chunk(self, data: bytes) -> bool:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            return True
        except OSError:
            return False  # the client went away


def sse(*script: Any, hold: float = 3.0, keepalive: bool = True) -> Route:
    """An event stream: bytes are sent as chunks, floats are pauses, callables are called."""

    def route(h: Handler, query: dict[str, str], body: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        for item in script:
            if isinstance(item, float):
                time.sleep(item)
            elif callable(item):
                item()
            elif not h.chunk(item):
                return
        until = time.monotonic() + hold
        while time.monotonic() < until and not h.server.stub.stopping.is_set():
            time.sleep(0.05)
            if keepalive and not h.chunk(b": keep-alive\n\n"):
                return
        h.chunk(b"")

    return route


def event(status: str, kind: str = "process", pid: str = PID) -> bytes:
    data = {"id": 1, "kind": kind, "process_id": pid, "workflow": "create_node", "status": status}
    return f"id: 1\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    block_on_close = True


class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    block_on_close = True


def serve(server: Any, stub: Stub) -> Iterator[Stub]:
    server.stub = stub
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield stub
    finally:
        stub.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ORCHD_SOCKET", "ORCHD_URL", "ORCHD_TOKEN", "ORCHD_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


@pytest.fixture
def stub() -> Iterator[Stub]:
    with tempfile.TemporaryDirectory(prefix="orchd-") as tmp:
        path = os.path.join(tmp, "stub.sock")
        s = Stub()
        s.address = path
        yield from serve(UnixServer(path, Handler), s)


@pytest.fixture
def tcp_stub() -> Iterator[Stub]:
    server = TCPServer(("127.0.0.1", 0), Handler)
    s = Stub()
    s.address = f"http://127.0.0.1:{server.server_address[1]}"
    yield from serve(server, s)


def orchd(stub: Stub, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["--socket", stub.address, *argv])
    out, err = capsys.readouterr()
    return status, out, err


# --- listing and showing -------------------------------------------------------------------------


def test_workflows_table_and_json(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    workflows = [
        {"name": "create_node", "target": "CREATE", "description": "Create a node", "form": {}},
        {
            "name": "validate_subscriptions",
            "target": "SYSTEM",
            "description": "Check",
            "form": None,
        },
    ]
    stub.on("GET", "/api/workflows", (200, workflows))
    status, out, err = orchd(stub, capsys, "workflows")
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "TARGET", "DESCRIPTION"]
    assert lines[1].split()[:2] == ["create_node", "CREATE"]
    assert lines[1].index("CREATE") == lines[2].index("SYSTEM")  # aligned
    status, out, _ = orchd(stub, capsys, "workflows", "--json")
    assert status == 0 and json.loads(out) == workflows


def test_ps_follows_cursors_with_all(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    row = {"id": PID, "workflow": "create_node", "status": "failed", "current_step": "Provision"}
    second = dict(row, id="second", status="completed", current_step=None)

    def page(h: Handler, query: dict[str, str], body: Any) -> None:
        if query.get("cursor") == "c1":
            h.answer(200, {"items": [second], "next_cursor": None})
        else:
            h.answer(200, {"items": [row], "next_cursor": "c1"})

    stub.on("GET", "/api/processes", page)
    status, out, err = orchd(stub, capsys, "ps", "--status", "failed", "--limit", "1")
    assert status == 0
    assert stub.requests[-1]["query"] == {"status": "failed", "limit": "1"}
    assert out.splitlines()[0].split() == ["ID", "WORKFLOW", "STATUS", "STEP", "UPDATED"]
    assert PID in out and "second" not in out
    assert "--all" in err
    status, out, err = orchd(stub, capsys, "ps", "--all", "--json")
    assert json.loads(out) == {"items": [row, second], "next_cursor": None}
    assert stub.requests[-1]["query"] == {"cursor": "c1"}


def test_show_renders_steps_and_traceback(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    stub.on("GET", f"/api/processes/{PID}", (200, PROCESS))
    status, out, err = orchd(stub, capsys, "show", PID)
    assert status == 0 and err == ""
    assert "id:" in out and PID in out and "create_node (CREATE)" in out
    step_lines = [line for line in out.splitlines() if line.startswith(("init", "Provision"))]
    assert step_lines[0].split()[:2] == ["init", "success"] and "4ms" in step_lines[0]
    assert "failed" in step_lines[1] and "2.5s" in step_lines[1] and "oss unreachable" in out
    assert "traceback of step 'Provision node'" in out and "wf.py" in out
    status, out, _ = orchd(stub, capsys, "show", PID, "--json")
    assert json.loads(out) == PROCESS


def test_show_leaves_out_the_traceback_of_a_process_that_completed_after_a_retry(
    stub: Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    retried = {"name": "Provision node", "status": "success", "error": None, "traceback": None}
    completed = dict(PROCESS, status="completed", error=None, steps=[*PROCESS["steps"], retried])
    stub.on("GET", f"/api/processes/{PID}", (200, completed))
    status, out, _ = orchd(stub, capsys, "show", PID)
    assert status == 0 and "oss unreachable" in out  # the old attempt stays in the step log
    assert "traceback" not in out and "wf.py" not in out


def test_show_unknown_process_exits_1(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    stub.on("GET", "/api/processes/nope", problem(404, "no process nope"))
    status, out, err = orchd(stub, capsys, "show", "nope")
    assert (status, out) == (1, "")
    assert "no process nope" in err and "404" in err


def test_subscriptions_and_subscription(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    item = {
        "id": SUB,
        "product": "node",
        "customer_id": "c1",
        "description": "Node n1",
        "status": "active",
        "insync": True,
        "start_date": None,
        "end_date": None,
        "attributes": {"name": "n1"},
    }
    stub.on("GET", "/api/subscriptions", (200, {"items": [item], "next_cursor": None}))
    status, out, _ = orchd(
        stub, capsys, "subscriptions", "--customer-id", "c1", "--product", "node"
    )
    assert status == 0 and SUB in out and "active" in out
    assert stub.requests[-1]["query"] == {"customer_id": "c1", "product": "node"}
    detail = item | {"processes": [{"id": PID, "workflow": "create_node", "status": "completed"}]}
    stub.on("GET", f"/api/subscriptions/{SUB}", (200, detail))
    status, out, _ = orchd(stub, capsys, "subscription", SUB)
    assert status == 0 and '"name": "n1"' in out and PID in out
    status, out, _ = orchd(stub, capsys, "--json", "subscription", SUB)
    assert json.loads(out) == detail


def test_schedules_and_run(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    schedules = [
        {
            "name": "validate",
            "workflow": "validate_subscriptions",
            "every": "5m",
            "enabled": True,
            "last_run": {"process_id": PID, "status": "completed", "at": "2024-05-01T10:00:00Z"},
            "next_run": "2024-05-01T10:05:00Z",
            "skipped": 2,
        },
        {
            "name": "nightly",
            "workflow": "cleanup",
            "cron": "0 3 * * *",
            "enabled": False,
            "last_run": None,
            "next_run": None,
            "skipped": 0,
        },
    ]
    stub.on("GET", "/api/schedules", (200, schedules))
    status, out, _ = orchd(stub, capsys, "schedules")
    lines = out.splitlines()
    assert status == 0 and len(lines) == 3
    assert "every 5m" in lines[1] and "completed 2024-05-01 10:00" in lines[1]
    assert "cron 0 3 * * *" in lines[2] and "no" in lines[2].split()
    stub.on("POST", "/api/schedules/validate/run", (201, {"id": PID}))
    status, out, _ = orchd(stub, capsys, "schedules", "run", "validate")
    assert (status, out.strip()) == (0, PID)
    stub.on("POST", "/api/schedules/validate/run", problem(409, "validate is still running"))
    status, _, err = orchd(stub, capsys, "schedules", "run", "validate")
    assert status == 1 and "still running" in err


def test_health(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    stub.on("GET", "/api/health", (200, {"status": "ok", "processes": 3}))
    status, out, _ = orchd(stub, capsys, "health")
    assert status == 0 and "status:" in out and "ok" in out
    status, out, _ = orchd(stub, capsys, "health", "--json")
    assert json.loads(out) == {"status": "ok", "processes": 3}


# --- actions -------------------------------------------------------------------------------------


def test_start_posts_the_input(
    stub: Stub, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    stub.on("POST", "/api/processes/create_node", (201, {"id": PID}))
    answer = tmp_path / "in.json"
    answer.write_text('{"name": "n1"}')
    status, out, _ = orchd(stub, capsys, "start", "create_node", "--input", f"@{answer}")
    assert (status, out) == (0, PID + "\n")
    request = stub.requests[-1]
    assert request["body"] == {"name": "n1"}
    assert request["headers"]["Content-Type"] == "application/json"
    status, out, _ = orchd(stub, capsys, "start", "create_node", "--json")
    assert json.loads(out) == {"id": PID} and stub.requests[-1]["body"] == {}


def test_validation_problem_lists_errors(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    errors = [{"loc": ["name"], "msg": "required"}, {"loc": "size", "msg": "must be an int"}]
    stub.on("POST", f"/api/processes/{PID}/resume", problem(422, "form invalid", errors=errors))
    status, out, err = orchd(stub, capsys, "resume", PID, "--input", '{"size": "x"}')
    assert (status, out) == (1, "")
    assert "form invalid" in err and "name: required" in err and "size: must be an int" in err


@pytest.mark.parametrize("action", ["retry", "abort", "resume"])
def test_actions(stub: Stub, capsys: pytest.CaptureFixture[str], action: str) -> None:
    extra = ["--input", "{}"] if action == "resume" else []
    stub.on("POST", f"/api/processes/{PID}/{action}", (202, b""))
    status, out, _ = orchd(stub, capsys, action, PID, *extra)
    assert status == 0 and PID in out
    status, out, _ = orchd(stub, capsys, action, PID, "--json", *extra)
    assert status == 0 and json.loads(out)["id"] == PID
    stub.on("POST", f"/api/processes/{PID}/{action}", problem(409, f"cannot {action}: completed"))
    status, out, err = orchd(stub, capsys, action, PID, *extra)
    assert (status, out) == (1, "") and f"cannot {action}: completed" in err


def test_non_json_error_answer_exits_1(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    stub.on("GET", "/api/workflows", (500, b"Internal Server Error", "text/plain"))
    status, _, err = orchd(stub, capsys, "workflows")
    assert status == 1 and "Internal Server Error" in err and "500" in err


def test_garbage_success_answer_exits_1(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    stub.on("GET", "/api/workflows", (200, b"<html>", "text/html"))
    status, _, err = orchd(stub, capsys, "workflows")
    assert status == 1 and "not JSON" in err


# --- start --wait --------------------------------------------------------------------------------


def finish(stub: Stub, status: str) -> Callable[[], None]:
    def change() -> None:
        stub.process = dict(PROCESS, status=status)

    return change


def serve_process(stub: Stub) -> None:
    stub.on("POST", "/api/processes/create_node", (201, {"id": PID}))
    stub.on("GET", f"/api/processes/{PID}", lambda h, q, b: h.answer(200, stub.process))


def test_wait_completed_via_events(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    serve_process(stub)
    stub.on(
        "GET",
        "/api/events",
        sse(
            0.1,
            event("running"),
            event("running", pid="someone-else"),
            finish(stub, "completed"),
            event("success", kind="step"),
            event("completed"),
        ),
    )
    status, out, err = orchd(stub, capsys, "start", "create_node", "--wait", "--json")
    assert (status, err) == (0, "")
    assert json.loads(out) == dict(PROCESS, status="completed")
    subscribe = next(r for r in stub.requests if r["path"] == "/api/events")
    assert subscribe["headers"]["Accept"] == "text/event-stream"


def test_wait_failed_exits_4(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    serve_process(stub)
    # Split mid-line across chunks: the reader must put lines back together.
    raw = event("failed")
    stub.on("GET", "/api/events", sse(0.1, finish(stub, "failed"), raw[:17], 0.05, raw[17:]))
    status, out, _ = orchd(stub, capsys, "start", "create_node", "--wait")
    assert status == 4
    assert "status:" in out and "failed" in out and "oss unreachable" in out


def test_wait_rechecks_after_subscribing(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    # The process finished before the stream was open: no event will ever come.
    serve_process(stub)
    stub.process = dict(PROCESS, status="completed")
    stub.on("GET", "/api/events", sse(hold=10.0))
    started = time.monotonic()
    status, _, _ = orchd(stub, capsys, "start", "create_node", "--wait")
    assert status == 0 and time.monotonic() - started < 5


def test_wait_falls_back_to_polling(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    serve_process(stub)
    polls = []

    def get(h: Handler, query: dict[str, str], body: Any) -> None:
        polls.append(time.monotonic())
        h.answer(200, dict(PROCESS, status="running" if len(polls) < 3 else "completed"))

    stub.on("GET", f"/api/processes/{PID}", get)  # no /api/events route: it answers 404
    status, _, _ = orchd(stub, capsys, "start", "create_node", "--wait")
    assert status == 0 and len(polls) == 3
    assert polls[2] - polls[1] >= 0.15


def test_wait_reconnects_when_the_stream_goes_silent(
    stub: Stub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "STREAM_IDLE", 0.3)
    serve_process(stub)
    # The change is never announced; only the re-check after reconnecting can see it.
    stub.on("GET", "/api/events", sse(0.1, finish(stub, "completed"), keepalive=False))
    status, _, _ = orchd(stub, capsys, "start", "create_node", "--wait")
    assert status == 0
    # Read once before the stream, once after subscribing, once after the silence.
    assert sum(r["path"] == f"/api/processes/{PID}" for r in stub.requests) >= 3


def test_wait_timeout_exits_5(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    serve_process(stub)
    stub.on("GET", "/api/events", sse(event("running"), hold=5.0))
    started = time.monotonic()
    status, out, err = orchd(stub, capsys, "start", "create_node", "--wait", "--timeout", "0.5")
    assert status == 5 and time.monotonic() - started < 3
    assert "gave up" in err and "running" in err


# --- TCP, SSE parsing, the real entry point ------------------------------------------------------


def test_tcp_sends_the_bearer_token(
    tcp_stub: Stub, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    tcp_stub.on("GET", "/api/workflows", (200, []))
    status = cli.main(["workflows", "--url", tcp_stub.address, "--token-file", str(token)])
    assert status == 0
    assert tcp_stub.requests[-1]["headers"]["Authorization"] == "Bearer s3cret"
    tcp_stub.on("GET", "/api/workflows", problem(401, "missing or wrong token"))
    assert cli.main(["workflows", "--url", tcp_stub.address]) == 1
    assert "wrong token" in capsys.readouterr().err


def test_parse_sse() -> None:
    lines = [
        b": comment\n",
        b"id: 7\n",
        b"event: process\n",
        b'data: {"a":\n',
        b"data:  1}\r\n",
        b"\n",
        b"data: plain\n",
        b"\n",
        b"retry: 10\n",
        b"\n",
        b"data: unfinished\n",
    ]
    assert list(parse_sse(lines)) == [
        Event(event="process", data='{"a":\n 1}', id="7"),
        Event(event="message", data="plain", id="7"),
    ]
    assert Event(event="x", data='{"a": 1}').json() == {"a": 1}
    assert Event(event="x", data="not json").json() is None


def test_python_m_orchd_end_to_end(stub: Stub) -> None:
    stub.on("GET", "/api/workflows", (200, [{"name": "w", "target": "SYSTEM", "description": ""}]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHD_")}
    env["ORCHD_SOCKET"] = stub.address
    done = subprocess.run(
        [sys.executable, "-m", "orchd", "workflows", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["name"] == "w"
