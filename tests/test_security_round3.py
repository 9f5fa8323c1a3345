"""Issue 26, items 5, 6, 9 (file modes, connection caps) and 12, against real daemons.

- 5: the audit trail under the shipped systemd unit. The kernel gives a socket peer's uid as
  the daemon's user namespace sees it; systemd's ``PrivateUsers=yes`` makes one that maps only
  root and the service's user, so every operator read as 65534. The daemon is run here in the
  namespace the unit's settings make (the same mapping systemd writes), and an operator of
  another uid connects to its socket.
- 6: wrong tokens over TCP are logged with the address and throttled per address by default
  (429 with Retry-After), on the API, health and the console's login alike.
- 9: the database and its -wal/-shm are never readable by others, whatever the umask; the
  Unix socket has a cap; a network prefix has a cap on the TCP listener, and the last slots
  are kept for requests with the token or a callback.
- 12: ``serve --check`` refuses what ``serve`` refuses before it binds.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from support.common import block_until, parse_logfmt
from support.daemons import (
    ROOT,
    DaemonFactory,
    DaemonProcess,
    UnixHTTPConnection,
    free_port,
    is_closed,
    open_idle,
)

from orchd.daemon import partial_uid_map

TOKEN = "5f0c9a7e3b2d4c1e8a6f9b0d2c4e6a8b"
WRONG = "0123456789abcdef0123456789abcdef"
UNIT = ROOT / "systemd" / "orchd.service"
#: The service's user (User=orchd in the unit) and an operator in the socket's group.
SERVICE_UID, OPERATOR_UID = 4701, 4702


# -- helpers ----------------------------------------------------------------------------------


def ask(
    port: int,
    method: str,
    path: str,
    *,
    source: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One TCP request from ``source``; (status, headers, JSON or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        kind = response.headers.get("Content-Type", "")
        parsed = json.loads(raw) if "json" in kind and raw else raw.decode(errors="replace")
        return response.status, dict(response.headers), parsed
    finally:
        conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def tcp_daemon(
    daemon_factory: DaemonFactory, tmp_path: Path, **config: Any
) -> tuple[DaemonProcess, int]:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    port = free_port()
    daemon = daemon_factory({"listen": f"127.0.0.1:{port}", "token_file": str(token), **config})
    return daemon, port


def logfmt_lines(daemon: DaemonProcess) -> list[dict[str, str]]:
    return [parse_logfmt(line) for line in daemon.last_run_stderr().splitlines()]


def refused(port: int, source: str, head: bytes) -> bool:
    """Whether a connection from ``source`` that sends ``head`` is reset unanswered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        try:
            s.sendall(head)
            return s.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True


# -- 5: the audit trail under the shipped unit's user namespace --------------------------------


def unit_setting(name: str) -> str | None:
    found = re.findall(rf"^{name}=(.*)$", UNIT.read_text(), re.MULTILINE)
    return found[-1].strip() if found else None


def unit_uid_map() -> str | None:
    """The uid map systemd (252) writes for the unit's ``PrivateUsers=``: root and the
    service's user for ``yes``; none (the host's own namespace) for ``no``."""
    value = (unit_setting("PrivateUsers") or "no").lower()
    if value in ("yes", "true", "on", "1"):
        return f"0 0 1\n{SERVICE_UID} {SERVICE_UID} 1\n"
    if value in ("no", "false", "off", "0"):
        return None
    if value == "identity":  # systemd 257: the first 65536 uids, each to itself
        return "0 0 65536\n"
    pytest.fail(f"PrivateUsers={value}: no mapping known for it here")


def _runs_as(uid: int, interpreter: str) -> bool:
    probe = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", interpreter]
    try:
        done = subprocess.run([*probe, "-c", "pass"], capture_output=True, timeout=30)
    except OSError:
        return False
    return done.returncode == 0


@pytest.fixture(scope="module")
def operator_python() -> str:
    """An interpreter another uid may run (the venv's may sit in root's home), or a skip."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("user namespaces and other uids: Linux, as root")
    own = partial_uid_map()
    if own is not None:
        pytest.skip(f"the tests themselves run in a user namespace mapping only {own}")
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (util-linux) is not installed")
    try:
        made = subprocess.run(["unshare", "--user", "true"], capture_output=True, timeout=30)
    except OSError as exc:
        pytest.skip(f"unshare cannot run: {exc}")
    if made.returncode != 0:
        pytest.skip(f"this machine allows no user namespaces: {made.stderr.decode().strip()}")
    for candidate in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(candidate) and _runs_as(OPERATOR_UID, candidate):
            return candidate
    pytest.skip(f"no Python interpreter that uid {OPERATOR_UID} may run")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory another uid can reach (tmp_path sits under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="orchd-userns-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start_in_namespace(daemon: DaemonProcess, uid_map: str | None) -> None:
    """Start the daemon in a new user namespace with ``uid_map`` (and the same gid map), as
    systemd sets one up before it runs the service; None: in the host's namespace.

    The shell that ``unshare`` runs waits on a FIFO; opening its other end succeeds only once
    that shell runs, inside the namespace, so the maps are written before the daemon starts.
    """
    if uid_map is None:
        daemon.start()
        return
    fifo = daemon.dir / "mapped"
    os.mkfifo(fifo)
    command = daemon.command()
    wait = 'read go < "$0"; exec "$@"'
    daemon.command = lambda: ["unshare", "--user", "--", "sh", "-c", wait, str(fifo), *command]  # type: ignore[method-assign]
    proc = daemon.spawn()

    def writer() -> int | None:
        assert proc.poll() is None, daemon.stderr
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            assert exc.errno == errno.ENXIO, exc  # no reader yet
            return None

    fd = block_until(writer, "the shell in the new namespace")
    try:
        for name in ("uid_map", "gid_map"):
            Path(f"/proc/{proc.pid}/{name}").write_text(uid_map)
        os.write(fd, b"go\n")
    finally:
        os.close(fd)
    daemon.wait_healthy()


OPERATOR_START = """
import http.client, json, socket, sys

class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sys.argv[1])

conn = Conn("localhost", timeout=10)
conn.request("POST", "/api/processes/quick", body="{}",
             headers={"Content-Type": "application/json"})
answer = conn.getresponse()
print(answer.status, answer.read().decode())
"""


def start_as(uid: int, python: str, daemon: DaemonProcess) -> str:
    """Start a process as ``uid`` would with the CLI; its id."""
    as_uid = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    done = subprocess.run(
        [*as_uid, python, "-c", OPERATOR_START, daemon.socket],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    status, _, body = done.stdout.partition(" ")
    assert done.returncode == 0 and status == "201", done.stdout + done.stderr
    return str(json.loads(body)["id"])


def reporter(daemon: DaemonProcess, pid: str) -> str:
    return str(daemon.get_process(pid)["reporter"])


def audit_daemon(open_dir: Path) -> DaemonProcess:
    # The socket open to the operator (the unit's socket group, without a group to make).
    return DaemonProcess(open_dir / "d", {"socket_mode": "0666"})


def test_the_namespace_of_private_users_yes_records_every_operator_as_65534(
    operator_python: str, open_dir: Path
) -> None:
    # The method below, shown on the mapping of the unit before issue 26: an operator's uid
    # is unmapped there, and the kernel hands the daemon the overflow uid.
    daemon = audit_daemon(open_dir)
    try:
        start_in_namespace(daemon, f"0 0 1\n{SERVICE_UID} {SERVICE_UID} 1\n")
        operator = start_as(OPERATOR_UID, operator_python, daemon)
        service_user = start_as(SERVICE_UID, operator_python, daemon)
        root = daemon.start_process("quick")
        assert reporter(daemon, operator) == "uid:65534"
        assert reporter(daemon, service_user) == f"uid:{SERVICE_UID}"
        assert reporter(daemon, root) == "uid:0"
        # The daemon says so at start.
        warned = [f for f in logfmt_lines(daemon) if f["msg"].startswith("this user namespace")]
        assert len(warned) == 1 and "uid:65534" in warned[0]["msg"], warned
    finally:
        daemon.kill()


def test_the_shipped_unit_records_each_operator_by_their_own_uid(
    operator_python: str, open_dir: Path
) -> None:
    daemon = audit_daemon(open_dir)
    try:
        start_in_namespace(daemon, unit_uid_map())
        operator = start_as(OPERATOR_UID, operator_python, daemon)
        assert reporter(daemon, operator) == f"uid:{OPERATOR_UID}"
        assert daemon.get_process(operator)["actions"][0]["actor"] == f"uid:{OPERATOR_UID}"
        assert not any("this user namespace" in f["msg"] for f in logfmt_lines(daemon))
    finally:
        daemon.kill()


def test_the_unit_comment_states_the_score_systemd_gives_it() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0"},
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert found is not None, done.stdout + done.stderr
    stated = re.search(r"rates this (\d+\.\d+)", UNIT.read_text())
    assert stated is not None and stated.group(1) == found.group(1)
    readme = (ROOT / "README.md").read_text()
    assert f"`systemd-analyze security orchd` rates it {found.group(1)}" in readme


# -- 6: failed logins ----------------------------------------------------------------------------


def test_wrong_tokens_are_logged_and_throttled_per_address_by_default(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon, port = tcp_daemon(daemon_factory, tmp_path)
    guesser, neighbour, console, polite = "127.0.0.7", "127.0.0.8", "127.0.0.9", "127.0.0.10"
    for _ in range(10):  # [tcp] failed_logins: 10 by default
        status, headers, _ = ask(
            port, "GET", "/api/processes", source=guesser, headers=bearer(WRONG)
        )
        assert status == 401 and "Retry-After" not in headers
    # The eleventh check is not made: the right token is refused too, and told when to retry.
    status, headers, problem = ask(
        port, "GET", "/api/processes", source=guesser, headers=bearer(TOKEN)
    )
    assert status == 429 and problem["status"] == 429
    assert 1 <= int(headers["Retry-After"]) <= 60
    # Health answers it, but only the status: the token is not compared.
    status, _, health = ask(port, "GET", "/api/health", source=guesser, headers=bearer(TOKEN))
    assert status == 200 and health == {"status": "ok"}
    # Other addresses, requests without a token, and the socket are not affected.
    assert ask(port, "GET", "/api/processes", source=neighbour, headers=bearer(TOKEN))[0] == 200
    for _ in range(12):
        assert ask(port, "GET", "/api/processes", source=polite)[0] == 401
    assert ask(port, "GET", "/api/processes", source=polite, headers=bearer(TOKEN))[0] == 200
    assert daemon.request("GET", "/api/processes")[0] == 200
    # The console's login counts wrong tokens the same way.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for _ in range(10):
        body = f"token={WRONG}&next=%2Fui%2F".encode()
        assert ask(port, "POST", "/ui/login", source=console, headers=form, body=body)[0] == 401
    body = f"token={TOKEN}&next=%2Fui%2F".encode()
    status, headers, page = ask(port, "POST", "/ui/login", source=console, headers=form, body=body)
    assert status == 429 and int(headers["Retry-After"]) >= 1 and "<html" in page.lower()

    _, document = daemon.request("GET", "/api/openapi.json")
    too_many = document["components"]["responses"]["TooManyRequests"]["description"]
    assert "wrong tokens" in too_many and "Retry-After" in too_many
    assert daemon.metric("orchd_failed_logins_total") == 20
    assert daemon.metric("orchd_failed_logins_throttled_total") == 2
    assert daemon.stop() == 0
    lines = logfmt_lines(daemon)
    failed = [f for f in lines if f["msg"] == "failed login"]
    assert [(f["level"], f["address"], f["route"]) for f in failed] == [
        ("warning", guesser, "/api/processes")
    ] * 10 + [("warning", console, "/ui/login")] * 10
    throttled = [(f["address"], f["route"]) for f in lines if f["msg"] == "failed logins throttled"]
    assert throttled == [(guesser, "/api/processes"), (console, "/ui/login")]
    err = daemon.last_run_stderr()
    assert WRONG not in err and TOKEN not in err


def test_a_throttled_address_may_try_again_after_retry_after_and_json_logs_say_so(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon, port = tcp_daemon(
        daemon_factory,
        tmp_path,
        log_format="json",
        tcp={"failed_logins": 1, "failed_login_window": "1s"},
    )
    assert ask(port, "GET", "/api/workflows", headers=bearer(WRONG))[0] == 401
    status, headers, _ = ask(port, "GET", "/api/workflows", headers=bearer(TOKEN))
    assert status == 429 and headers["Retry-After"] == "1"
    block_until(
        lambda: ask(port, "GET", "/api/workflows", headers=bearer(TOKEN))[0] == 200,
        "the address may try again",
    )
    assert daemon.stop() == 0
    records = [json.loads(line) for line in daemon.last_run_stderr().splitlines()]
    failed = [r for r in records if r["msg"] == "failed login"]
    assert len(failed) == 1
    assert failed[0]["address"] == "127.0.0.1" and failed[0]["route"] == "/api/workflows"


def test_the_rate_limit_says_when_to_try_again(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"rate_limit": 0.2})  # one request, then one every 5 s
    assert daemon.request("GET", "/api/workflows")[0] == 200
    conn = UnixHTTPConnection(daemon.socket)
    try:
        conn.request("GET", "/api/workflows")
        answer = conn.getresponse()
        answer.read()
    finally:
        conn.close()
    assert answer.status == 429 and 1 <= int(answer.headers["Retry-After"]) <= 5


# -- 9: file modes ----------------------------------------------------------------------------

UMASK_0 = "import os, sys; os.umask(0); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"


def modes(database: str) -> dict[str, int]:
    return {
        suffix: stat.S_IMODE(os.stat(database + suffix).st_mode)
        for suffix in ("", "-wal", "-shm")
        if os.path.exists(database + suffix)
    }


def test_the_daemon_creates_its_database_unreadable_by_others_under_umask_0(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory(start=False)
    command = daemon.command()
    daemon.command = lambda: [sys.executable, "-c", UMASK_0, *command[1:]]  # type: ignore[method-assign]
    daemon.start()
    daemon.wait_process(daemon.start_process("quick"))
    assert modes(daemon.db) == {"": 0o640, "-wal": 0o640, "-shm": 0o640}


def test_an_engine_creates_its_database_unreadable_by_others_under_umask_0(
    tmp_path: Path,
) -> None:
    database = str(tmp_path / "library.db")
    script = f"""
import asyncio, json, os, stat
os.umask(0)
from orchd.engine import Engine

async def main():
    engine = Engine({database!r}, [])
    await engine.open()
    try:
        found = {{s: stat.S_IMODE(os.stat({database!r} + s).st_mode) for s in ("", "-wal", "-shm")}}
    finally:
        await engine.close()
    print(json.dumps(found))

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"": 0o640, "-wal": 0o640, "-shm": 0o640}


# -- 9: the Unix socket's cap ---------------------------------------------------------------------


def test_the_unix_socket_caps_its_connections(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(raw_config="[unix]\nmax_connections = 4\n")
    with ExitStack() as stack:
        held = []
        for _ in range(4):
            sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.connect(daemon.socket)
            held.append(sock)
        extra = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        extra.connect(daemon.socket)
        block_until(lambda: is_closed(extra), "the fifth connection reset")
        assert not any(is_closed(s) for s in held)
        held.pop().close()
        # Its place is free once the daemon has seen it go (a request before that is reset).
        refusals = block_until(lambda: metric_or_none(daemon), "a request answered again")
        assert refusals >= 1
    assert daemon.stop() == 0
    assert "refusing Unix socket connections" in daemon.last_run_stderr()


def metric_or_none(daemon: DaemonProcess) -> float | None:
    try:
        return daemon.metric("orchd_unix_connections_refused_total")
    except (OSError, http.client.HTTPException):
        return None


# -- 9: networks on the TCP listener, and the reserved slots -------------------------------------


def test_eight_addresses_cannot_keep_callbacks_and_the_token_out(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    tcp = {"max_connections": 24, "max_per_peer": 4, "reserved": 8, "header_timeout": "60s"}
    daemon, port = tcp_daemon(daemon_factory, tmp_path, tcp=tcp)
    with ExitStack() as stack:
        # Eight addresses in eight networks, four idle connections each: sixteen take the open
        # slots, four (one a network) wait on probation in the reserved ones, twelve are reset.
        for n in range(1, 9):
            open_idle(stack, port, 4, f"127.0.{n}.1")
        block_until(
            lambda: (
                daemon.metric("orchd_tcp_connections_accepted_total") == 20
                and daemon.metric('orchd_tcp_connections_refused_total{cap="listener"}') == 12
            ),
            "the idle connections placed",
        )
        # A callback from an external system and an operator with the token still get in.
        json_type = {"Content-Type": "application/json"}
        callback = "/api/callbacks/not-a-token"
        status, _, problem = ask(
            port, "POST", callback, source="127.0.9.1", headers=json_type, body=b"{}"
        )
        assert status == 404 and problem["status"] == 404
        status, _, _ = ask(
            port, "GET", "/api/workflows", source="127.0.10.1", headers=bearer(TOKEN)
        )
        assert status == 200
        # Without the token, or with a wrong one, a reserved slot is not given.
        host = f"Host: 127.0.0.1:{port}\r\n"
        assert refused(port, "127.0.11.1", f"GET /api/workflows HTTP/1.1\r\n{host}\r\n".encode())
        wrong = f"GET /api/workflows HTTP/1.1\r\n{host}Authorization: Bearer {WRONG}\r\n\r\n"
        assert refused(port, "127.0.12.1", wrong.encode())
        assert daemon.metric('orchd_tcp_connections_refused_total{cap="reserve"}') == 2
        assert daemon.metric("orchd_failed_logins_total") == 1
    assert daemon.stop() == 0
    failed = [f for f in logfmt_lines(daemon) if f["msg"] == "failed login"]
    assert [f["address"] for f in failed] == ["127.0.12.1"]


def test_one_network_cannot_fill_the_listener(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    tcp = {"max_connections": 24, "max_per_peer": 4, "max_per_prefix": 8, "header_timeout": "60s"}
    daemon, port = tcp_daemon(daemon_factory, tmp_path, tcp=tcp)
    with ExitStack() as stack:
        for n in range(1, 9):  # eight addresses of one /24
            open_idle(stack, port, 4, f"127.0.20.{n}")
        block_until(
            lambda: daemon.metric('orchd_tcp_connections_refused_total{cap="prefix"}') == 24,
            "the network's connections past its cap reset",
        )
        assert daemon.metric("orchd_tcp_connections") == 8
        # Anyone else is served, with no token needed for health.
        assert ask(port, "GET", "/api/health", source="127.0.21.1")[0] == 200
    assert daemon.stop() == 0
    assert "over max_per_prefix" in daemon.last_run_stderr()


# -- 12: serve --check runs the checks serve runs before it binds --------------------------------


@pytest.mark.parametrize("mistake", ["token_mode", "socket_group", "database_directory"])
def test_serve_check_refuses_what_serve_refuses(
    daemon_factory: DaemonFactory, tmp_path: Path, mistake: str
) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    good = {"listen": f"127.0.0.1:{free_port()}", "token_file": str(token)}
    bad = dict(good)
    if mistake == "token_mode":
        token.chmod(0o644)
        expected = "token_file: " + str(token) + " is readable by its group or others"
    elif mistake == "socket_group":
        bad["socket_group"] = "no-such-group-orchd"
        expected = "socket_group: no group named 'no-such-group-orchd'"
    else:
        bad["database"] = str(tmp_path / "missing" / "orchd.db")
        expected = "database: directory"
    daemon = daemon_factory(bad, start=False)
    assert daemon.run_to_exit() == 2
    [refusal] = daemon.last_run_stderr().splitlines()
    assert refusal.startswith(f"orchd: {daemon.config_path}: ") and expected in refusal
    checked = daemon.serve_check()
    assert (checked.returncode, checked.stdout, checked.stderr.strip()) == (2, "", refusal)
    # Fixed, the check passes, beside the running daemon too (its lock and socket are not
    # the check's business: it is made before a restart).
    token.chmod(0o600)
    daemon.write_config(good)
    daemon.start()
    checked = daemon.serve_check()
    assert checked.returncode == 0 and checked.stdout.startswith("orchd: "), checked.stderr
