"""``orchd wait ID`` and ``orchd start --wait`` against a real daemon.

They wait through ``created``, ``running``, ``waiting``, ``awaiting_callback`` and
``awaiting_children`` until the process is ``completed`` (exit 0), ``failed``, ``aborted`` or
``suspended`` (exit 4), or ``--timeout`` passes first (exit 5); a daemon that goes away is exit 3.
The processes of tests/wf/wait_flows.py move on only when the test acts, and a test acts only
once the waiting command follows the process's event stream (the daemon's
``orchd_event_streams`` gauge counts it), so each test sees the waiter wait through the status
it is about.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.common import block_until
from support.daemons import DaemonFactory, DaemonProcess, running_daemon

CONFIG = {"workflows": ["wait_flows"], "grace_period": "1s"}
#: Long enough for a slow, busy machine; only a broken waiter takes it.
WAIT = 30.0
IN_PROGRESS = {"created", "running", "waiting", "awaiting_callback", "awaiting_children"}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("cli-wait"), CONFIG) as d:
        yield d


class Waiters:
    """``orchd --socket S ARGS...`` in the background; whatever a test leaves running is
    killed after it."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def __call__(self, daemon: DaemonProcess, *args: str) -> subprocess.Popen[str]:
        proc = daemon.spawn_cli(*args)
        self.started.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def waiter() -> Iterator[Waiters]:
    waiters = Waiters()
    try:
        yield waiters
    finally:
        waiters.close()


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """The waiter's exit status and output, once it exits by itself."""
    try:
        out, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the waiter did not exit:\n{out}\n{err}") from None
    return proc.returncode, out, err


def await_streams(daemon: DaemonProcess, count: int, proc: subprocess.Popen[str] | None) -> None:
    """Until ``count`` event streams are open; fails at once when ``proc`` exits first."""

    def reached() -> bool:
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the waiter exited {proc.returncode} early:\n{out}\n{err}")
        return daemon.metric("orchd_event_streams") == count

    block_until(reached, f"{count} event streams open", within=WAIT)


def start_waiting(waiter: Waiters, d: DaemonProcess, *args: str) -> subprocess.Popen[str]:
    """A waiter started once no other stream is open, returned once its stream is open."""
    await_streams(d, 0, None)  # the streams of earlier tests' waiters have closed
    proc = waiter(d, *args)
    await_streams(d, 1, proc)
    return proc


def accepted(d: DaemonProcess, path: str, body: Any = None) -> None:
    status, answer = d.request("POST", path, body if body is not None else {})
    assert status == 202, (path, status, answer)


# -- waiting through what a process does by itself --------------------------------------------


def test_start_wait_waits_through_waiting_and_a_callback_until_completed(
    daemon: DaemonProcess, waiter: Waiters
) -> None:
    key = uuid.uuid4().hex
    proc = start_waiting(waiter, daemon, "start", "wait_through", "--wait", "--json", "--key", key)
    # The waiter started the process; a start with the same idempotency key names it.
    pid = keyed_start(daemon, "wait_through", key)
    daemon.wait_process(pid, ("waiting",), timeout=WAIT)
    accepted(daemon, f"/api/processes/{pid}/retry")
    daemon.wait_process(pid, ("awaiting_callback",), timeout=WAIT)
    assert proc.poll() is None
    accepted(daemon, f"/api/processes/{pid}/callback", {"answer": 42})
    code, out, err = finish(proc)
    assert code == 0, (out, err)
    printed = json.loads(out)
    assert printed == daemon.get_process(pid)
    assert printed["status"] == "completed" and printed["state"]["answer"] == 42
    statuses = [s["status"] for s in printed["steps"]]
    assert "waiting" in statuses and "awaiting_callback" in statuses


def keyed_start(daemon: DaemonProcess, workflow: str, key: str) -> str:
    headers = {"Idempotency-Key": key}
    status, answer = daemon.request("POST", f"/api/processes/{workflow}", {}, headers=headers)
    assert status == 200, (status, answer)  # 200: the process this key started already
    return str(answer["id"])


def test_wait_takes_a_prefix_and_waits_through_awaiting_children(
    daemon: DaemonProcess, waiter: Waiters
) -> None:
    pid = daemon.start_process("wait_parent")
    daemon.wait_process(pid, ("awaiting_children",), timeout=WAIT)
    status, page = daemon.request("GET", f"/api/processes?parent={pid}")
    assert status == 200, page
    [child] = [item["id"] for item in page["items"]]
    daemon.wait_process(child, ("suspended",), timeout=WAIT)
    proc = start_waiting(waiter, daemon, "wait", pid[:8], "--json")
    accepted(daemon, f"/api/processes/{child}/resume", {"go": True})
    code, out, err = finish(proc)
    assert code == 0, (out, err)
    printed = json.loads(out)
    assert printed["id"] == pid and printed["status"] == "completed"
    assert printed == daemon.get_process(pid)


def test_wait_human_output_shows_the_process(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("wait_quick_child")
    daemon.wait_process(pid, ("completed",), timeout=WAIT)
    done = daemon.cli("wait", pid)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert pid in done.stdout and "completed" in done.stdout and "note" in done.stdout


# -- stopping where a person must act: exit 4 -------------------------------------------------


def failed(daemon: DaemonProcess) -> str:
    return daemon.start_process("wait_broken_sync")


def suspended(daemon: DaemonProcess) -> str:
    return daemon.start_process("wait_asking_child")


def aborted(daemon: DaemonProcess) -> str:
    pid = daemon.start_process("wait_through")
    daemon.wait_process(pid, ("waiting",), timeout=WAIT)
    accepted(daemon, f"/api/processes/{pid}/abort")
    return pid


@pytest.mark.parametrize(
    ("make", "status"),
    [(failed, "failed"), (suspended, "suspended"), (aborted, "aborted")],
    ids=["failed", "suspended", "aborted"],
)
def test_wait_exits_4_where_a_person_must_act(
    daemon: DaemonProcess, make: Any, status: str
) -> None:
    pid = make(daemon)
    daemon.wait_process(pid, (status,), timeout=WAIT)
    done = daemon.cli("wait", pid, "--json")
    assert done.returncode == 4, (done.returncode, done.stdout, done.stderr)
    printed = json.loads(done.stdout)
    assert printed["status"] == status and printed == daemon.get_process(pid)
    human = daemon.cli("wait", pid)
    assert human.returncode == 4 and status in human.stdout


def test_wait_stops_when_the_process_is_aborted_while_it_waits(
    daemon: DaemonProcess, waiter: Waiters
) -> None:
    pid = daemon.start_process("wait_through")
    daemon.wait_process(pid, ("waiting",), timeout=WAIT)
    proc = start_waiting(waiter, daemon, "wait", pid, "--json")
    accepted(daemon, f"/api/processes/{pid}/retry")
    daemon.wait_process(pid, ("awaiting_callback",), timeout=WAIT)
    assert proc.poll() is None
    accepted(daemon, f"/api/processes/{pid}/abort")
    code, out, err = finish(proc)
    assert code == 4, (out, err)
    printed = json.loads(out)
    assert printed["status"] == "aborted" and printed == daemon.get_process(pid)


# -- --timeout: exit 5, and the process goes on -----------------------------------------------


def test_wait_timeout_exits_5_and_the_process_goes_on(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("wait_through")
    daemon.wait_process(pid, ("waiting",), timeout=WAIT)
    done = daemon.cli("wait", pid, "--timeout", "0.5", "--json")
    assert done.returncode == 5, (done.returncode, done.stdout, done.stderr)
    printed = json.loads(done.stdout)
    assert printed["status"] == "waiting" and printed == daemon.get_process(pid)
    assert "gave up" in done.stderr and "waiting" in done.stderr
    human = daemon.cli("wait", pid[:8], "--timeout", "0.2")
    assert human.returncode == 5 and pid in human.stdout and "waiting" in human.stdout
    # The process goes on.
    accepted(daemon, f"/api/processes/{pid}/retry")
    daemon.wait_process(pid, ("awaiting_callback",), timeout=WAIT)
    accepted(daemon, f"/api/processes/{pid}/callback", {"answer": 1})
    assert daemon.cli("wait", pid, "--timeout", str(WAIT)).returncode == 0


def test_start_wait_timeout_exits_5(daemon: DaemonProcess) -> None:
    done = daemon.cli("start", "wait_through", "--wait", "--timeout", "0.5", "--json")
    assert done.returncode == 5, (done.returncode, done.stdout, done.stderr)
    printed = json.loads(done.stdout)
    assert printed["status"] in IN_PROGRESS
    assert daemon.get_process(printed["id"])["status"] in IN_PROGRESS
    accepted(daemon, f"/api/processes/{printed['id']}/abort")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_a_timeout_that_is_not_a_positive_number_is_a_usage_error(
    daemon: DaemonProcess, value: str
) -> None:
    pid = daemon.start_process("wait_quick_child")
    done = daemon.cli("wait", pid, "--timeout", value)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "--timeout" in done.stderr


# -- the daemon: unknown ids, a daemon that goes away -----------------------------------------


def test_wait_for_an_unknown_process_exits_1(daemon: DaemonProcess) -> None:
    missing = str(uuid.uuid4())
    status, problem = daemon.request("GET", f"/api/processes/{missing}")
    assert status == 404
    done = daemon.cli("wait", missing)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert problem["detail"] in done.stderr


def test_wait_exits_3_when_the_daemon_goes_away(
    daemon_factory: DaemonFactory, waiter: Waiters
) -> None:
    d = daemon_factory(CONFIG)
    pid = d.start_process("wait_through")
    d.wait_process(pid, ("waiting",))
    proc = waiter(d, "wait", pid)
    await_streams(d, 1, proc)
    assert d.stop() == 0, d.last_run_stderr()
    code, out, err = finish(proc)
    assert code == 3, (code, out, err)
    assert "cannot reach the orchd daemon" in err


def test_wait_of_an_unreachable_daemon_exits_3(daemon: DaemonProcess) -> None:
    done = daemon.cli("wait", str(uuid.uuid4()), socket=str(daemon.cwd / "nobody.sock"))
    assert done.returncode == 3, (done.stdout, done.stderr)


# -- the exit statuses are documented ---------------------------------------------------------


@pytest.mark.parametrize("command", ["wait", "start"])
def test_help_lists_the_exit_statuses(daemon: DaemonProcess, command: str) -> None:
    done = daemon.cli(command, "--help", socket="")
    assert done.returncode == 0, done.stderr
    listed = dict(re.findall(r"^\s+([0-5])\s+(\S.*)$", done.stdout, re.MULTILINE))
    assert sorted(listed) == ["0", "1", "2", "3", "4", "5"], done.stdout
    assert "completed" in listed["0"] and "cannot be reached" in listed["3"]
    assert all(s in listed["4"] for s in ("failed", "aborted", "suspended"))
    assert "--timeout" in listed["5"]


def test_the_readme_documents_wait_and_its_exit_statuses() -> None:
    readme = (ROOT / "README.md").read_text()
    cli = readme.split("\n## The CLI\n", 1)[1].split("\n## ", 1)[0]
    assert "orchd wait ID" in cli
    statuses = cli[cli.index("Exit status:") :]
    assert "5 " in statuses and "timeout" in statuses
