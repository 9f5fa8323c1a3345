from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchd import systemd


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A datagram socket standing in for systemd's, and the env that points at it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield sock, {"NOTIFY_SOCKET": str(path)}


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_notify_ready_reaches_a_path_socket(notify_socket) -> None:
    sock, env = notify_socket
    assert systemd.notify_ready(env=env) is True
    assert received(sock) == ["READY=1"]


def test_notify_ready_with_status(notify_socket) -> None:
    sock, env = notify_socket
    assert systemd.notify_ready("listening on /run/orchd/orchd.sock", env=env)
    assert received(sock) == ["READY=1", "STATUS=listening on /run/orchd/orchd.sock"]


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"orchd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert systemd.notify_watchdog(env={"NOTIFY_SOCKET": f"@{name}"})
        assert received(sock) == ["WATCHDOG=1"]


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda env: systemd.notify_stopping(env), ["STOPPING=1"]),
        (lambda env: systemd.notify_watchdog(env), ["WATCHDOG=1"]),
        (
            lambda env: systemd.notify_status("2 running\nprocesses", env),
            ["STATUS=2 running processes"],
        ),
        (lambda env: systemd.notify(env, errno=5, status="x"), ["ERRNO=5", "STATUS=x"]),
    ],
)
def test_notify_messages(notify_socket, call, expected: list[str]) -> None:
    sock, env = notify_socket
    assert call(env) is True
    assert received(sock) == expected


def test_notify_reloading_sends_monotonic_usec(notify_socket) -> None:
    sock, env = notify_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.notify_reloading(env)
    reloading, monotonic = received(sock)
    assert reloading == "RELOADING=1"
    key, _, usec = monotonic.partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(usec) <= before + 5_000_000


@pytest.mark.parametrize("value", [None, "", "relative/path", "vsock:2:1234"])
def test_notify_without_a_usable_socket_returns_false(value: str | None) -> None:
    env = {} if value is None else {"NOTIFY_SOCKET": value}
    assert systemd.notify_ready(env=env) is False


def test_notify_to_a_vanished_socket_returns_false(tmp_path: Path) -> None:
    assert systemd.notify_ready(env={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "self"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-1"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert systemd.watchdog_interval(env) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"INVOCATION_ID": "abc"}, True),
        ({"NOTIFY_SOCKET": "/run/systemd/notify"}, True),
        ({"INVOCATION_ID": ""}, False),
        ({}, False),
    ],
)
def test_under_systemd(env: dict[str, str], expected: bool) -> None:
    assert systemd.under_systemd(env) is expected


def test_under_journald_compares_the_stream(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert systemd.under_journald(env, stream.fileno()) is True
        # The variable is inherited by children whose stderr goes elsewhere.
        assert systemd.under_journald(env, other.fileno()) is False
    assert systemd.under_journald({}, 2) is False


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_FDS": "0", "LISTEN_PID": str(os.getpid())},
        {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1)},
        {"LISTEN_FDS": "one", "LISTEN_PID": str(os.getpid())},
        {"LISTEN_FDS": "1"},
        {},
    ],
)
def test_listen_fds_not_for_us(env: dict[str, str]) -> None:
    env = {**env, "LISTEN_FDNAMES": "orchd.socket", "OTHER": "kept"}
    assert systemd.listen_fds(env) == []
    assert env == {"OTHER": "kept"}


# Runs in a fresh interpreter: only there may fd 3 be overwritten, as systemd would.
_ACTIVATED_CHILD = """
import json, os, sys
from orchd import systemd
os.dup2(int(sys.argv[1]), systemd.LISTEN_FDS_START)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="orchd.socket")
(sock,) = systemd.listen_fds()
conn, _ = sock.accept()
conn.sendall(b"hello")
conn.close()
print(json.dumps({
    "fd": sock.fileno(),
    "name": sock.getsockname(),
    "inheritable": sock.get_inheritable(),
    "left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
}))
"""


def test_listen_fds_takes_an_inherited_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "orchd.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        with subprocess.Popen(
            [sys.executable, "-c", _ACTIVATED_CHILD, str(listener.fileno())],
            pass_fds=[listener.fileno()],
            stdout=subprocess.PIPE,
        ) as child:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(10)
                client.connect(path)
                assert client.recv(5) == b"hello"
            out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    assert json.loads(out) == {"fd": 3, "name": path, "inheritable": False, "left": []}
