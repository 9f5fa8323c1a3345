"""Traces through a real daemon (README "Traces", issue 32): the requests a step makes arrive at a
real HTTP server with the process's trace id, also from the run that resumes the process after
a SIGKILL; ``orchd show`` prints the trace; ``[tracing] enabled = true`` exports the spans
over OTLP to the endpoint the standard variable names.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from support.daemons import DaemonFactory

from orchd.tracing import parse_traceparent

WAIT = 15.0


class Oss(ThreadingHTTPServer):
    """An HTTP server that records each request's path and ``traceparent`` (and an OTLP
    export's body); the first ``/held`` request is held until ``release`` is set."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str | None]] = []
        self.exports: list[bytes] = []
        self.exported = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def headers_of(self, path: str) -> list[str | None]:
        with self.lock:
            return [tp for p, tp in self.seen if p == path]


class _Handler(BaseHTTPRequestHandler):
    server: Oss

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        oss = self.server
        with oss.lock:
            oss.seen.append((self.path, self.headers.get("traceparent")))
            first_held = self.path == "/held" and not oss.held.is_set()
        if first_held:
            oss.held.set()
            oss.release.wait(WAIT)  # the daemon is killed meanwhile
        self._answer(b"{}", "application/json")

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/v1/traces":
            self.server.exports.append(body)
            self.server.exported.set()
        self._answer(b"", "application/x-protobuf")

    def _answer(self, body: bytes, kind: str) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the daemon that asked is gone


@pytest.fixture
def oss() -> Iterator[Oss]:
    server = Oss()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def test_a_resumed_process_after_a_sigkill_keeps_its_trace_in_its_requests(
    daemon_factory: DaemonFactory, oss: Oss
) -> None:
    daemon = daemon_factory({"workflows": ["trace_flows"]})
    pid = daemon.start_process("traced_calls", {"url": oss.url})
    assert oss.held.wait(WAIT), daemon.stderr  # its second request is in flight
    trace_id = daemon.get_process(pid)["trace_id"]
    daemon.kill()
    oss.release.set()
    daemon.start()
    process = daemon.wait_process(pid, timeout=WAIT)
    assert process["trace_id"] == trace_id
    headers = oss.headers_of("/first") + oss.headers_of("/held") + oss.headers_of("/last")
    assert len(headers) == 4  # the held step ran again after the restart
    parsed = [parse_traceparent(h) for h in headers]
    assert all(p is not None and p.trace_id == trace_id for p in parsed), headers
    # Each run of a step is a span of its own, also the one repeated after the kill.
    assert len({p.span_id for p in parsed if p is not None}) == 4
    # orchd show prints it.
    shown = subprocess.run(
        [sys.executable, "-m", "orchd", "--socket", daemon.socket, "show", pid],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    ).stdout
    assert any(line.split() == ["trace:", trace_id] for line in shown.splitlines()), shown


def test_a_start_request_s_traceparent_reaches_the_oss(
    daemon_factory: DaemonFactory, oss: Oss
) -> None:
    oss.release.set()
    remote = "4bf92f3577b34da6a3ce929d0e0e4736"
    daemon = daemon_factory({"workflows": ["trace_flows"]})
    status, answer = daemon.request(
        "POST",
        "/api/processes/traced_calls",
        {"url": oss.url},
        headers={"traceparent": f"00-{remote}-00f067aa0ba902b7-01"},
    )
    assert status == 201, answer
    process = daemon.wait_process(answer["id"], timeout=WAIT)
    assert process["trace_id"] == remote
    assert {p.trace_id for p in map(parse_traceparent, oss.headers_of("/last")) if p} == {remote}


def test_tracing_enabled_exports_spans_over_otlp_where_the_environment_says(
    daemon_factory: DaemonFactory, oss: Oss
) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the otel extra")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": oss.url, "OTEL_SERVICE_NAME": "orchd-under-test"}
    daemon = daemon_factory(
        {"workflows": ["trace_flows"]}, env=env, raw_config="[tracing]\nenabled = true\n"
    )
    pid = daemon.start_process("traced_child")
    trace_id = daemon.wait_process(pid, timeout=WAIT)["trace_id"]
    assert daemon.stop() == 0  # the last spans are flushed as the daemon stops
    assert oss.exported.is_set(), daemon.stderr
    body = b"".join(oss.exports)
    assert bytes.fromhex(trace_id) in body  # OTLP's protobuf holds the ids as raw bytes
    assert b"orchd-under-test" in body and b"step child step" in body
