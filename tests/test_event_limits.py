"""Event streams are capped and a client that stops reading is disconnected (README "The HTTP API"
/ issue #8),
against a real daemon."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from support.common import block_until
from support.daemons import DaemonFactory, DaemonProcess


def open_stream(daemon: DaemonProcess, *, rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    """A raw ``GET /api/events`` on the Unix socket; returns the socket and the answer's head."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(daemon.socket)
    sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


@pytest.fixture
def streams() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def test_streams_beyond_the_per_client_cap_get_429(
    daemon_factory: DaemonFactory, streams: list[socket.socket]
) -> None:
    daemon = daemon_factory({"events": {"max_streams": 10, "max_per_peer": 2}})
    for _ in range(2):
        sock, head = open_stream(daemon)
        streams.append(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
    sock, head = open_stream(daemon)
    streams.append(sock)
    assert head.startswith(b"HTTP/1.1 429 ") and b"application/problem+json" in head
    assert daemon.metric("orchd_event_streams") == 2
    streams.pop(0).close()
    block_until(lambda: daemon.metric("orchd_event_streams") <= 1, "the closed stream gone")
    sock, head = open_stream(daemon)
    streams.append(sock)
    assert head.startswith(b"HTTP/1.1 200 ")


def test_streams_beyond_the_daemons_cap_get_429(
    daemon_factory: DaemonFactory, streams: list[socket.socket]
) -> None:
    daemon = daemon_factory({"events": {"max_streams": 3, "max_per_peer": 3}})
    for _ in range(3):
        sock, head = open_stream(daemon)
        streams.append(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
    sock, head = open_stream(daemon)
    streams.append(sock)
    assert head.startswith(b"HTTP/1.1 429 ")
    assert daemon.metric("orchd_event_streams_refused_total") == 1


def test_a_client_that_stops_reading_is_disconnected(
    daemon_factory: DaemonFactory, streams: list[socket.socket]
) -> None:
    daemon = daemon_factory({"events": {"write_timeout": "500ms"}})
    sock, head = open_stream(daemon, rcvbuf=4096)
    streams.append(sock)
    assert head.startswith(b"HTTP/1.1 200 ")
    # Far more events than the socket buffers and the stream's own buffer hold.
    for _ in range(400):
        daemon.start_process("quick")
    daemon.wait_for_log("dropped an event stream", timeout=15)
    assert daemon.metric("orchd_event_streams_dropped_total") == 1
    assert daemon.metric("orchd_event_streams") == 0
    assert daemon.request("GET", "/api/health")[0] == 200
