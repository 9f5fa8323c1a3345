"""End-to-end tests of ``orchd serve``: a real subprocess, its socket, signals and exit statuses."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.common import block_until, parse_logfmt
from support.daemons import (
    DaemonFactory,
    DaemonProcess,
    UnixHTTPConnection,
    free_port,
    tcp_request,
)

from orchd import logs


def step_records(process: dict[str, object], name: str) -> list[dict[str, object]]:
    steps = process["steps"]
    assert isinstance(steps, list)
    return [s for s in steps if s["name"] == name]


def only_line(daemon: DaemonProcess) -> str:
    lines = daemon.last_run_stderr().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- start and stop ---------------------------------------------------------------------------


def test_serves_health_on_a_0660_socket(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o660
    status, health = daemon.request("GET", "/api/health")
    assert status == 200 and health["status"] == "ok"
    status, workflows = daemon.request("GET", "/api/workflows")
    assert status == 200 and "quick" in {w["name"] for w in workflows}
    lines = daemon.last_run_stderr().splitlines()
    assert lines
    for line in lines:  # the default log_format: every line parses as logfmt
        fields = parse_logfmt(line)
        assert {"ts", "level", "logger", "msg"} <= set(fields), line
    assert any("logger=orchd.daemon msg=ready listening=" in line for line in lines)


def test_sigterm_exits_0_removes_the_socket_and_keeps_data(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory()
    pid = daemon.start_process("quick", {"name": "orchd"})
    daemon.wait_process(pid)
    assert daemon.stop() == 0
    assert not os.path.exists(daemon.socket)
    assert "logger=orchd.daemon msg=stopped" in daemon.last_run_stderr()
    daemon.start()
    process = daemon.get_process(pid)
    assert process["status"] == "completed"
    assert process["state"]["greeting"] == "hello orchd"


def test_sigterm_lets_a_running_step_finish(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"grace_period": "10s"})
    pid = daemon.start_process("slow", {"seconds": 1.0})
    daemon.wait_step_started(pid, "nap")
    began = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - began < 8
    daemon.start()
    process = daemon.wait_process(pid)
    assert [s["status"] for s in step_records(process, "nap")] == ["success"]
    assert daemon.step_runs(pid, "nap") == 1  # finished within the grace period, not re-run


def test_sigterm_interrupts_a_step_after_the_grace_period(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"grace_period": "300ms"})
    pid = daemon.start_process("slow", {"seconds": 60})
    daemon.wait_step_started(pid, "nap")
    began = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - began < 8
    daemon.start()
    process = daemon.wait_process(pid)
    assert [s["status"] for s in step_records(process, "nap")] == ["success"]
    assert daemon.step_runs(pid, "nap") == 2  # interrupted, then run again after the restart


def test_a_step_stuck_in_a_thread_does_not_keep_the_daemon_alive(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory({"grace_period": "300ms"})
    pid = daemon.start_process("slow_sync", {"seconds": 60})
    daemon.wait_step_started(pid, "sync nap")
    began = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - began < 8
    daemon.start()
    process = daemon.wait_process(pid)
    assert [s["status"] for s in step_records(process, "sync nap")] == ["success"]


def test_a_second_sigterm_skips_the_grace_period(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"grace_period": "60s"})
    pid = daemon.start_process("slow", {"seconds": 60})
    daemon.wait_step_started(pid, "nap")
    began = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    daemon.wait_for_log("stopping signal=SIGTERM")
    assert daemon.stop(signal.SIGINT) == 0
    assert time.monotonic() - began < 10
    daemon.start()
    process = daemon.wait_process(pid)
    assert [s["status"] for s in step_records(process, "nap")] == ["success"]


def test_sigkill_mid_step_then_restart_runs_the_step_again_once(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory()
    pid = daemon.start_process("slow", {"seconds": 60})
    daemon.wait_step_started(pid, "nap")
    daemon.kill()
    assert os.path.exists(daemon.socket)  # left behind: the restart must replace it
    daemon.start()
    assert "removing stale socket" in daemon.last_run_stderr()
    process = daemon.wait_process(pid)
    assert [s["status"] for s in step_records(process, "nap")] == ["success"]
    assert [s["status"] for s in step_records(process, "after nap")] == ["success"]
    assert daemon.step_runs(pid, "nap") == 2
    assert process["state"]["awake"] is True


# -- sockets ----------------------------------------------------------------------------------


def test_a_second_daemon_on_the_same_socket_refuses_to_start(
    daemon_factory: DaemonFactory,
) -> None:
    first = daemon_factory()
    # Its own database, the first one's socket: the socket check refuses it.
    second = daemon_factory({"socket": first.socket}, name="e", start=False)
    assert second.run_to_exit() == 2
    line = only_line(second)
    assert line.startswith("orchd: ") and "socket" in line and "already listening" in line
    status, _ = first.request("GET", "/api/health")
    assert status == 200


def test_a_stale_socket_file_is_replaced(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(start=False)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(daemon.socket)
    stale.close()  # the file stays, nobody listens
    daemon.start()
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o660
    assert "removing stale socket" in daemon.last_run_stderr()


def test_a_file_in_the_sockets_place_is_a_config_error(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(start=False)
    Path(daemon.socket).write_text("not a socket")
    assert daemon.run_to_exit() == 2
    assert "socket" in only_line(daemon) and "not a socket" in only_line(daemon)


def test_tcp_listener_needs_the_token_except_for_health(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    token_file.chmod(0o600)  # a group/world-readable token file is refused
    port = free_port()
    daemon = daemon_factory({"listen": f"127.0.0.1:{port}", "token_file": str(token_file)})
    assert tcp_request("127.0.0.1", port, "GET", "/api/health")[0] == 200
    assert tcp_request("127.0.0.1", port, "GET", "/api/processes")[0] == 401
    wrong = {"Authorization": "Bearer nope"}
    assert tcp_request("127.0.0.1", port, "GET", "/api/processes", headers=wrong)[0] == 401
    right = {"Authorization": "Bearer s3cret-token"}
    assert tcp_request("127.0.0.1", port, "GET", "/api/processes", headers=right)[0] == 200
    # The Unix socket asks for no token.
    assert daemon.request("GET", "/api/processes")[0] == 200
    assert "s3cret-token" not in daemon.stderr


def test_garbage_bytes_get_400_or_a_closed_connection(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(daemon.socket)
        sock.sendall(b"\x00\xff\x16\x03\x01 garbage \xfe\r\n\r\n")
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer == b"" or re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:80]
    assert daemon.running
    assert daemon.request("GET", "/api/health")[0] == 200


# -- reload -----------------------------------------------------------------------------------


def test_sighup_reloads_log_level_and_schedules(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"log_level": "info"})
    daemon.write_config(
        {"log_level": "debug", "max_body": 4096},
        raw='[[schedules]]\nworkflow = "nightly"\nevery = "1h"\n',
    )
    daemon.send_signal(signal.SIGHUP)
    err = daemon.wait_for_log("reload: ")
    line = next(line for line in err.splitlines() if "reload: " in line)
    assert "log_level info -> debug" in line
    assert "schedules: added nightly" in line
    assert "restart needed for: max_body" in line
    # The new level applies, to workflow code's loggers too.
    pid = daemon.start_process("quick")
    daemon.wait_for_log(f'level=debug logger=daemon_flows msg="saying hello" process={pid}')


def test_a_broken_config_on_sighup_keeps_the_daemon_running(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory()
    daemon.write_config(raw="bogus_key = 1\n")
    daemon.send_signal(signal.SIGHUP)
    err = daemon.wait_for_log("reload failed")
    failed = next(line for line in err.splitlines() if "reload failed" in line)
    assert "level=error" in failed and str(daemon.config_path) in failed and "bogus_key" in failed
    assert daemon.running
    assert daemon.request("GET", "/api/health")[0] == 200
    pid = daemon.start_process("quick")
    daemon.wait_process(pid)


# -- config errors ----------------------------------------------------------------------------


CONFIG_ERRORS = {
    "unknown key": ({}, "surprise = 1\n", "surprise"),
    "wrong type": ({"max_body": "big"}, None, "max_body"),
    "missing workflow module": ({"workflows": ["no_such_workflows_here"]}, None, "workflows"),
    "scheduled non-SYSTEM workflow": (
        {},
        '[[schedules]]\nworkflow = "create_thing"\nevery = "5m"\n',
        "schedules[0].workflow",
    ),
    "scheduled unknown workflow": (
        {},
        '[[schedules]]\nworkflow = "no_such_task"\nevery = "5m"\n',
        "schedules[0].workflow",
    ),
    "database directory unusable": ({"database": "{tmp}/a-file/orchd.db"}, None, "database"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_errors_exit_2_with_one_line(
    daemon_factory: DaemonFactory, tmp_path: Path, case: str
) -> None:
    config, raw, key = CONFIG_ERRORS[case]
    (tmp_path / "a-file").write_text("")
    config = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in config.items()}
    daemon = daemon_factory(config, start=False, raw_config=raw)
    assert daemon.run_to_exit() == 2
    line = only_line(daemon)
    assert line.startswith(f"orchd: {daemon.config_path}: "), line
    assert key in line
    assert not os.path.exists(daemon.socket)
    assert not os.path.exists(daemon.db)


# -- systemd ----------------------------------------------------------------------------------


class NotifyListener:
    """The datagram socket systemd would read sd_notify messages from."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.seen: list[str] = []

    def expect(self, field: str, timeout: float = 10.0) -> list[str]:
        """Read messages until one has the line ``field``; return the messages read."""
        deadline = time.monotonic() + timeout
        read: list[str] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {field} in {self.seen}")
            self.sock.settimeout(left)
            message = self.sock.recv(4096).decode()
            self.seen.append(message)
            read.append(message)
            if field in message.splitlines():
                return read

    def close(self) -> None:
        self.sock.close()


def test_sd_notify_ready_after_health_reloading_and_stopping(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        env = {"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "400000"}
        daemon = daemon_factory(start=False, env=env)
        daemon.spawn()
        messages = listener.expect("READY=1")
        assert any(line.startswith("STATUS=") for line in messages[-1].splitlines())
        # READY=1 means every listener is bound: health answers at once, without polling.
        assert daemon.request("GET", "/api/health")[0] == 200
        listener.expect("WATCHDOG=1", timeout=5)
        daemon.send_signal(signal.SIGHUP)
        listener.expect("RELOADING=1")
        listener.expect("READY=1")
        daemon.send_signal(signal.SIGTERM)
        listener.expect("STOPPING=1")
        assert daemon.wait() == 0
    finally:
        listener.close()


def test_journald_style_logs_when_stderr_is_the_journal(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(start=False)
    st = os.stat(daemon.stderr_path)
    daemon.extra_env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    daemon.start()
    assert daemon.stop() == 0
    lines = daemon.last_run_stderr().splitlines()
    assert "<6>level=info logger=orchd.daemon msg=ready listening=unix:" in "\n".join(lines)
    assert all(re.match(r"<[0-7]>\S+ ", line) for line in lines), lines


# -- during shutdown --------------------------------------------------------------------------


def test_new_processes_get_503_while_shutting_down(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"grace_period": "60s"})
    pid = daemon.start_process("slow", {"seconds": 60})
    daemon.wait_step_started(pid, "nap")
    conn = UnixHTTPConnection(daemon.socket)
    try:
        # An open keep-alive connection outlives the listener, which stops taking new ones.
        conn.request("GET", "/api/health")
        assert conn.getresponse().read()
        daemon.send_signal(signal.SIGTERM)

        def refusing() -> bool:
            conn.request("GET", "/api/health")
            return json.loads(conn.getresponse().read())["accepting"] is False

        block_until(refusing, "the daemon no longer accepting")
        conn.request(
            "POST", "/api/processes/quick", body=b"{}", headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        problem = json.loads(response.read())
        assert response.status == 503 and problem["type"].endswith("shutting-down"), problem
        with pytest.raises(OSError):
            daemon.request("GET", "/api/health", timeout=2)
    finally:
        conn.close()
    assert daemon.stop() == 0  # the second signal: no need to wait out the grace period


def test_an_open_event_stream_does_not_hold_up_the_stop(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(daemon.socket)
        sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: orchd\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        began = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - began < 4


# -- socket activation ------------------------------------------------------------------------


def test_socket_activation_serves_on_the_passed_socket(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(start=False)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(daemon.socket)
    listener.listen()
    fd = listener.fileno()
    # As systemd does: the socket is fd 3 and $LISTEN_PID is the daemon's own pid.
    exec_as_systemd = (
        "import os, sys\n"
        f"os.dup2({fd}, 3)\n"
        f"os.close({fd})\n"
        "os.environ['LISTEN_PID'] = str(os.getpid())\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n"
    )
    env = {**daemon.environment(), "LISTEN_FDS": "1"}
    with daemon.stderr_path.open("ab") as err:
        daemon.proc = subprocess.Popen(
            [sys.executable, "-c", exec_as_systemd, *daemon.command()],
            cwd=daemon.dir,
            env=env,
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    daemon.runs = 1
    listener.close()
    try:
        daemon.wait_healthy()
        assert 'msg="socket activation" sockets=1' in daemon.last_run_stderr()
        assert daemon.stop() == 0
        assert os.path.exists(daemon.socket)  # systemd's socket: not ours to remove
    finally:
        daemon.kill()


# -- log formats (in-process) -----------------------------------------------------------------


def _record(level: int, message: str, exc: BaseException | None = None) -> logging.LogRecord:
    info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logging.LogRecord("orchd.engine", level, __file__, 1, message, (), info)
    record.created, record.msecs = 1795003200.123, 123.0  # 2026-11-18T12:00:00.123Z
    return record


def test_text_log_lines_carry_a_utc_timestamp_and_the_level() -> None:
    line = logs.TextFormatter().format(_record(logging.INFO, "recovered 3 process=x"))
    assert line == "2026-11-18T12:00:00.123Z INFO orchd.engine recovered 3 process=x"


def test_journald_lines_carry_a_priority_prefix_on_every_line() -> None:
    formatter = logs.JournaldFormatter()
    assert formatter.format(_record(logging.DEBUG, "d")) == "<7>orchd.engine d"
    assert formatter.format(_record(logging.WARNING, "w")) == "<4>orchd.engine w"
    try:
        raise ValueError("boom")
    except ValueError as exc:
        text = formatter.format(_record(logging.ERROR, "crashed", exc))
    lines = text.splitlines()
    assert lines[0] == "<3>orchd.engine crashed" and lines[-1] == "<3>ValueError: boom"
    assert all(line.startswith("<3>") for line in lines)


def test_json_logs_are_one_object_a_line(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"log_format": "json"})
    assert daemon.stop() == 0
    lines = daemon.last_run_stderr().splitlines()
    records = [json.loads(line) for line in lines]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any(r["logger"] == "orchd.daemon" and r["msg"] == "stopped" for r in records)


def test_a_logfmt_record_keeps_a_traceback_and_odd_characters_inside_one_line() -> None:
    try:
        raise RuntimeError('bad "quote"\nsecond line')
    except RuntimeError:
        info = sys.exc_info()
    record = logging.LogRecord(
        "orchd.engine", logging.ERROR, __file__, 1, "step=%s failed", ("a b=c\x1b",), info
    )
    line = logs.LogfmtFormatter().format(record)
    assert "\n" not in line
    fields = parse_logfmt(line)
    assert fields["level"] == "error" and fields["msg"] == "failed"
    assert fields["step"] == "a b=c\x1b"
    assert 'RuntimeError: bad "quote"\nsecond line' in fields["exc"]
