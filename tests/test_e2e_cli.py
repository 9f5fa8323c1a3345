"""Acceptance tests of the ``orchd`` command line (README "The CLI") against a real daemon.

One ``orchd serve`` subprocess runs the workflows of tests/wf/e2e_flows.py for the whole
module; every test runs the installed ``orchd`` script as a subprocess with ``--socket`` and
checks its output and exit status. Where the CLI must print what the API says, the test asks
the API itself (raw HTTP on the socket) for the reference.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.common import block_until
from support.daemons import ORCHD, DaemonProcess, running_daemon

CONFIG = {"workflows": ["e2e_flows"], "retry_delay": "200ms", "grace_period": "1s"}
SCHEDULES = '[[schedules]]\nworkflow = "e2e_tick"\nevery = "1h"\n'
WAIT = 15.0
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FINAL = {"suspended", "waiting", "awaiting_callback", "failed", "aborted", "completed"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("e2e-cli"), CONFIG, raw_config=SCHEDULES) as d:
        yield d


def only_uuid(text: str) -> str:
    found = UUID_RE.findall(text)
    assert len(found) == 1, text
    return str(found[0])


# -- orchd workflows --------------------------------------------------------------------------


def test_workflows_prints_a_table_of_names_targets_and_descriptions(daemon: DaemonProcess) -> None:
    out = daemon.cli_ok("workflows")
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for name, target, description in [
        ("e2e_hello", "SYSTEM", "Say hello"),
        ("e2e_create", "CREATE", "Create a widget"),
        ("e2e_modify", "MODIFY", "Modify a widget"),
        ("e2e_terminate", "TERMINATE", "Terminate a widget"),
    ]:
        assert name in lines, out
        assert target in lines[name] and description in lines[name], lines[name]
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_workflows_json_is_the_api_list(daemon: DaemonProcess) -> None:
    status, expected = daemon.request("GET", "/api/workflows")
    assert status == 200
    assert json.loads(daemon.cli_ok("workflows", "--json")) == expected


# -- orchd start ------------------------------------------------------------------------------


def test_start_prints_the_new_process_id(daemon: DaemonProcess) -> None:
    pid = only_uuid(daemon.cli_ok("start", "e2e_hello"))
    assert daemon.wait_process(pid, ("completed",), timeout=WAIT)["workflow"] == "e2e_hello"


def test_start_input_inline_json(daemon: DaemonProcess) -> None:
    body = json.dumps({"name": "inline", "customer_id": "cust-cli"})
    pid = only_uuid(daemon.cli_ok("start", "e2e_create", "--input", body))
    state = daemon.wait_process(pid, ("completed",), timeout=WAIT)["state"]
    assert state["name"] == "inline" and state["customer_id"] == "cust-cli"


def test_start_input_from_a_file(daemon: DaemonProcess, tmp_path: Path) -> None:
    path = tmp_path / "input.json"
    path.write_text(json.dumps({"name": "from-file", "customer_id": "cust-cli"}))
    pid = only_uuid(daemon.cli_ok("start", "e2e_create", "--input", f"@{path}"))
    assert daemon.wait_process(pid, ("completed",), timeout=WAIT)["state"]["name"] == "from-file"


def test_start_wait_exits_0_when_the_process_completed(daemon: DaemonProcess) -> None:
    done = daemon.cli("start", "e2e_hello", "--wait")
    assert done.returncode == 0, (done.stdout, done.stderr)
    pid = UUID_RE.findall(done.stdout)[0]
    assert daemon.get_process(pid)["status"] == "completed"
    assert "completed" in done.stdout


def test_start_wait_json_prints_the_process_object_as_the_api_does(daemon: DaemonProcess) -> None:
    done = daemon.cli("start", "e2e_hello", "--wait", "--json")
    assert done.returncode == 0, (done.stdout, done.stderr)
    printed = json.loads(done.stdout)
    assert printed["status"] == "completed"
    assert printed == daemon.get_process(printed["id"])


# `waiting` and `awaiting_callback` are waited through: tests/test_cli_wait.py.
@pytest.mark.parametrize(("workflow", "status"), [("e2e_fail", "failed"), ("e2e_ask", "suspended")])
def test_start_wait_exits_4_when_the_process_did_not_complete(
    daemon: DaemonProcess, workflow: str, status: str
) -> None:
    done = daemon.cli("start", workflow, "--wait", "--json", timeout=WAIT)
    assert done.returncode == 4, (done.returncode, done.stdout, done.stderr)
    printed = json.loads(done.stdout)
    assert printed["status"] == status
    assert printed == daemon.get_process(printed["id"])


def test_start_wait_exits_4_when_the_process_is_aborted(daemon: DaemonProcess) -> None:
    with daemon.spawn_cli("start", "e2e_hold", "--wait", "--json") as waiter:

        def running() -> str | None:
            assert waiter.poll() is None, "the waiter exited"
            _, page = daemon.request("GET", "/api/processes?workflow=e2e_hold&status=running")
            mine = [p["id"] for p in page["items"]]
            return mine[0] if mine else None

        pid = block_until(running, "the held process running", within=WAIT)
        assert daemon.request("POST", f"/api/processes/{pid}/abort")[0] == 202
        daemon.release(pid)
        out, err = waiter.communicate(timeout=WAIT)
    assert waiter.returncode == 4, (out, err)
    printed = json.loads(out)
    assert printed["id"] == pid and printed["status"] == "aborted"
    assert printed == daemon.get_process(pid)


def test_start_wait_human_output_names_the_status_on_exit_4(daemon: DaemonProcess) -> None:
    done = daemon.cli("start", "e2e_fail", "--wait")
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "failed" in done.stdout and "kaput" in done.stdout


def test_start_of_an_unknown_workflow_exits_1_with_the_detail(daemon: DaemonProcess) -> None:
    status, problem = daemon.request("POST", "/api/processes/no_such_workflow", {})
    assert status == 404
    done = daemon.cli("start", "no_such_workflow")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert problem["detail"] in done.stderr
    assert done.stdout == ""


def test_start_with_an_invalid_form_exits_1_with_the_detail(daemon: DaemonProcess) -> None:
    body = {"name": "only a name"}
    status, problem = daemon.request("POST", "/api/processes/e2e_create", body)
    assert status == 422
    done = daemon.cli("start", "e2e_create", "--input", json.dumps(body))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert problem["detail"] in done.stderr
    assert "customer_id" in done.stderr


# -- orchd ps -----------------------------------------------------------------------------------


def test_ps_lists_processes_newest_first(daemon: DaemonProcess) -> None:
    first = daemon.start_process("e2e_hello")
    daemon.wait_process(first, ("completed",), timeout=WAIT)
    second = daemon.start_process("e2e_hello")
    daemon.wait_process(second, ("completed",), timeout=WAIT)
    out = daemon.cli_ok("ps")
    assert first in out and second in out
    assert out.index(second) < out.index(first)
    row = next(line for line in out.splitlines() if first in line)
    assert "e2e_hello" in row and "completed" in row


def test_ps_status_filters(daemon: DaemonProcess) -> None:
    failed = daemon.start_process("e2e_fail")
    daemon.wait_process(failed, ("failed",), timeout=WAIT)
    done = daemon.start_process("e2e_hello")
    daemon.wait_process(done, ("completed",), timeout=WAIT)
    out = daemon.cli_ok("ps", "--status", "failed")
    assert failed in out and done not in out
    rows = [line for line in out.splitlines() if UUID_RE.search(line)]
    assert rows and all("failed" in row for row in rows)


def test_ps_json_is_a_page_of_the_api(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_fail")
    daemon.wait_process(pid, ("failed",), timeout=WAIT)
    page = json.loads(daemon.cli_ok("ps", "--status", "failed", "--json"))
    assert set(page) >= {"items", "next_cursor"}
    assert all(item["status"] == "failed" for item in page["items"])
    assert pid in {item["id"] for item in page["items"]}


# -- orchd show -------------------------------------------------------------------------------


def test_show_prints_the_step_log_with_durations(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_hello")
    daemon.wait_process(pid, ("completed",), timeout=WAIT)
    out = daemon.cli_ok("show", pid)
    assert pid in out and "e2e_hello" in out and "completed" in out
    for name in ("init", "greet", "done"):
        row = next((line for line in out.splitlines() if line.split()[:1] == [name]), None)
        assert row is not None, (name, out)
        assert "success" in row
        assert re.search(r"\d+(\.\d+)?\s*(ms|s|µs|us)\b", row), f"no duration in {row!r}"
    lines = out.splitlines()
    order = [
        next(i for i, line in enumerate(lines) if line.startswith(n))
        for n in ("init", "greet", "done")
    ]
    assert order == sorted(order)


def test_show_prints_the_error_of_a_failed_step(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_fail")
    daemon.wait_process(pid, ("failed",), timeout=WAIT)
    out = daemon.cli_ok("show", pid)
    row = next(line for line in out.splitlines() if line.startswith("explode"))
    assert "failed" in row and "kaput" in row


def test_show_json_is_the_process_object(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_fail")
    daemon.wait_process(pid, ("failed",), timeout=WAIT)
    assert json.loads(daemon.cli_ok("show", pid, "--json")) == daemon.get_process(pid)


def test_show_of_an_unknown_process_exits_1(daemon: DaemonProcess) -> None:
    missing = str(uuid.uuid4())
    status, problem = daemon.request("GET", f"/api/processes/{missing}")
    assert status == 404
    done = daemon.cli("show", missing)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert problem["detail"] in done.stderr


# -- orchd resume, retry, abort ---------------------------------------------------------------


def test_resume_answers_the_form_and_the_process_goes_on(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_ask")
    daemon.wait_process(pid, ("suspended",), timeout=WAIT)
    daemon.cli_ok("resume", pid, "--input", '{"count": 4}')
    assert daemon.wait_process(pid, ("completed",), timeout=WAIT)["state"]["doubled"] == 8


def test_resume_input_from_a_file(daemon: DaemonProcess, tmp_path: Path) -> None:
    pid = daemon.start_process("e2e_ask")
    daemon.wait_process(pid, ("suspended",), timeout=WAIT)
    path = tmp_path / "answer.json"
    path.write_text('{"count": 5}')
    daemon.cli_ok("resume", pid, "--input", f"@{path}")
    assert daemon.wait_process(pid, ("completed",), timeout=WAIT)["state"]["doubled"] == 10


def test_resume_with_a_bad_answer_exits_1_and_the_process_stays_suspended(
    daemon: DaemonProcess,
) -> None:
    pid = daemon.start_process("e2e_ask")
    before = daemon.wait_process(pid, ("suspended",), timeout=WAIT)
    done = daemon.cli("resume", pid, "--input", '{"count": "lots"}')
    assert done.returncode == 1, (done.stdout, done.stderr)
    status, problem = daemon.request("POST", f"/api/processes/{pid}/resume", {"count": "lots"})
    assert status == 422
    assert problem["detail"] in done.stderr
    assert "count" in done.stderr
    assert daemon.get_process(pid) == before


def test_resume_of_a_completed_process_exits_1(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_hello")
    before = daemon.wait_process(pid, ("completed",), timeout=WAIT)
    done = daemon.cli("resume", pid, "--input", '{"count": 1}')
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.strip()
    assert daemon.get_process(pid) == before


def test_retry_reruns_the_failed_step(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_flaky")
    daemon.wait_process(pid, ("failed",), timeout=WAIT)
    daemon.cli_ok("retry", pid)
    proc = daemon.wait_process(pid, ("completed",), timeout=WAIT)
    flaky = [s["status"] for s in proc["steps"] if s["name"] == "flaky"]
    assert flaky == ["failed", "success"]


def test_retry_of_a_completed_process_exits_1_with_the_detail(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_hello")
    before = daemon.wait_process(pid, ("completed",), timeout=WAIT)
    done = daemon.cli("retry", pid)
    assert done.returncode == 1, (done.stdout, done.stderr)
    status, problem = daemon.request("POST", f"/api/processes/{pid}/retry")
    assert status == 409
    assert problem["detail"] in done.stderr
    assert daemon.get_process(pid) == before


def test_abort_ends_the_process_aborted(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_ask")
    daemon.wait_process(pid, ("suspended",), timeout=WAIT)
    daemon.cli_ok("abort", pid)
    daemon.wait_process(pid, ("aborted",), timeout=WAIT)


def test_abort_of_a_completed_process_exits_1(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_hello")
    before = daemon.wait_process(pid, ("completed",), timeout=WAIT)
    done = daemon.cli("abort", pid)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.strip()
    assert daemon.get_process(pid) == before


def test_abort_of_an_unknown_process_exits_1(daemon: DaemonProcess) -> None:
    done = daemon.cli("abort", str(uuid.uuid4()))
    assert done.returncode == 1, (done.stdout, done.stderr)


# -- orchd subscriptions, schedules -----------------------------------------------------------


def test_subscriptions_lists_them(daemon: DaemonProcess) -> None:
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    pid = daemon.start_process("e2e_create", {"name": "listed", "customer_id": customer})
    sid = daemon.wait_process(pid, ("completed",), timeout=WAIT)["state"]["subscription_id"]
    out = daemon.cli_ok("subscriptions")
    row = next((line for line in out.splitlines() if sid in line), None)
    assert row is not None, out
    assert "e2e-widget" in row and customer in row and "active" in row


def test_subscriptions_json_is_a_page_of_the_api(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_create", {"name": "json", "customer_id": "cust-json"})
    sid = daemon.wait_process(pid, ("completed",), timeout=WAIT)["state"]["subscription_id"]
    page = json.loads(daemon.cli_ok("subscriptions", "--json"))
    assert set(page) >= {"items", "next_cursor"}
    item = next(s for s in page["items"] if s["id"] == sid)
    status, detail = daemon.request("GET", f"/api/subscriptions/{sid}")
    assert status == 200
    # The detail adds what the list leaves out (processes, relations, workflows, actions).
    assert item == {k: detail[k] for k in item}
    assert set(detail) - set(item) == {
        "processes",
        "depends_on",
        "in_use_by",
        "workflows",
        "actions",
    }


def test_schedules_lists_the_configured_entry(daemon: DaemonProcess) -> None:
    out = daemon.cli_ok("schedules")
    assert "e2e_tick" in out
    entries = json.loads(daemon.cli_ok("schedules", "--json"))
    status, expected = daemon.request("GET", "/api/schedules")
    assert status == 200
    items = entries["items"] if isinstance(entries, dict) else entries
    assert [e["workflow"] for e in items] == ["e2e_tick"]
    assert items[0]["next_run"]
    expected_items = expected["items"] if isinstance(expected, dict) else expected
    assert [e["workflow"] for e in expected_items] == ["e2e_tick"]


# -- options, exit statuses -------------------------------------------------------------------


def test_json_before_and_after_the_subcommand(daemon: DaemonProcess) -> None:
    before = json.loads(daemon.cli_ok("--json", "workflows"))
    after = json.loads(daemon.cli_ok("workflows", "--json"))
    assert before == after
    assert isinstance(json.loads(daemon.cli_ok("--json", "ps")), dict)
    assert isinstance(json.loads(daemon.cli_ok("ps", "--json")), dict)


def test_socket_before_and_after_the_subcommand(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_hello")
    daemon.wait_process(pid, ("completed",), timeout=WAIT)
    before = daemon.cli("--socket", daemon.socket, "show", pid, "--json", socket="")
    after = daemon.cli("show", pid, "--json", "--socket", daemon.socket, socket="")
    assert before.returncode == 0 and after.returncode == 0, (before.stderr, after.stderr)
    assert json.loads(before.stdout) == json.loads(after.stdout)
    # After the subcommand it wins over one before it.
    bogus = str(daemon.cwd / "nobody-here.sock")
    last = daemon.cli("--socket", bogus, "ps", "--socket", daemon.socket, socket="")
    assert last.returncode == 0, last.stderr


def test_the_socket_defaults_to_the_config_s(daemon: DaemonProcess) -> None:
    config = str(daemon.config_path)
    done = daemon.cli("--config", config, "workflows", "--json", socket="")
    assert done.returncode == 0, done.stderr
    assert "e2e_hello" in {w["name"] for w in json.loads(done.stdout)}
    env_run = subprocess.run(
        [ORCHD, "ps", "--json"],
        cwd=daemon.cwd,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ORCHD_")},
             "ORCHD_CONFIG": config},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )  # fmt: skip
    assert env_run.returncode == 0, env_run.stderr


def test_a_stale_socket_file_exits_3(daemon: DaemonProcess) -> None:
    stale = str(daemon.cwd / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(stale)  # bound, never listening, then closed: connections are refused
    try:
        done = daemon.cli("ps", socket=stale)
        assert done.returncode == 3, (done.stdout, done.stderr)
        assert done.stderr.strip()
    finally:
        os.unlink(stale)


def test_an_input_over_the_default_max_body_exits_1(daemon: DaemonProcess, tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"name": "x" * (1 << 20), "customer_id": "c"}))
    done = daemon.cli("start", "e2e_create", "--input", f"@{path}")
    assert done.returncode == 1, (done.returncode, done.stderr[:500])
    assert "413" in done.stderr or "large" in done.stderr.lower(), done.stderr[:500]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["no-such-command"],
        ["show"],
        ["start"],
        ["resume", "3f2b8c1e-6c1a-4d2e-9d7e-2f1f0c9a1b11"],
        ["ps", "--no-such-option"],
        ["start", "e2e_hello", "--input"],
        ["start", "e2e_hello", "--input", "{not json"],
    ],
    ids=[
        "no command",
        "unknown command",
        "show without id",
        "start without workflow",
        "resume without input",
        "unknown option",
        "option without value",
        "input that is not JSON",
    ],
)
def test_usage_errors_exit_2(daemon: DaemonProcess, argv: list[str]) -> None:
    done = daemon.cli(*argv)
    assert done.returncode == 2, (argv, done.returncode, done.stdout, done.stderr)
    assert done.stderr.strip()


def test_an_unreadable_input_file_is_a_usage_error(daemon: DaemonProcess, tmp_path: Path) -> None:
    count = len(json.loads(daemon.cli_ok("ps", "--json", "--limit", "500"))["items"])
    done = daemon.cli("start", "e2e_hello", "--input", f"@{tmp_path / 'missing.json'}")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert len(json.loads(daemon.cli_ok("ps", "--json", "--limit", "500"))["items"]) == count


@pytest.mark.parametrize(
    "argv",
    [
        ["workflows"],
        ["ps"],
        ["show", "3f2b8c1e-6c1a-4d2e-9d7e-2f1f0c9a1b11"],
        ["start", "e2e_hello", "--wait"],
        ["abort", "3f2b8c1e-6c1a-4d2e-9d7e-2f1f0c9a1b11"],
        ["subscriptions"],
        ["schedules"],
    ],
    ids=lambda argv: argv[0],
)
def test_an_unreachable_daemon_exits_3(daemon: DaemonProcess, argv: list[str]) -> None:
    missing = str(daemon.cwd / "no-daemon-here.sock")
    done = daemon.cli(*argv, socket=missing)
    assert done.returncode == 3, (argv, done.returncode, done.stdout, done.stderr)
    assert done.stderr.strip() and done.stdout == ""


@pytest.mark.parametrize(
    "option",
    [["--socket", "x.sock"], ["--url", "http://127.0.0.1:1"], ["--token-file", "t"], ["--json"]],
)
def test_serve_refuses_a_client_option_with_a_usage_error(
    tmp_path: Path, option: list[str]
) -> None:
    # A config serve would refuse anyway (exit 2): without the check, the test would still end
    # quickly, but with the config's message instead of the option's.
    config = tmp_path / "orchd.toml"
    config.write_text("no_such_key = 1\n")
    for argv in (["serve", *option], [*option, "serve"]):
        done = subprocess.run(
            [ORCHD, *argv, "--config", str(config)],
            capture_output=True, text=True, cwd=tmp_path, timeout=30,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert f"serve takes no {option[0]}" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orchd.toml"]
