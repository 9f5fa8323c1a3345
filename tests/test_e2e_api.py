"""Acceptance tests of the control API (README "Writing workflows" and "Guarantees" and "The HTTP
API") against a real daemon.

One ``orchd serve`` subprocess runs the workflows of tests/wf/e2e_flows.py for the whole
module; every test talks raw HTTP/1.1 to its Unix socket and knows nothing of orchd's
internals. Tests that need a process of their own start one, so they do not depend on order.
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import pytest
from support.common import block_until
from support.daemons import Answer, DaemonProcess, UnixHTTPConnection, running_daemon

from orchd.client import Event

MAX_BODY = 4096
CONFIG = {
    "workflows": ["e2e_flows"],
    "retry_delay": "200ms",
    "max_body": MAX_BODY,
    "grace_period": "1s",
}
SCHEDULES = '[[schedules]]\nworkflow = "e2e_tick"\nevery = "1h"\n'

PROCESS_STATUSES = {
    "created",
    "running",
    "suspended",
    "waiting",
    "awaiting_callback",
    "failed",
    "aborted",
    "completed",
}
STEP_STATUSES = {
    "success",
    "skipped",
    "suspended",
    "waiting",
    "awaiting_callback",
    "failed",
    "aborted",
}
ACTIVE = {"created", "running"}
WAIT = 15.0


def ok(daemon: DaemonProcess, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
    answer = daemon.call(method, path, body, timeout=WAIT)
    assert answer.status == expect, (method, path, answer.status, answer.body)
    return answer.json if answer.body.strip() else None


def settle(daemon: DaemonProcess, pid: str) -> dict[str, Any]:
    """The process once it is no longer created or running."""
    return daemon.wait_process(pid, tuple(PROCESS_STATUSES - ACTIVE), timeout=WAIT)


def processes(daemon: DaemonProcess, **query: Any) -> list[dict[str, Any]]:
    """Every process matching ``query``, walking all pages."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = dict(query, **({"cursor": cursor} if cursor else {}))
        page = ok(daemon, "GET", "/api/processes?" + _query(params))
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return items


def _query(params: dict[str, Any]) -> str:
    return urlencode({k: v for k, v in params.items() if v is not None})


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("e2e-api"), CONFIG, raw_config=SCHEDULES) as d:
        yield d


def assert_problem(answer: Answer, status: int) -> dict[str, Any]:
    """The answer is an RFC 9457 problem with ``status``; returns its body."""
    assert answer.status == status, (answer.status, answer.body)
    assert answer.content_type == "application/problem+json", answer.headers
    problem = answer.json
    for key in ("type", "title", "status", "detail"):
        assert key in problem, (key, problem)
    assert problem["status"] == status
    assert isinstance(problem["type"], str) and problem["type"]
    assert isinstance(problem["title"], str) and isinstance(problem["detail"], str)
    return dict(problem)


def assert_validation_problem(answer: Answer, field_name: str) -> dict[str, Any]:
    problem = assert_problem(answer, 422)
    errors = problem.get("errors")
    assert isinstance(errors, list) and errors, problem
    for error in errors:
        assert set(error) >= {"loc", "msg"}, error
        assert isinstance(error["loc"], list) and isinstance(error["msg"], str)
    assert any(field_name in error["loc"] for error in errors), errors
    return problem


def step_names(proc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["name"], s["status"]) for s in proc["steps"]]


# -- The HTTP API: health, workflows, start --------------------------------------------------------


def test_health_answers_200_status_ok(daemon: DaemonProcess) -> None:
    answer = daemon.call("GET", "/api/health")
    assert answer.status == 200
    assert answer.content_type == "application/json"
    assert answer.json["status"] == "ok"


def test_workflows_lists_name_description_target_and_form(daemon: DaemonProcess) -> None:
    answer = daemon.call("GET", "/api/workflows")
    assert answer.status == 200 and answer.content_type == "application/json"
    workflows = {w["name"]: w for w in answer.json}
    for item in workflows.values():
        assert {"name", "description", "target", "form"} <= set(item), item
        assert item["target"] in {"CREATE", "MODIFY", "TERMINATE", "SYSTEM"}
    assert workflows["e2e_hello"]["description"] == "Say hello"
    assert workflows["e2e_hello"]["target"] == "SYSTEM"
    assert workflows["e2e_hello"]["form"] is None
    create = workflows["e2e_create"]
    assert create["target"] == "CREATE"
    assert create["form"]["type"] == "object"
    assert {"name", "customer_id", "hold"} <= set(create["form"]["properties"])
    assert set(create["form"]["required"]) == {"name", "customer_id"}
    assert workflows["e2e_modify"]["target"] == "MODIFY"
    assert workflows["e2e_terminate"]["target"] == "TERMINATE"


def test_start_answers_201_with_the_process_id(daemon: DaemonProcess) -> None:
    answer = daemon.call("POST", "/api/processes/e2e_hello", {})
    assert answer.status == 201 and answer.content_type == "application/json"
    pid = answer.json["id"]
    assert str(uuid.UUID(pid)) == pid
    assert (
        daemon.wait_process(pid, ("completed",), timeout=WAIT)["state"]["greeting"] == "hello world"
    )


def test_start_with_an_empty_body_counts_as_no_input(daemon: DaemonProcess) -> None:
    answer = daemon.call("POST", "/api/processes/e2e_hello", raw=b"")
    assert answer.status == 201, answer.body
    daemon.wait_process(answer.json["id"], ("completed",), timeout=WAIT)


def test_start_of_an_unknown_workflow_is_404(daemon: DaemonProcess) -> None:
    assert_problem(daemon.call("POST", "/api/processes/no_such_workflow", {}), 404)


def test_start_with_an_invalid_form_is_422_and_creates_nothing(daemon: DaemonProcess) -> None:
    before = len(processes(daemon, workflow="e2e_create"))
    answer = daemon.call("POST", "/api/processes/e2e_create", {"name": "w"})
    assert_validation_problem(answer, "customer_id")
    answer = daemon.call("POST", "/api/processes/e2e_create", {"name": "", "customer_id": "c"})
    assert_validation_problem(answer, "name")
    assert len(processes(daemon, workflow="e2e_create")) == before


def test_malformed_json_is_400_and_creates_nothing(daemon: DaemonProcess) -> None:
    before = len(processes(daemon, workflow="e2e_hello"))
    assert_problem(daemon.call("POST", "/api/processes/e2e_hello", raw=b'{"name": '), 400)
    assert len(processes(daemon, workflow="e2e_hello")) == before


def test_a_body_over_max_body_is_413_and_creates_nothing(daemon: DaemonProcess) -> None:
    before = len(processes(daemon, workflow="e2e_create"))
    big = {"name": "w", "customer_id": "c", "padding": "x" * (MAX_BODY + 10)}
    assert_problem(daemon.call("POST", "/api/processes/e2e_create", big), 413)
    assert len(processes(daemon, workflow="e2e_create")) == before
    # The limit is the configured one, not the 1 MiB default: just under it is read.
    small = {"name": "w" * (MAX_BODY - 100), "customer_id": "c"}
    assert daemon.call("POST", "/api/processes/e2e_create", small).status == 201


def test_a_process_id_that_is_not_a_uuid_is_404(daemon: DaemonProcess) -> None:
    assert_problem(daemon.call("GET", "/api/processes/not-a-process"), 404)
    assert_problem(daemon.call("POST", "/api/processes/not-a-process/abort"), 404)


def test_a_chunked_body_over_max_body_is_413_and_creates_nothing(daemon: DaemonProcess) -> None:
    before = len(processes(daemon, workflow="e2e_create"))
    body = json.dumps({"name": "w" * (MAX_BODY * 2), "customer_id": "c"}).encode()
    conn = UnixHTTPConnection(daemon.socket, timeout=WAIT)
    try:
        chunks = (body[i : i + 1000] for i in range(0, len(body), 1000))
        headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        conn.request("POST", "/api/processes/e2e_create", body=chunks, headers=headers,
                     encode_chunked=True)  # fmt: skip
        response = conn.getresponse()
        answer = Answer.of(response)
    finally:
        conn.close()
    assert_problem(answer, 413)
    assert len(processes(daemon, workflow="e2e_create")) == before


def test_one_connection_carries_several_requests(daemon: DaemonProcess) -> None:
    conn = UnixHTTPConnection(daemon.socket, timeout=WAIT)
    try:
        for _ in range(3):
            conn.request("GET", "/api/health")
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    finally:
        conn.close()


# -- The HTTP API: one process, the list -----------------------------------------------------------


def test_a_process_has_the_contract_shape(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_hello")
    answer = daemon.call("GET", f"/api/processes/{pid}")
    assert answer.status == 200 and answer.content_type == "application/json"
    proc = daemon.wait_process(pid, ("completed",), timeout=WAIT)
    assert {"id", "workflow", "status", "state", "steps", "created_at", "updated_at"} <= set(proc)
    assert proc["id"] == pid and proc["workflow"] == "e2e_hello"
    assert step_names(proc) == [("init", "success"), ("greet", "success"), ("done", "success")]
    for record in proc["steps"]:
        assert {"name", "status", "started_at", "finished_at", "error"} <= set(record), record
        assert record["error"] is None
        assert _time(record["started_at"]) <= _time(record["finished_at"])
    starts = [_time(s["started_at"]) for s in proc["steps"]]
    assert starts == sorted(starts), "steps must come oldest first"
    assert _time(proc["created_at"]) <= _time(proc["updated_at"])


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_an_unknown_process_is_404(daemon: DaemonProcess) -> None:
    assert_problem(daemon.call("GET", f"/api/processes/{uuid.uuid4()}"), 404)


def test_process_list_is_newest_first_with_id_workflow_status(daemon: DaemonProcess) -> None:
    first = daemon.start_process("e2e_hello")
    daemon.wait_process(first, ("completed",), timeout=WAIT)
    second = daemon.start_process("e2e_hello")
    daemon.wait_process(second, ("completed",), timeout=WAIT)
    answer = daemon.call("GET", "/api/processes")
    assert answer.status == 200 and answer.content_type == "application/json"
    page = answer.json
    assert set(page) >= {"items", "next_cursor"}
    for item in page["items"]:
        assert {"id", "workflow", "status"} <= set(item), item
        assert item["status"] in PROCESS_STATUSES
    ids = [item["id"] for item in page["items"]]
    assert ids.index(second) < ids.index(first)


def test_process_list_filters_by_workflow_and_status(daemon: DaemonProcess) -> None:
    failed = daemon.start_process("e2e_fail")
    daemon.wait_process(failed, ("failed",), timeout=WAIT)
    done = daemon.start_process("e2e_hello")
    daemon.wait_process(done, ("completed",), timeout=WAIT)
    by_status = processes(daemon, status="failed")
    assert by_status and all(p["status"] == "failed" for p in by_status)
    assert failed in {p["id"] for p in by_status} and done not in {p["id"] for p in by_status}
    by_workflow = processes(daemon, workflow="e2e_fail")
    assert all(p["workflow"] == "e2e_fail" for p in by_workflow)
    assert failed in {p["id"] for p in by_workflow}
    both = processes(daemon, workflow="e2e_hello", status="failed")
    assert both == []


def test_process_list_pages_with_the_cursor_without_gaps_or_duplicates(
    daemon: DaemonProcess,
) -> None:
    started = [daemon.start_process("e2e_tick") for _ in range(8)]
    for pid in started:
        daemon.wait_process(pid, ("completed",), timeout=WAIT)
    everything = ok(daemon, "GET", "/api/processes?workflow=e2e_tick&limit=500")
    assert everything["next_cursor"] is None
    expected = [p["id"] for p in everything["items"]]
    walked: list[str] = []
    pages = 0
    cursor = None
    while True:
        query = "workflow=e2e_tick&limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = ok(daemon, "GET", f"/api/processes?{query}")
        assert len(page["items"]) <= 3
        walked.extend(p["id"] for p in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and pages < 100
    assert pages >= 3
    assert len(walked) == len(set(walked)), "a process appeared on two pages"
    assert walked == expected
    assert set(started) <= set(walked)
    # Newest first across pages: the processes this test started, in reverse.
    assert [pid for pid in walked if pid in started] == started[::-1]


def test_process_list_caps_a_huge_limit_instead_of_refusing(daemon: DaemonProcess) -> None:
    answer = daemon.call("GET", "/api/processes?limit=1000000")
    assert answer.status == 200, answer.body
    assert isinstance(answer.json["items"], list)


# -- Guarantees: and README "The HTTP API" actions: resume, retry, abort, callbacks ----------------


def test_a_suspended_process_shows_its_form(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_ask")
    proc = daemon.wait_process(pid, ("suspended",), timeout=WAIT)
    form = proc["form"]
    assert isinstance(form, dict) and form.get("type") == "object", form
    assert "count" in form["properties"] and "count" in form["required"]
    assert proc["steps"][-1]["name"] == "ask_count"
    assert proc["steps"][-1]["status"] == "suspended"


def test_resume_answers_202_and_the_answer_is_merged_into_state(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_ask")
    daemon.wait_process(pid, ("suspended",), timeout=WAIT)
    answer = daemon.call("POST", f"/api/processes/{pid}/resume", {"count": 21})
    assert answer.status == 202, answer.body
    proc = daemon.wait_process(pid, ("completed",), timeout=WAIT)
    assert proc["state"]["count"] == 21 and proc["state"]["doubled"] == 42


def test_resume_with_an_invalid_answer_is_422_and_changes_nothing(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_ask")
    before = daemon.wait_process(pid, ("suspended",), timeout=WAIT)
    for bad in ({"count": 0}, {"count": "many"}, {}, {"count": 2, "unknown": 1}):
        answer = daemon.call("POST", f"/api/processes/{pid}/resume", bad)
        problem = assert_problem(answer, 422)
        assert problem.get("errors"), (bad, problem)
    assert_validation_problem(daemon.call("POST", f"/api/processes/{pid}/resume", {}), "count")
    assert daemon.get_process(pid) == before


def test_resume_with_malformed_json_is_400_and_changes_nothing(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_ask")
    before = daemon.wait_process(pid, ("suspended",), timeout=WAIT)
    assert_problem(daemon.call("POST", f"/api/processes/{pid}/resume", raw=b"{count: 1}"), 400)
    assert daemon.get_process(pid) == before


def test_resume_of_a_process_that_is_not_suspended_is_409(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_hello")
    before = daemon.wait_process(pid, ("completed",), timeout=WAIT)
    assert_problem(daemon.call("POST", f"/api/processes/{pid}/resume", {"count": 1}), 409)
    assert daemon.get_process(pid) == before


def test_resume_of_an_unknown_process_is_404(daemon: DaemonProcess) -> None:
    answer = daemon.call("POST", f"/api/processes/{uuid.uuid4()}/resume", {"count": 1})
    assert_problem(answer, 404)


def test_a_failed_step_keeps_its_record_and_its_error(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_fail")
    proc = daemon.wait_process(pid, ("failed",), timeout=WAIT)
    assert step_names(proc) == [("init", "success"), ("explode", "failed")]
    assert "kaput" in proc["steps"][-1]["error"]


def test_retry_answers_202_and_adds_a_new_record_to_the_failed_one(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_flaky")
    failed = daemon.wait_process(pid, ("failed",), timeout=WAIT)
    assert step_names(failed)[-1] == ("flaky", "failed")
    assert "first run fails" in failed["steps"][-1]["error"]
    answer = daemon.call("POST", f"/api/processes/{pid}/retry")
    assert answer.status == 202, answer.body
    proc = daemon.wait_process(pid, ("completed",), timeout=WAIT)
    assert step_names(proc) == [
        ("init", "success"),
        ("flaky", "failed"),
        ("flaky", "success"),
        ("done", "success"),
    ]
    assert proc["steps"][1] == failed["steps"][1], "the failed record must be kept as it was"
    assert proc["state"]["flaky_ok"] is True


def test_retry_of_a_completed_process_is_409_and_changes_nothing(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_hello")
    before = daemon.wait_process(pid, ("completed",), timeout=WAIT)
    assert_problem(daemon.call("POST", f"/api/processes/{pid}/retry"), 409)
    assert daemon.get_process(pid) == before


def test_retry_of_an_unknown_process_is_404(daemon: DaemonProcess) -> None:
    assert_problem(daemon.call("POST", f"/api/processes/{uuid.uuid4()}/retry"), 404)


def test_retry_of_a_waiting_process_is_202_and_adds_a_record(daemon: DaemonProcess) -> None:
    pid = _waiting(daemon)
    before = daemon.get_process(pid)
    answer = daemon.call("POST", f"/api/processes/{pid}/retry")
    assert answer.status == 202, answer.body
    proc = block_until(
        lambda: (
            (p := daemon.get_process(pid))["status"] == "waiting"
            and len(p["steps"]) > len(before["steps"])
            and p
        ),
        "the retried step waiting again",
        within=WAIT,
    )
    assert proc["steps"][: len(before["steps"])] == before["steps"]
    assert step_names(proc)[-2:] == [("stuck", "waiting"), ("stuck", "waiting")]


def test_a_resume_over_max_body_is_413_and_changes_nothing(daemon: DaemonProcess) -> None:
    pid = _suspended(daemon)
    before = daemon.get_process(pid)
    body = {"count": 1, "note": "x" * (MAX_BODY + 1)}
    assert_problem(daemon.call("POST", f"/api/processes/{pid}/resume", body), 413)
    assert daemon.get_process(pid) == before


def test_a_malformed_callback_is_400_and_the_process_keeps_waiting(daemon: DaemonProcess) -> None:
    pid = _awaiting_callback(daemon)
    before = daemon.get_process(pid)
    token = before["state"]["sent_token"]
    assert_problem(daemon.call("POST", f"/api/callbacks/{token}", raw=b"{ok: yes"), 400)
    assert daemon.get_process(pid) == before
    assert daemon.call("POST", f"/api/callbacks/{token}", {"ok": True}).status == 202
    daemon.wait_process(pid, ("completed",), timeout=WAIT)


def test_a_retrystep_waits_then_is_retried_automatically_until_completed(
    daemon: DaemonProcess,
) -> None:
    # Every status the process passes through, from its events: a poll could miss the
    # 200 ms of waiting on a busy machine.
    with daemon.events() as stream:
        pid = daemon.start_process("e2e_retry_twice")
        events = stream.until(pid, "completed", timeout=WAIT)
    seen = {_status_of(e) for e in events if e.event == "process" and pid in e.data}
    assert seen <= {"created", "running", "waiting", "completed"}, seen
    assert "waiting" in seen
    proc = daemon.get_process(pid)
    unstable = [s["status"] for s in proc["steps"] if s["name"] == "unstable"]
    assert unstable == ["waiting", "waiting", "success"]
    errors = [s["error"] for s in proc["steps"] if s["name"] == "unstable"]
    assert "not yet" in errors[0] and errors[2] is None
    assert proc["state"]["unstable_ok"] is True


def test_a_waiting_process_says_so(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_stuck")
    proc = daemon.wait_process(pid, ("waiting",), timeout=WAIT)
    assert step_names(proc)[-1] == ("stuck", "waiting")
    assert "far side is down" in proc["steps"][-1]["error"]


def _hold_running(daemon: DaemonProcess) -> str:
    pid = daemon.start_process("e2e_hold")
    daemon.wait_process(pid, ("running",), timeout=WAIT)
    block_until(
        lambda: any(s["name"] == "init" for s in daemon.get_process(pid)["steps"]),
        "the init step committed",
        within=WAIT,
    )
    return pid


def _suspended(daemon: DaemonProcess) -> str:
    pid = daemon.start_process("e2e_ask")
    daemon.wait_process(pid, ("suspended",), timeout=WAIT)
    return pid


def _waiting(daemon: DaemonProcess) -> str:
    pid = daemon.start_process("e2e_stuck")
    daemon.wait_process(pid, ("waiting",), timeout=WAIT)
    return pid


def _awaiting_callback(daemon: DaemonProcess) -> str:
    pid = daemon.start_process("e2e_callback")
    daemon.wait_process(pid, ("awaiting_callback",), timeout=WAIT)
    return pid


def _failed(daemon: DaemonProcess) -> str:
    pid = daemon.start_process("e2e_fail")
    daemon.wait_process(pid, ("failed",), timeout=WAIT)
    return pid


@pytest.mark.parametrize(
    "make",
    [_suspended, _waiting, _awaiting_callback, _failed],
    ids=["suspended", "waiting", "awaiting_callback", "failed"],
)
def test_abort_is_allowed_and_ends_the_process_aborted(daemon: DaemonProcess, make: Any) -> None:
    pid = make(daemon)
    before = daemon.get_process(pid)
    answer = daemon.call("POST", f"/api/processes/{pid}/abort")
    assert answer.status == 202, answer.body
    proc = daemon.wait_process(pid, ("aborted",), timeout=WAIT)
    # It never runs another step: the records before the abort are unchanged.
    assert proc["steps"][: len(before["steps"])] == before["steps"]
    assert all(s["status"] in {"aborted"} for s in proc["steps"][len(before["steps"]) :])
    assert proc["state"].get("doubled") is None and proc["state"].get("answer_ok") is None


def test_abort_of_a_running_process_takes_effect_between_steps(daemon: DaemonProcess) -> None:
    pid = _hold_running(daemon)
    answer = daemon.call("POST", f"/api/processes/{pid}/abort")
    assert answer.status == 202, answer.body
    daemon.release(pid)
    proc = daemon.wait_process(pid, ("aborted",), timeout=WAIT)
    assert "after_hold" not in proc["state"]
    assert ("after_hold", "success") not in step_names(proc)


def test_abort_right_after_the_start_is_allowed(daemon: DaemonProcess) -> None:
    # Created or running: either way the abort is allowed and no later step runs.
    pid = daemon.start_process("e2e_hold")
    answer = daemon.call("POST", f"/api/processes/{pid}/abort")
    assert answer.status == 202, answer.body
    daemon.release(pid)
    proc = daemon.wait_process(pid, ("aborted",), timeout=WAIT)
    assert ("after_hold", "success") not in step_names(proc)


@pytest.mark.parametrize("final", ["completed", "aborted"])
def test_abort_of_a_finished_process_is_409_and_changes_nothing(
    daemon: DaemonProcess, final: str
) -> None:
    if final == "completed":
        pid = daemon.start_process("e2e_hello")
    else:
        pid = _suspended(daemon)
        assert daemon.call("POST", f"/api/processes/{pid}/abort").status == 202
    before = daemon.wait_process(pid, (final,), timeout=WAIT)
    assert_problem(daemon.call("POST", f"/api/processes/{pid}/abort"), 409)
    assert daemon.get_process(pid) == before


def test_abort_of_an_unknown_process_is_404(daemon: DaemonProcess) -> None:
    assert_problem(daemon.call("POST", f"/api/processes/{uuid.uuid4()}/abort"), 404)


def test_callback_answers_202_and_its_json_lands_in_callback_result(daemon: DaemonProcess) -> None:
    pid = _awaiting_callback(daemon)
    token = daemon.get_process(pid)["state"]["sent_token"]
    assert re.fullmatch(r"[A-Za-z0-9_\-.~]+", token), f"token is not URL-safe: {token!r}"
    answer = daemon.call("POST", f"/api/callbacks/{token}", {"ok": True, "ref": 7})
    assert answer.status == 202, answer.body
    proc = daemon.wait_process(pid, ("completed",), timeout=WAIT)
    assert proc["state"]["callback_result"] == {"ok": True, "ref": 7}
    assert proc["state"]["answer_ok"] is True


def test_callback_with_an_unknown_token_is_404(daemon: DaemonProcess) -> None:
    assert_problem(daemon.call("POST", "/api/callbacks/no-such-token-at-all", {"ok": True}), 404)


def test_a_used_callback_token_is_404_and_changes_nothing(daemon: DaemonProcess) -> None:
    # a token answers exactly one wait.
    pid = _awaiting_callback(daemon)
    token = daemon.get_process(pid)["state"]["sent_token"]
    assert daemon.call("POST", f"/api/callbacks/{token}", {"ok": True}).status == 202
    before = daemon.wait_process(pid, ("completed",), timeout=WAIT)
    assert_problem(daemon.call("POST", f"/api/callbacks/{token}", {"ok": False}), 404)
    assert daemon.get_process(pid) == before


def test_the_token_of_an_aborted_wait_is_404(daemon: DaemonProcess) -> None:
    pid = _awaiting_callback(daemon)
    token = daemon.get_process(pid)["state"]["sent_token"]
    assert daemon.call("POST", f"/api/processes/{pid}/abort").status == 202
    before = daemon.wait_process(pid, ("aborted",), timeout=WAIT)
    assert_problem(daemon.call("POST", f"/api/callbacks/{token}", {"ok": True}), 404)
    assert daemon.get_process(pid) == before


def test_an_operator_callback_when_no_longer_awaiting_is_409(daemon: DaemonProcess) -> None:
    pid = _awaiting_callback(daemon)
    assert daemon.call("POST", f"/api/processes/{pid}/callback", {"ok": True}).status == 202
    before = daemon.wait_process(pid, ("completed",), timeout=WAIT)
    assert_problem(daemon.call("POST", f"/api/processes/{pid}/callback", {"ok": True}), 409)
    assert daemon.get_process(pid) == before


# -- Writing workflows: semantics ------------------------------------------------------------------


def test_reserved_state_keys_are_set_by_the_engine(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_hello")
    state = daemon.wait_process(pid, ("completed",), timeout=WAIT)["state"]
    assert state["process_id"] == pid
    assert state["workflow_name"] == "e2e_hello"
    assert state["workflow_target"] == "SYSTEM"
    assert "reporter" in state
    # The step itself saw the same values.
    assert state["seen"] == {k: state[k] for k in state["seen"]}


def test_reserved_state_keys_of_a_create_include_the_subscription_id(daemon: DaemonProcess) -> None:
    pid = daemon.start_process("e2e_create", {"name": "r1", "customer_id": "cust-reserved"})
    state = daemon.wait_process(pid, ("completed",), timeout=WAIT)["state"]
    assert state["workflow_target"] == "CREATE"
    assert str(uuid.UUID(state["subscription_id"])) == state["subscription_id"]
    assert state["subscription"]["id"] == state["subscription_id"]


def test_a_conditional_step_whose_predicate_is_false_is_recorded_skipped(
    daemon: DaemonProcess,
) -> None:
    pid = daemon.start_process("e2e_cond")
    proc = daemon.wait_process(pid, ("completed",), timeout=WAIT)
    assert step_names(proc) == [
        ("init", "success"),
        ("decide", "success"),
        ("maybe", "skipped"),
        ("always", "success"),
        ("done", "success"),
    ]
    assert "maybe_ran" not in proc["state"] and proc["state"]["always_ran"] is True


def test_every_step_status_is_one_of_the_contract(daemon: DaemonProcess) -> None:
    for proc in processes(
        daemon,
    ):
        full = daemon.get_process(proc["id"])
        assert full["status"] in PROCESS_STATUSES
        assert {s["status"] for s in full["steps"]} <= STEP_STATUSES, full["steps"]


# -- Guarantees: subscriptions ---------------------------------------------------------------------


def _create(daemon: DaemonProcess, customer: str, name: str = "w") -> tuple[str, str]:
    pid = daemon.start_process("e2e_create", {"name": name, "customer_id": customer})
    proc = daemon.wait_process(pid, ("completed",), timeout=WAIT)
    return pid, proc["state"]["subscription_id"]


def test_create_makes_a_subscription_insync_only_once_done(daemon: DaemonProcess) -> None:
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    pid = daemon.start_process(
        "e2e_create", {"name": "held", "customer_id": customer, "hold": True}
    )
    sid = block_until(
        lambda: daemon.get_process(pid)["state"].get("subscription_id"),
        f"{pid} has a subscription_id in State",
        within=WAIT,
    )
    while_running = ok(daemon, "GET", f"/api/subscriptions/{sid}")
    assert daemon.get_process(pid)["status"] == "running"
    assert while_running["insync"] is False
    assert while_running["product"] == "e2e-widget" and while_running["customer_id"] == customer
    assert while_running["status"] == "initial"
    daemon.release(pid)
    daemon.wait_process(pid, ("completed",), timeout=WAIT)
    sub = ok(daemon, "GET", f"/api/subscriptions/{sid}")
    fields = {"id", "product", "customer_id", "description", "status", "insync"}
    assert fields | {"start_date", "end_date", "attributes", "processes"} <= set(sub)
    assert sub["id"] == sid and sub["insync"] is True and sub["status"] == "active"
    assert sub["description"] == "widget held" and sub["attributes"] == {"name": "held"}
    assert sub["end_date"] is None
    assert {"id": pid, "workflow": "e2e_create", "status": "completed"} in [
        {k: p[k] for k in ("id", "workflow", "status")} for p in sub["processes"]
    ]


def test_subscription_list_filters_by_customer_product_and_status(daemon: DaemonProcess) -> None:
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    _, first = _create(daemon, customer, "a")
    _, second = _create(daemon, customer, "b")
    answer = daemon.call("GET", f"/api/subscriptions?customer_id={customer}")
    assert answer.status == 200 and answer.content_type == "application/json"
    page = answer.json
    assert set(page) >= {"items", "next_cursor"}
    assert {s["id"] for s in page["items"]} == {first, second}
    for item in page["items"]:
        assert {"id", "product", "customer_id", "status", "insync"} <= set(item)
    both = ok(daemon, "GET", f"/api/subscriptions?customer_id={customer}&product=e2e-widget")
    assert {s["id"] for s in both["items"]} == {first, second}
    other = ok(daemon, "GET", f"/api/subscriptions?customer_id={customer}&product=nothing")
    assert other["items"] == []
    active = ok(daemon, "GET", "/api/subscriptions?status=active&limit=500")
    assert {first, second} <= {s["id"] for s in active["items"]}
    assert all(s["status"] == "active" for s in active["items"])
    terminated = ok(daemon, "GET", f"/api/subscriptions?status=terminated&customer_id={customer}")
    assert terminated["items"] == []


def test_subscription_list_pages_with_the_cursor(daemon: DaemonProcess) -> None:
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    made = {_create(daemon, customer, str(i))[1] for i in range(4)}
    seen: list[str] = []
    cursor = None
    while True:
        query = f"customer_id={customer}&limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = ok(daemon, "GET", f"/api/subscriptions?{query}")
        assert len(page["items"]) <= 3
        seen.extend(s["id"] for s in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(made)


def test_an_unknown_subscription_is_404(daemon: DaemonProcess) -> None:
    assert_problem(daemon.call("GET", f"/api/subscriptions/{uuid.uuid4()}"), 404)


def test_modify_of_a_locked_subscription_is_409_and_aborting_releases_the_lock(
    daemon: DaemonProcess,
) -> None:
    _, sid = _create(daemon, "cust-lock")
    holder = daemon.start_process("e2e_modify", {"subscription_id": sid, "description": "first"})
    daemon.wait_process(holder, ("suspended",), timeout=WAIT)
    assert ok(daemon, "GET", f"/api/subscriptions/{sid}")["insync"] is False
    count = len(processes(daemon, workflow="e2e_modify"))
    second = daemon.call(
        "POST", "/api/processes/e2e_modify", {"subscription_id": sid, "description": "second"}
    )
    assert_problem(second, 409)
    assert len(processes(daemon, workflow="e2e_modify")) == count
    terminate = daemon.call("POST", "/api/processes/e2e_terminate", {"subscription_id": sid})
    assert_problem(terminate, 409)
    assert daemon.call("POST", f"/api/processes/{holder}/abort").status == 202
    daemon.wait_process(holder, ("aborted",), timeout=WAIT)
    sub = ok(daemon, "GET", f"/api/subscriptions/{sid}")
    assert sub["insync"] is True and sub["description"] == "widget w"
    assert holder in {p["id"] for p in sub["processes"]}
    again = daemon.start_process("e2e_modify", {"subscription_id": sid, "description": "third"})
    daemon.wait_process(again, ("suspended",), timeout=WAIT)
    assert daemon.call("POST", f"/api/processes/{again}/resume", {"ok": True}).status == 202
    daemon.wait_process(again, ("completed",), timeout=WAIT)
    sub = ok(daemon, "GET", f"/api/subscriptions/{sid}")
    assert sub["insync"] is True and sub["description"] == "third"


def test_modify_of_an_unknown_subscription_is_404(daemon: DaemonProcess) -> None:
    body = {"subscription_id": str(uuid.uuid4()), "description": "x"}
    assert_problem(daemon.call("POST", "/api/processes/e2e_modify", body), 404)


def test_modify_without_a_subscription_id_is_422(daemon: DaemonProcess) -> None:
    answer = daemon.call("POST", "/api/processes/e2e_modify", {"description": "x"})
    assert_validation_problem(answer, "subscription_id")


def test_of_concurrent_modify_starts_exactly_one_is_accepted(daemon: DaemonProcess) -> None:
    _, sid = _create(daemon, "cust-race")
    body = {"subscription_id": sid, "description": "race"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: daemon.call("POST", "/api/processes/e2e_modify", body), range(8))
        )
    statuses = sorted(a.status for a in answers)
    assert statuses == [201] + [409] * 7, [(a.status, a.body) for a in answers]
    winner = next(a.json["id"] for a in answers if a.status == 201)
    daemon.wait_process(winner, ("suspended",), timeout=WAIT)
    assert daemon.call("POST", f"/api/processes/{winner}/abort").status == 202
    daemon.wait_process(winner, ("aborted",), timeout=WAIT)


def test_aborting_a_modify_keeps_its_state_and_releases_the_lock(daemon: DaemonProcess) -> None:
    _, sid = _create(daemon, "cust-abort-modify")
    pid = daemon.start_process("e2e_modify", {"subscription_id": sid, "description": "never"})
    before = daemon.wait_process(pid, ("suspended",), timeout=WAIT)
    assert daemon.call("POST", f"/api/processes/{pid}/abort").status == 202
    after = daemon.wait_process(pid, ("aborted",), timeout=WAIT)
    assert after["state"] == before["state"]
    sub = ok(daemon, "GET", f"/api/subscriptions/{sid}")
    assert sub["insync"] is True and sub["description"] == "widget w"


def test_aborting_a_running_terminate_releases_the_lock_without_terminating(
    daemon: DaemonProcess,
) -> None:
    _, sid = _create(daemon, "cust-abort-terminate")
    pid = daemon.start_process("e2e_terminate", {"subscription_id": sid, "hold": True})
    daemon.wait_process(pid, ("running",), timeout=WAIT)
    assert ok(daemon, "GET", f"/api/subscriptions/{sid}")["insync"] is False
    assert daemon.call("POST", f"/api/processes/{pid}/abort").status == 202
    daemon.release(pid)
    proc = daemon.wait_process(pid, ("aborted",), timeout=WAIT)
    assert "torn_down" not in proc["state"]
    sub = ok(daemon, "GET", f"/api/subscriptions/{sid}")
    assert sub["insync"] is True and sub["status"] == "active" and sub["end_date"] is None


def test_terminate_sets_terminated_and_end_date_and_then_modify_is_409(
    daemon: DaemonProcess,
) -> None:
    _, sid = _create(daemon, "cust-term")
    pid = daemon.start_process("e2e_terminate", {"subscription_id": sid})
    daemon.wait_process(pid, ("completed",), timeout=WAIT)
    sub = ok(daemon, "GET", f"/api/subscriptions/{sid}")
    assert sub["status"] == "terminated" and sub["end_date"] is not None
    assert sub["insync"] is True
    assert pid in {p["id"] for p in sub["processes"]}
    body = {"subscription_id": sid, "description": "too late"}
    assert_problem(daemon.call("POST", "/api/processes/e2e_modify", body), 409)
    again = daemon.call("POST", "/api/processes/e2e_terminate", {"subscription_id": sid})
    assert_problem(again, 409)


# -- The HTTP API: schedules, events, metrics ------------------------------------------------------


def test_schedules_list_the_configured_entry(daemon: DaemonProcess) -> None:
    answer = daemon.call("GET", "/api/schedules")
    assert answer.status == 200 and answer.content_type == "application/json"
    entries = answer.json
    items = entries["items"] if isinstance(entries, dict) else entries
    tick = [e for e in items if e.get("workflow") == "e2e_tick"]
    assert len(tick) == 1, entries
    assert tick[0].get("next_run"), tick[0]
    assert "last_run" in tick[0]


def _status_of(event: Event) -> Any:
    data = event.json()
    return data.get("status") if isinstance(data, dict) else None


def _is_process_event(event: Event) -> bool:
    data = event.json()
    return event.event == "process" or data.get("kind") == "process" or not data.get("step")


def test_events_send_their_headers_at_once(daemon: DaemonProcess) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(daemon.socket)
        began = time.monotonic()
        sock.sendall(
            b"GET /api/events HTTP/1.1\r\nHost: orchd\r\nAccept: text/event-stream\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)  # a socket.timeout here means the headers were held back
            assert chunk, "the daemon closed the event stream"
            head += chunk
        assert time.monotonic() - began < 2.0
    status_line, *header_lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert status_line.startswith("HTTP/1.1 200"), status_line
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    assert headers["content-type"].split(";")[0] == "text/event-stream"


def test_events_name_the_process_id_and_its_status(daemon: DaemonProcess) -> None:
    stream = daemon.events()
    try:
        pid = daemon.start_process("e2e_hello")
        events = stream.until(pid, "completed")
    finally:
        stream.close()
    mine = [e for e in events if pid in e.data]
    assert mine, events
    for event in mine:
        assert _status_of(event) in PROCESS_STATUSES, event
    statuses = [_status_of(e) for e in mine]
    assert statuses[-1] == "completed"
    # One per step as well: the step names show up in the stream.
    assert any("greet" in e.data for e in mine), mine


def test_events_come_for_every_step_and_status_change(daemon: DaemonProcess) -> None:
    stream = daemon.events()
    try:
        pid = daemon.start_process("e2e_hello")
        events = [e for e in stream.until(pid, "completed") if pid in e.data]
    finally:
        stream.close()
    for name in ("init", "greet", "done"):
        assert any(name in e.data for e in events), (name, events)
    statuses = [_status_of(e) for e in events if _is_process_event(e)]
    assert "completed" in statuses and len(events) >= 4
    ids = [int(e.id) for e in events if e.id is not None]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_events_resume_after_last_event_id_without_losing_any(daemon: DaemonProcess) -> None:
    first_stream = daemon.events()
    reference = daemon.events()
    try:
        first = daemon.start_process("e2e_hello")
        first_stream.until(first, "completed")
        last = first_stream.last_id
        assert last is not None, "events must carry an id to resume from"
        first_stream.close()
        # While no stream of ours is connected, another process runs to completion.
        second = daemon.start_process("e2e_hello")
        daemon.wait_process(second, ("completed",), timeout=WAIT)
        expected = [e for e in reference.until(second, "completed") if second in e.data]
        resumed = daemon.events(last_event_id=last)
        try:
            replayed = resumed.until(second, "completed")
        finally:
            resumed.close()
    finally:
        first_stream.close()
        reference.close()
    # Nothing from before the id comes again, and every event of the second process arrives.
    assert all(first not in e.data or _is_later(e, last) for e in replayed)
    got = [(e.id, e.event, e.data) for e in replayed if second in e.data]
    assert got == [(e.id, e.event, e.data) for e in expected]


def _is_later(event: Event, last: str) -> bool:
    try:
        return int(event.id or "") > int(last)
    except ValueError:
        return True


PROMETHEUS_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"(?P<labels>\{(?:[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\n]|\\[\\\"n])*\",?)*\})?"
    r" (?P<value>\S+)(?: (?P<timestamp>-?\d+))?$"
)


def scrape(daemon: DaemonProcess) -> tuple[dict[str, str], dict[str, float]]:
    """``/metrics`` parsed strictly: the families' types, and each sample's value by its
    name and label text as written."""
    answer = daemon.call("GET", "/metrics")
    assert answer.status == 200
    assert answer.content_type == "text/plain", answer.headers
    text = answer.body.decode()
    assert text.endswith("\n")
    samples: dict[str, float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] == "TYPE":
                assert parts[3] in {"counter", "gauge", "histogram", "summary", "untyped"}, line
                assert parts[2] not in types, f"two TYPE lines for {parts[2]}"
                types[parts[2]] = parts[3]
            continue
        match = PROMETHEUS_SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        value = float(match["value"])  # also accepts NaN, +Inf, -Inf
        assert not math.isnan(value) or match["value"] == "NaN"
        samples[match["name"] + (match["labels"] or "")] = value
    return types, samples


def test_metrics_parse_as_prometheus_text(daemon: DaemonProcess) -> None:
    daemon.wait_process(daemon.start_process("e2e_hello"), ("completed",), timeout=WAIT)
    types, samples = scrape(daemon)
    assert samples and types


def test_metrics_label_processes_and_step_durations_by_workflow(daemon: DaemonProcess) -> None:
    daemon.wait_process(daemon.start_process("e2e_hello"), ("completed",), timeout=WAIT)
    types, samples = scrape(daemon)
    assert types["orchd_workflow_step_duration_seconds"] == "histogram"
    assert samples['orchd_workflow_processes{workflow="e2e_hello",status="completed"}'] >= 1
    assert samples['orchd_workflow_step_duration_seconds_count{workflow="e2e_hello"}'] >= 1
    assert 0 < samples["orchd_start_time_seconds"] <= time.time()


def test_an_unknown_route_is_a_404_problem(daemon: DaemonProcess) -> None:
    assert_problem(daemon.call("GET", "/api/nothing-here"), 404)
