"""A real ``orchd serve`` subprocess for end-to-end and crash tests.

``DaemonProcess`` writes a TOML config into its own directory, starts the daemon with
``python -m orchd serve --config``, waits for ``GET /api/health`` on the Unix socket and talks to
it with the standard library's ``http.client``. The daemon's stderr goes to a file so tests can
assert on log lines. The ``daemon_factory`` fixture (tests/conftest.py) makes them and kills
whatever a test leaves running.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchd.client import Event, parse_sse
from orchd.client import UnixHTTPConnection as _ClientConnection
from support.common import block_until

ROOT = Path(__file__).resolve().parent.parent.parent
WF_DIR = ROOT / "tests" / "wf"
#: Environment variables of a systemd service that must not leak into a test daemon.
_SYSTEMD_VARS = (
    "NOTIFY_SOCKET",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "ORCHD_CONFIG",
    "ORCHD_SOCKET",
    "CREDENTIALS_DIRECTORY",
    "STATE_DIRECTORY",
    "RUNTIME_DIRECTORY",
)
START_TIMEOUT = 15.0
#: The CLI of the environment the tests run in.
ORCHD = str(Path(sys.executable).parent / "orchd")


class UnixHTTPConnection(_ClientConnection):
    """``http.client`` over a Unix stream socket: the CLI's own connection class, with the
    tests' default timeout."""

    def __init__(self, path: str, timeout: float | None = 10.0) -> None:
        super().__init__(path, timeout=timeout)


def toml_value(value: Any) -> str:
    """Enough TOML for test configs: strings, numbers, booleans, lists, inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_document(config: Mapping[str, Any]) -> str:
    return "".join(f"{key} = {toml_value(value)}\n" for key, value in config.items())


def parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


@dataclass(frozen=True)
class Answer:
    """One HTTP answer as a test reads it: status, headers (names in lower case), body."""

    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def of(cls, response: http.client.HTTPResponse) -> Answer:
        headers = {name.lower(): value for name, value in response.getheaders()}
        return cls(response.status, headers, response.read())

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()


class DaemonProcess:
    """One daemon directory (config, database, socket, stderr log) and its current process."""

    def __init__(
        self,
        directory: Path,
        config: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        raw_config: str | None = None,
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "orchd.toml"
        self.socket = str(self.dir / "orchd.sock")
        self.db = str(self.dir / "orchd.db")
        self.test_dir = self.dir / "runs"
        self.test_dir.mkdir(exist_ok=True)
        #: Where the CLI runs: an empty folder, so no ./orchd.sock or relative path is found
        #: there by chance.
        self.cwd = self.dir / "cwd"
        self.cwd.mkdir(exist_ok=True)
        # Daemons sharing a directory (a second daemon on the same socket) log apart.
        self.stderr_path = self.dir / f"stderr-{len(list(self.dir.glob('stderr-*.log')))}.log"
        self.stderr_path.touch()
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_env = dict(env or {})
        self.runs = 0
        self.config: dict[str, Any] = {}
        self.write_config(config, raw=raw_config)

    # -- config ---------------------------------------------------------------------------

    def defaults(self) -> dict[str, Any]:
        return {
            "database": self.db,
            "socket": self.socket,
            "workflows": ["daemon_flows"],
            "grace_period": "5s",
        }

    def write_config(
        self, config: Mapping[str, Any] | None = None, *, raw: str | None = None
    ) -> None:
        """(Re)write the config file: the defaults updated with ``config``, then ``raw`` TOML.

        A value of None in ``config`` removes that key. ``raw`` is appended as is, so it may
        hold tables such as ``[[schedules]]`` or deliberate mistakes.
        """
        merged = self.defaults()
        merged.update(config or {})
        self.config = {k: v for k, v in merged.items() if v is not None}
        text = toml_document(self.config) + (("\n" + raw) if raw else "")
        self.config_path.write_text(text)

    # -- process --------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARS}
        paths = [str(WF_DIR), str(ROOT)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["ORCHD_TEST_DIR"] = str(self.test_dir)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        if (ROOT / "orchd" / "__main__.py").exists():
            return [sys.executable, "-m", "orchd", "serve", "--config", str(self.config_path)]
        code = "import sys; from orchd.daemon import serve; sys.exit(serve(sys.argv[1]))"
        return [sys.executable, "-c", code, str(self.config_path)]

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the daemon without waiting for it; stderr is appended to ``stderr_path``."""
        assert self.proc is None or self.proc.poll() is not None, "the daemon is still running"
        self.runs += 1
        with self.stderr_path.open("ab") as err:
            err.write(f"--- run {self.runs} ---\n".encode())
            err.flush()
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.dir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        return self.proc

    def start(self, timeout: float = START_TIMEOUT) -> DaemonProcess:
        """Start the daemon and return once its health check answers over the socket."""
        self.spawn()
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(f"the daemon exited with {code}:\n{self.stderr}")
            try:
                status, body = self.request("GET", "/api/health", timeout=1.0)
            except OSError:
                pass
            else:
                if status == 200:
                    return dict(body)
            if time.monotonic() > deadline:
                raise AssertionError(f"no health answer within {timeout}s:\n{self.stderr}")
            time.sleep(0.02)

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for the process to exit; return its exit status."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            message = f"the daemon did not exit within {timeout}s:\n{self.stderr}"
            raise AssertionError(message) from None

    def run_to_exit(self, timeout: float = 15.0) -> int:
        """Start a daemon that is expected to exit by itself (a config error)."""
        self.spawn()
        return self.wait(timeout)

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` (SIGTERM) and return the exit status."""
        self.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, timeout: float = START_TIMEOUT) -> DaemonProcess:
        """Stop gracefully if running, then start again (same directory, same database)."""
        if self.proc is not None and self.proc.poll() is None:
            code = self.stop()
            assert code == 0, f"exit status {code}:\n{self.stderr}"
        return self.start(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def last_run_stderr(self) -> str:
        """What the current (or last) run wrote to stderr."""
        return self.stderr.rpartition(f"--- run {self.runs} ---\n")[2]

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """Poll the current run's stderr until ``text`` appears; return that stderr."""
        deadline = time.monotonic() + timeout
        while True:
            err = self.last_run_stderr()
            if text in err:
                return err
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout}s:\n{err}")
            time.sleep(0.02)

    # -- the CLI and the API --------------------------------------------------------------

    def cli(
        self, *args: str, socket: str | None = None, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """``orchd --socket S ARGS...`` against this daemon (``socket`` names another;
        ``""`` leaves ``--socket`` out), with none of the caller's ``ORCHD_*`` settings,
        nothing on stdin, in ``cwd``."""
        return subprocess.run(
            self._cli_argv(args, socket),
            cwd=self.cwd,
            env=_cli_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cli_ok(self, *args: str) -> str:
        """What ``cli`` printed, once it exited 0."""
        done = self.cli(*args)
        assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
        return done.stdout

    def serve_check(self) -> subprocess.CompletedProcess[str]:
        """``orchd serve --check`` on this daemon's config, in its environment and folder."""
        return subprocess.run(
            [sys.executable, "-m", "orchd", "serve", "--check", "--config", str(self.config_path)],
            cwd=self.dir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def spawn_cli(self, *args: str, socket: str | None = None) -> subprocess.Popen[str]:
        """``cli`` in the background (``orchd wait``, ``start --wait``): its output is piped."""
        return subprocess.Popen(
            self._cli_argv(args, socket),
            cwd=self.cwd,
            env=_cli_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def _cli_argv(self, args: tuple[str, ...], socket: str | None) -> list[str]:
        path = self.socket if socket is None else socket
        return [ORCHD, *(["--socket", path] if path else []), *args]

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """One request over the Unix socket; returns (status, decoded JSON or text)."""
        answer = self.call(method, path, body, headers=headers, timeout=timeout)
        return answer.status, parse_body(answer.body)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Answer:
        """One request over the Unix socket with ``body`` as JSON or ``raw`` bytes (sent as
        JSON unless ``headers`` say otherwise); returns the whole answer."""
        conn = UnixHTTPConnection(self.socket, timeout=timeout)
        try:
            return _exchange(conn, method, path, body, headers, raw)
        finally:
            conn.close()

    def events(self, path: str = "/api/events", last_event_id: str | None = None) -> EventStream:
        """The daemon's event stream (see ``EventStream``)."""
        return EventStream(self.socket, path, last_event_id=last_event_id)

    def metric(self, name: str) -> float:
        """The value of the sample ``name`` (labels and all, as written) in ``GET /metrics``."""
        status, text = self.request("GET", "/metrics")
        assert status == 200, (status, text)
        found = re.search(rf"^{re.escape(name)} (\S+)$", str(text), re.MULTILINE)
        assert found is not None, f"{name} not in /metrics"
        return float(found.group(1))

    def start_process(self, workflow: str, body: Any = None) -> str:
        status, answer = self.request("POST", f"/api/processes/{workflow}", body or {})
        assert status == 201, (status, answer)
        return str(answer["id"])

    def get_process(self, pid: str) -> dict[str, Any]:
        status, answer = self.request("GET", f"/api/processes/{pid}")
        assert status == 200, (status, answer)
        return dict(answer)

    def wait_process(
        self, pid: str, statuses: tuple[str, ...] = ("completed",), timeout: float = 10.0
    ) -> dict[str, Any]:
        """Poll until the process reaches one of ``statuses``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            process = self.get_process(pid)
            if process["status"] in statuses:
                return process
            if time.monotonic() > deadline:
                raise AssertionError(f"process {pid} still {process['status']}: {process}")
            time.sleep(0.02)

    def release(self, pid: str) -> None:
        """Let the process's held step (a daemon_flows or e2e_flows ``hold``) go on."""
        (self.test_dir / f"{pid}.release").touch()

    def step_runs(self, pid: str, step: str) -> int:
        """How often a daemon_flows step ran for a process (each run appends a line)."""
        path = self.test_dir / f"{pid}.{step}.runs"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def wait_step_started(self, pid: str, step: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.step_runs(pid, step) == 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"step {step!r} of {pid} did not start:\n{self.stderr}")
            time.sleep(0.01)


class EventStream:
    """``GET /api/events`` (or another ``path`` of it, with a query) on a daemon's socket,
    read with the CLI's own parser, ``orchd.client.parse_sse``. ``next`` gives the next event
    and ``until`` the events up to a process's status, each within a deadline; ``got`` keeps
    every event read and ``last_id`` the last id."""

    def __init__(
        self,
        socket_path: str,
        path: str = "/api/events",
        *,
        last_event_id: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.conn = UnixHTTPConnection(socket_path, timeout=timeout)
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.conn.request("GET", path, headers=headers)
        self.response = self.conn.getresponse()
        if self.response.status != 200:
            body = self.response.read()
            self.close()
            raise AssertionError(f"GET {path}: {self.response.status} {body!r}")
        self.deadline = time.monotonic() + timeout
        self.events = parse_sse(self._lines())
        self.got: list[Event] = []
        self.last_id: str | None = None

    def _lines(self) -> Iterator[bytes]:
        # A keep-alive comment comes as a line too: the deadline holds across them.
        while True:
            assert time.monotonic() < self.deadline, "no event in time"
            line = self.response.readline()
            assert line, "the event stream ended"
            yield line

    def next(self, timeout: float = 10.0) -> Event:
        self.deadline = time.monotonic() + timeout
        event = next(self.events)
        self.got.append(event)
        self.last_id = event.id if event.id is not None else self.last_id
        return event

    def until(self, pid: str, status: str, timeout: float = 10.0) -> list[Event]:
        """The events read up to the first that says process ``pid`` is ``status``."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            event = self.next(deadline - time.monotonic())
            seen.append(event)
            data = event.json()
            if (
                isinstance(data, dict)
                and (event.event, data.get("kind")) == ("process", "process")
                and (data.get("process_id"), data.get("status")) == (pid, status)
            ):
                return seen

    def close(self) -> None:
        self.response.close()
        self.conn.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cli_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCHD_")}


def _exchange(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Any,
    headers: Mapping[str, str] | None,
    raw: bytes | None = None,
) -> Answer:
    sent = dict(headers or {})
    payload = raw if body is None else json.dumps(body).encode()
    if payload is not None:
        sent.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=payload, headers=sent)
    return Answer.of(conn.getresponse())


def tcp_request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """One request over TCP; returns (status, decoded JSON or text)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        answer = _exchange(conn, method, path, body, headers)
        return answer.status, parse_body(answer.body)
    finally:
        conn.close()


def open_idle(
    stack: contextlib.ExitStack, port: int, count: int, source: str = "127.0.0.1"
) -> list[socket.socket]:
    """``count`` TCP connections from ``source`` to a daemon's ``port`` that send nothing
    (the kernel completes them before the daemon accepts them), closed with ``stack``."""
    made = []
    for _ in range(count):
        sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        made.append(sock)
    return made


def is_closed(sock: socket.socket) -> bool:
    """Whether the daemon closed or reset a connection that sent nothing (a peek that never
    blocks, whatever the socket's mode)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError as exc:
        return exc.errno in (errno.ECONNRESET, errno.EPIPE)


#: The ports ``free_port`` hands out: below the kernel's ephemeral range (32768-60999 on
#: Linux), from which every outgoing connection (to PostgreSQL, to a daemon) takes a source
#: port at any moment, and a block of its own for each xdist worker, so no two workers hand
#: out the same port between the check and the daemon's bind. A port the kernel picked
#: (bind to 0) was free only at that instant: another worker's connection could take it
#: before the daemon bound it ("Address already in use", seen on a busy machine).
PORTS_FROM = 20_000
PORTS_PER_WORKER = 1_000
_port_turn = itertools.count()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, for a daemon or server to bind."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    block = int(worker) % 12 if worker.isdigit() else 0  # 20,000-31,999
    first = PORTS_FROM + block * PORTS_PER_WORKER
    for _ in range(PORTS_PER_WORKER):
        port = first + next(_port_turn) % PORTS_PER_WORKER
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {first}-{first + PORTS_PER_WORKER - 1}")


@contextlib.contextmanager
def running_daemon(
    directory: Path, config: Mapping[str, Any], *, raw_config: str | None = None
) -> Iterator[DaemonProcess]:
    """A started daemon for a module's tests (a module-scoped fixture yields it from here);
    afterwards SIGTERM must end it cleanly (exit 0), and it is killed whatever happened."""
    daemon = DaemonProcess(directory, config, raw_config=raw_config)
    try:
        daemon.start()
        yield daemon
        assert daemon.stop() == 0, daemon.last_run_stderr()
    finally:
        daemon.kill()


class DaemonFactory:
    """Makes daemons in a test's tmp_path; ``close`` kills what is still running."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.made: list[DaemonProcess] = []

    def __call__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        name: str = "d",
        start: bool = True,
        env: Mapping[str, str] | None = None,
        raw_config: str | None = None,
    ) -> DaemonProcess:
        """A daemon in ``tmp_path/name`` (the same name shares directory, socket and database)."""
        daemon = DaemonProcess(self.base / name, config, env=env, raw_config=raw_config)
        self.made.append(daemon)
        if start:
            daemon.start()
        return daemon

    def close(self) -> None:
        for daemon in self.made:
            daemon.kill()


# -- `make run`'s demo: the fake OSS and a daemon on the bundled examples -----------------------


def makefile_oss_args(port: int, directory: Path) -> list[str]:
    """``$(OSS_ARGS)`` as the Makefile expands it, for ``make run`` started in ``directory``."""
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(ROOT), "--eval",
         "print-oss-args: ; @echo $(OSS_ARGS)", "print-oss-args",
         f"OSS_PORT={port}", f"CURDIR={directory}"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return shlex.split(result.stdout)


@contextlib.contextmanager
def fake_oss(
    port: int, args: list[str], folder: Path, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """``orchd fake-oss ARGS`` started in ``folder`` (its log there), answering on ``port``;
    its URL. Stopped on exit."""
    log = (folder / "fake-oss.log").open("wb")
    oss = subprocess.Popen(
        [sys.executable, "-m", "orchd", "fake-oss", *args],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip

    def answers() -> bool:
        assert oss.poll() is None, f"the fake OSS exited:\n{(folder / 'fake-oss.log').read_text()}"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    try:
        block_until(answers, "the fake OSS answering", within=15)
        yield f"http://127.0.0.1:{port}"
    finally:
        oss.terminate()
        oss.wait(10)
        log.close()


@contextlib.contextmanager
def make_run_demo(factory: DaemonFactory) -> Iterator[DaemonProcess]:
    """A daemon on the bundled examples with no TCP listener, beside ``orchd fake-oss`` started
    with the Makefile's own ``OSS_ARGS`` (only the port and the directory changed), as
    ``make run`` wires them."""
    port = free_port()
    daemon = factory(
        {"workflows": ["orchd.examples"]},
        start=False,
        env={"ORCHD_OSS_URL": f"http://127.0.0.1:{port}"},
    )
    with fake_oss(port, makefile_oss_args(port, daemon.dir), daemon.dir, daemon.environment()):
        daemon.start()
        yield daemon


def run_demo(daemon: DaemonProcess) -> subprocess.CompletedProcess[str]:
    """``python -m orchd.examples.demo SOCKET`` as ``make run`` runs it beside the daemon."""
    return subprocess.run(
        [sys.executable, "-m", "orchd.examples.demo", daemon.socket],
        env=daemon.environment(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
