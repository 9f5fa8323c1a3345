"""The control API in-process: a real Engine on a temporary SQLite file behind create_app."""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support.common import SseReader, wait_until

from orchd.api.app import create_app
from orchd.api.inputs import MAX_DEPTH
from orchd.config import Config, ScheduleConfig, schedule_specs
from orchd.engine import Engine
from orchd.engine.scheduler import Scheduler
from orchd.model import ProcessStatus
from orchd.testing import Gate

Client = TestClient[web.Request, web.Application]
Serve = Callable[..., Awaitable[Client]]
PROBLEM = "application/problem+json"


# -- helpers --------------------------------------------------------------------------------


async def start(client: Client, workflow: str, body: Any = None, **kw: Any) -> str:
    resp = await client.post(
        f"/api/processes/{workflow}", json=body if body is not None else {}, **kw
    )
    assert resp.status == 201, await resp.text()
    pid: str = (await resp.json())["id"]
    return pid


async def get(client: Client, path: str) -> Any:
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def problem(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    """Assert that ``resp`` is a problem+json answer with ``status``; return its body."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    body: dict[str, Any] = json.loads(await resp.read())
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    return body


async def created_subscription(client: Client, engine: Engine) -> str:
    pid = await start(client, "api_create", {"name": "n1"})
    process = await engine.wait(pid, timeout=5)
    assert process.status == ProcessStatus.COMPLETED
    assert process.subscription_id is not None
    return process.subscription_id


async def suspended(client: Client, engine: Engine) -> str:
    pid = await start(client, "api_ask")
    assert (await engine.wait(pid, timeout=5)).status == ProcessStatus.SUSPENDED
    return pid


async def status_becomes(client: Client, pid: str, status: str) -> None:
    async def shows() -> bool:
        return bool((await get(client, f"/api/processes/{pid}"))["status"] == status)

    await wait_until(shows, f"{pid} {status}")


def real_scheduler(engine: Engine) -> Scheduler:
    entries = [
        ScheduleConfig(workflow="api_fail", name="nightly", every="5m"),
        ScheduleConfig(workflow="api_gated", name="held", every="1h"),
    ]
    return Scheduler(engine, schedule_specs(Config(schedules=entries)))


# -- success shapes ---------------------------------------------------------------------------


async def test_health_answers_ok_with_counts(api_client: Client) -> None:
    resp = await api_client.get("/api/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert body["version"]
    assert body["uptime_seconds"] >= 0
    assert set(body["processes"]) == {s.value for s in ProcessStatus}


async def test_health_is_degraded_when_writes_fail(
    api_client: Client, api_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_engine.store._writer, "failing", "disk full")
    resp = await api_client.get("/api/health")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "degraded"
    assert "disk full" in body["database"]


async def test_health_is_degraded_when_the_database_does_not_answer(
    api_client: Client, api_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken() -> None:
        raise OSError("no database")

    monkeypatch.setattr(api_engine, "ping", broken)
    resp = await api_client.get("/api/health")
    assert resp.status == 503
    assert (await resp.json())["status"] == "degraded"


async def test_workflows_lists_names_targets_and_forms(api_client: Client) -> None:
    body = await get(api_client, "/api/workflows")
    by_name = {w["name"]: w for w in body}
    assert {"api_create", "api_modify", "api_ask", "api_callback"} <= by_name.keys()
    create = by_name["api_create"]
    assert create["description"] == "Create a node"
    assert create["target"] == "CREATE"
    assert create["form"]["properties"]["name"] == {"type": "string"}
    assert by_name["api_fail"]["form"] is None


async def test_start_answers_201_with_id_and_location(
    api_client: Client, api_engine: Engine
) -> None:
    resp = await api_client.post("/api/processes/api_create", json={"name": "n1", "size": 2})
    assert resp.status == 201
    pid = (await resp.json())["id"]
    assert str(uuid.UUID(pid)) == pid
    assert resp.headers["Location"] == f"/api/processes/{pid}"
    process = await api_engine.wait(pid, timeout=5)
    assert process.status == ProcessStatus.COMPLETED
    assert process.state["double"] == 4


async def test_start_with_empty_body_means_empty_form(
    api_client: Client, api_engine: Engine
) -> None:
    resp = await api_client.post("/api/processes/api_fail", data=b"")
    assert resp.status == 201
    pid = (await resp.json())["id"]
    assert (await api_engine.wait(pid, timeout=5)).status == ProcessStatus.FAILED


async def test_list_processes_pages_newest_first(api_client: Client) -> None:
    pids = [await start(api_client, "api_fail") for _ in range(3)]
    first = await get(api_client, "/api/processes?limit=2")
    assert [p["id"] for p in first["items"]] == pids[::-1][:2]
    assert {"id", "workflow", "status"} <= first["items"][0].keys()
    assert first["next_cursor"] is not None
    rest = await get(api_client, f"/api/processes?limit=2&cursor={first['next_cursor']}")
    assert [p["id"] for p in rest["items"]] == [pids[0]]
    assert rest["next_cursor"] is None


async def test_list_processes_filters_by_status_and_workflow(
    api_client: Client, api_engine: Engine
) -> None:
    failed = await start(api_client, "api_fail")
    ok = await start(api_client, "api_create", {"name": "x"})
    await api_engine.wait(failed, timeout=5)
    await api_engine.wait(ok, timeout=5)
    body = await get(api_client, "/api/processes?status=failed")
    assert [p["id"] for p in body["items"]] == [failed]
    body = await get(api_client, "/api/processes?workflow=api_create")
    assert [p["id"] for p in body["items"]] == [ok]


async def test_get_process_shows_state_and_steps(api_client: Client, api_engine: Engine) -> None:
    pid = await start(api_client, "api_create", {"name": "n1"})
    await api_engine.wait(pid, timeout=5)
    body = await get(api_client, f"/api/processes/{pid}")
    assert body["id"] == pid
    assert body["workflow"] == "api_create"
    assert body["status"] == "completed"
    assert body["state"]["name"] == "n1"
    assert [s["name"] for s in body["steps"]] == ["init", "make_subscription", "done"]
    assert {"name", "status", "started_at", "finished_at", "error"} <= body["steps"][0].keys()
    assert body["created_at"] and body["updated_at"]


async def test_get_suspended_process_shows_its_form(api_client: Client, api_engine: Engine) -> None:
    pid = await suspended(api_client, api_engine)
    body = await get(api_client, f"/api/processes/{pid}")
    assert body["status"] == "suspended"
    assert body["form"]["properties"]["count"] == {"type": "integer"}


async def test_resume_answers_202_and_the_process_goes_on(
    api_client: Client, api_engine: Engine
) -> None:
    pid = await suspended(api_client, api_engine)
    resp = await api_client.post(f"/api/processes/{pid}/resume", json={"count": 3})
    assert resp.status == 202
    body = await resp.json()
    assert body["id"] == pid
    assert body["status"] in {"running", "completed"}
    process = await api_engine.wait(pid, timeout=5)
    assert process.status == ProcessStatus.COMPLETED
    assert process.state["count"] == 3


async def test_retry_of_failed_process_answers_202(api_client: Client, api_engine: Engine) -> None:
    pid = await start(api_client, "api_fail")
    await api_engine.wait(pid, timeout=5)
    resp = await api_client.post(f"/api/processes/{pid}/retry")
    assert resp.status == 202
    assert (await resp.json())["id"] == pid
    process = await api_engine.wait(pid, timeout=5)
    assert [s.status for s in process.steps if s.name == "boom"] == ["failed", "failed"]


async def test_abort_of_suspended_process_answers_202(
    api_client: Client, api_engine: Engine
) -> None:
    pid = await suspended(api_client, api_engine)
    resp = await api_client.post(f"/api/processes/{pid}/abort")
    assert resp.status == 202
    assert await resp.json() == {"id": pid, "status": "aborted"}


async def test_the_reporter_header_labels_the_peer_and_never_replaces_it(
    api_client: Client,
) -> None:
    pid = await start(api_client, "api_fail", headers={"X-Orchd-Reporter": "alice"})
    process = await get(api_client, f"/api/processes/{pid}")
    assert process["reporter"] == "tcp:127.0.0.1 (alice)"
    assert [(a["action"], a["actor"]) for a in process["actions"]] == [
        ("start", "tcp:127.0.0.1 (alice)")
    ]


async def test_reporter_over_tcp_defaults_to_the_peer_address(api_client: Client) -> None:
    pid = await start(api_client, "api_fail")
    assert (await get(api_client, f"/api/processes/{pid}"))["reporter"] == "tcp:127.0.0.1"


async def test_a_reporter_label_with_control_characters_is_refused(
    api_client: Client, api_engine: Engine
) -> None:
    # A C1 control (NEL) passes the HTTP parser (header bytes are read as Latin-1); a label
    # must not carry it into the audit trail and the logs.
    server = api_client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        f"POST /api/processes/api_fail HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 2\r\n"
        b"X-Orchd-Reporter: bob\x85evil\r\nConnection: close\r\n\r\n{}"
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"control characters" in answer
    assert (await api_engine.list_processes()).items == []


async def test_subscriptions_list_and_detail(api_client: Client, api_engine: Engine) -> None:
    sid = await created_subscription(api_client, api_engine)
    page = await get(api_client, "/api/subscriptions?product=node")
    assert [s["id"] for s in page["items"]] == [sid]
    assert page["next_cursor"] is None
    detail = await get(api_client, f"/api/subscriptions/{sid}")
    for key in ("product", "customer_id", "description", "status", "insync", "attributes"):
        assert key in detail
    assert detail["insync"] is True
    assert [(p["workflow"], p["status"]) for p in detail["processes"]] == [
        ("api_create", "completed")
    ]


async def test_schedules_is_empty_without_scheduler(api_client: Client) -> None:
    assert await get(api_client, "/api/schedules") == []


async def test_schedule_run_without_scheduler_is_404(api_client: Client) -> None:
    await problem(await api_client.post("/api/schedules/nightly/run"), 404)


async def test_schedules_lists_the_scheduler_entries(api_serve: Serve, api_engine: Engine) -> None:
    client = await api_serve(scheduler=real_scheduler(api_engine))
    body = await get(client, "/api/schedules")
    assert [(s["name"], s["workflow"], s["every"]) for s in body] == [
        ("nightly", "api_fail", "5m"),
        ("held", "api_gated", "1h"),
    ]


async def test_schedule_run_answers_201_with_process_id(
    api_serve: Serve, api_engine: Engine
) -> None:
    client = await api_serve(scheduler=real_scheduler(api_engine))
    resp = await client.post("/api/schedules/nightly/run")
    assert resp.status == 201
    pid = (await resp.json())["id"]
    assert (await get(client, f"/api/processes/{pid}"))["workflow"] == "api_fail"
    listed = await get(client, "/api/schedules")
    assert listed[0]["last_run"]["process_id"] == pid


async def test_schedule_run_unknown_is_404_and_running_is_409(
    api_serve: Serve, api_engine: Engine
) -> None:
    client = await api_serve(scheduler=real_scheduler(api_engine))
    await problem(await client.post("/api/schedules/weekly/run"), 404)
    first = await client.post("/api/schedules/held/run")
    assert first.status == 201
    await problem(await client.post("/api/schedules/held/run"), 409)


# -- 404 and 405 ----------------------------------------------------------------------------------


async def test_start_of_unknown_workflow_is_404(api_client: Client) -> None:
    body = await problem(await api_client.post("/api/processes/nope", json={}), 404)
    assert "nope" in body["detail"]


async def test_unknown_process_is_404(api_client: Client) -> None:
    await problem(await api_client.get(f"/api/processes/{uuid.uuid4()}"), 404)


async def test_not_a_uuid_process_id_is_404(api_client: Client) -> None:
    await problem(await api_client.get("/api/processes/not-a-uuid"), 404)
    await problem(await api_client.post("/api/processes/not-a-uuid/abort"), 404)


async def test_action_on_unknown_process_is_404(api_client: Client) -> None:
    for action in ("resume", "retry", "abort"):
        await problem(await api_client.post(f"/api/processes/{uuid.uuid4()}/{action}"), 404)


async def test_unknown_callback_token_is_404(api_client: Client) -> None:
    await problem(await api_client.post("/api/callbacks/no-such-token", json={}), 404)


async def test_unknown_subscription_is_404(api_client: Client) -> None:
    await problem(await api_client.get(f"/api/subscriptions/{uuid.uuid4()}"), 404)
    await problem(await api_client.get("/api/subscriptions/nope"), 404)


async def test_unknown_route_is_404_problem(api_client: Client) -> None:
    body = await problem(await api_client.get("/api/nothing-here"), 404)
    assert "/api/nothing-here" in body["detail"]


async def test_wrong_method_is_405_problem_with_allow(api_client: Client) -> None:
    resp = await api_client.delete("/api/workflows")
    await problem(resp, 405)
    assert "GET" in resp.headers["Allow"]


# -- 409 --------------------------------------------------------------------------------------


async def test_retry_of_completed_process_is_409(api_client: Client, api_engine: Engine) -> None:
    pid = await start(api_client, "api_create", {"name": "n1"})
    await api_engine.wait(pid, timeout=5)
    await problem(await api_client.post(f"/api/processes/{pid}/retry"), 409)


async def test_abort_of_completed_process_is_409(api_client: Client, api_engine: Engine) -> None:
    pid = await start(api_client, "api_create", {"name": "n1"})
    await api_engine.wait(pid, timeout=5)
    await problem(await api_client.post(f"/api/processes/{pid}/abort"), 409)
    assert (await api_engine.get(pid)).status == ProcessStatus.COMPLETED


async def test_resume_of_running_process_is_409(api_client: Client, gate: Gate) -> None:
    pid = await start(api_client, "api_gated")
    await status_becomes(api_client, pid, "running")
    await problem(await api_client.post(f"/api/processes/{pid}/resume", json={}), 409)
    gate.open()


async def test_modify_of_locked_subscription_is_409(api_client: Client, api_engine: Engine) -> None:
    sid = await created_subscription(api_client, api_engine)
    holder = await start(api_client, "api_modify", {"subscription_id": sid})
    await api_engine.wait(holder, timeout=5)
    resp = await api_client.post("/api/processes/api_modify", json={"subscription_id": sid})
    await problem(resp, 409)
    page = await get(api_client, "/api/processes?workflow=api_modify")
    assert [p["id"] for p in page["items"]] == [holder]


# -- 422 --------------------------------------------------------------------------------------


async def test_bad_form_answer_is_422_and_the_process_stays_suspended(
    api_client: Client, api_engine: Engine
) -> None:
    pid = await suspended(api_client, api_engine)
    before = await get(api_client, f"/api/processes/{pid}")
    resp = await api_client.post(f"/api/processes/{pid}/resume", json={"count": "many"})
    body = await problem(resp, 422)
    assert body["errors"][0]["loc"] == ["count"]
    assert body["errors"][0]["msg"]
    assert await get(api_client, f"/api/processes/{pid}") == before


async def test_bad_initial_input_is_422(api_client: Client) -> None:
    body = await problem(await api_client.post("/api/processes/api_create", json={}), 422)
    assert body["errors"][0]["loc"] == ["name"]
    assert (await get(api_client, "/api/processes"))["items"] == []


# -- 400 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"name": NaN}', b"Infinity", b'{"name": "\xff"}', b"[1] 2"],
    ids=["truncated", "nan", "infinity", "invalid-utf8", "trailing"],
)
async def test_malformed_body_is_400(api_client: Client, raw: bytes) -> None:
    resp = await api_client.post(
        "/api/processes/api_create", data=raw, headers={"Content-Type": "application/json"}
    )
    await problem(resp, 400)
    assert (await get(api_client, "/api/processes"))["items"] == []


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000, 200_000])
async def test_deeply_nested_body_is_400(api_client: Client, depth: int) -> None:
    raw = b"[" * depth + b"]" * depth
    resp = await api_client.post(
        "/api/processes/api_create", data=raw, headers={"Content-Type": "application/json"}
    )
    await problem(resp, 400)


async def test_nested_body_within_the_limit_is_accepted(
    api_client: Client, api_engine: Engine
) -> None:
    nested: Any = 1
    for _ in range(MAX_DEPTH - 2):
        nested = [nested]
    pid = await start(api_client, "api_fail", {"extra": nested})
    process = await api_engine.wait(pid, timeout=5)
    assert process.state["extra"] == nested


@pytest.mark.parametrize("query", ["limit=ten", "limit=0", "limit=-3"])
async def test_bad_limit_is_400_naming_the_parameter(api_client: Client, query: str) -> None:
    body = await problem(await api_client.get(f"/api/processes?{query}"), 400)
    assert "limit" in body["detail"]


async def test_unknown_status_is_400_naming_the_parameter(api_client: Client) -> None:
    body = await problem(await api_client.get("/api/processes?status=sleeping"), 400)
    assert "status" in body["detail"]
    body = await problem(await api_client.get("/api/subscriptions?status=sleeping"), 400)
    assert "status" in body["detail"]


async def test_limit_is_capped_by_the_server(api_client: Client) -> None:
    await start(api_client, "api_fail")
    body = await get(api_client, "/api/processes?limit=100000")
    assert len(body["items"]) == 1


# -- 413 --------------------------------------------------------------------------------------


async def test_body_over_max_body_is_413_and_creates_nothing(api_serve: Serve) -> None:
    client = await api_serve(max_body=100)
    body = {"name": "x" * 200}
    await problem(await client.post("/api/processes/api_create", json=body), 413)
    assert (await get(client, "/api/processes"))["items"] == []


async def test_chunked_body_over_max_body_is_413(api_serve: Serve) -> None:
    client = await api_serve(max_body=100)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(10):
            yield b"x" * 50
        yield b'"}'

    resp = await client.post(
        "/api/processes/api_create", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    await problem(resp, 413)
    assert (await get(client, "/api/processes"))["items"] == []


# -- authentication ---------------------------------------------------------------------------


async def test_tcp_without_token_is_401(api_serve: Serve) -> None:
    client = await api_serve(token="s3cret")
    resp = await client.get("/api/workflows")
    await problem(resp, 401)
    assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_tcp_with_wrong_token_is_401(api_serve: Serve) -> None:
    client = await api_serve(token="s3cret")
    for value in ("Bearer wrong", "Basic s3cret", "Bearer", "Bearer s3crét"):
        body = await problem(
            await client.get("/api/workflows", headers={"Authorization": value}), 401
        )
        assert "s3cret" not in json.dumps(body)


async def test_tcp_with_token_passes(api_serve: Serve) -> None:
    client = await api_serve(token="s3cret")
    resp = await client.get("/api/workflows", headers={"Authorization": "Bearer s3cret"})
    assert resp.status == 200


async def test_health_needs_no_token(api_serve: Serve) -> None:
    client = await api_serve(token="s3cret")
    assert (await client.get("/api/health")).status == 200


async def test_unix_socket_needs_no_token_and_reports_the_peer_uid(api_engine: Engine) -> None:
    app = create_app(api_engine, token="s3cret")
    runner = web.AppRunner(app)
    await runner.setup()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = str(Path(tmp) / "api.sock")
        await web.UnixSite(runner, path).start()
        try:
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as http:
                async with http.get("http://orchd/api/workflows") as resp:
                    assert resp.status == 200
                async with http.post("http://orchd/api/processes/api_fail", json={}) as resp:
                    assert resp.status == 201
                    pid = (await resp.json())["id"]
            assert (await api_engine.get(pid)).reporter == f"uid:{os.getuid()}"
        finally:
            await runner.cleanup()


# -- errors that are not ours -----------------------------------------------------------------


async def test_unexpected_error_is_500_without_internals(
    api_client: Client, api_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api_engine, "workflow_info", broken)
    body = await problem(await api_client.get("/api/workflows"), 500)
    assert "secret" not in json.dumps(body)


# -- server-sent events -----------------------------------------------------------------------


async def test_events_stream_sends_headers_and_a_comment_at_once(api_client: Client) -> None:
    resp = await api_client.get("/api/events")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert await resp.content.readline() == b": connected\n"
    resp.close()


async def test_events_stream_sends_process_and_step_events(api_client: Client) -> None:
    resp = await api_client.get("/api/events")
    stream = SseReader(resp)
    pid = await start(api_client, "api_create", {"name": "n1"})
    events = await stream.until(pid, "completed")
    mine = [e for e in events if e.json()["process_id"] == pid]
    assert mine[0].event == "process" and mine[0].json()["status"] == "created"
    steps = [e.json()["step"] for e in mine if e.event == "step"]
    assert steps == ["init", "make_subscription", "done"]
    assert all(int(e.id or "") == e.json()["id"] for e in mine)
    resp.close()


async def test_events_stream_resumes_after_last_event_id(api_client: Client) -> None:
    resp = await api_client.get("/api/events")
    pid = await start(api_client, "api_create", {"name": "n1"})
    first = await SseReader(resp).until(pid, "completed")
    resp.close()
    again = await api_client.get("/api/events", headers={"Last-Event-ID": first[0].id or ""})
    replayed = await SseReader(again).until(pid, "completed")
    assert [e.id for e in replayed] == [e.id for e in first[1:]]
    again.close()


async def test_events_stream_filters_by_process(api_client: Client) -> None:
    other = await start(api_client, "api_fail")
    resp = await api_client.get(f"/api/events?process={other}&after=0")
    pid = await start(api_client, "api_create", {"name": "n1"})
    del pid
    stream = SseReader(resp)
    event = await stream.next()
    assert event is not None and event.json()["process_id"] == other
    events = await stream.until(other, "failed")
    assert {e.json()["process_id"] for e in events} == {other}
    resp.close()


async def test_events_stream_sends_heartbeats(api_client: Client) -> None:
    resp = await api_client.get("/api/events")
    with anyio.fail_after(5):
        assert await resp.content.readline() == b": connected\n"
        assert await resp.content.readline() == b"\n"
        assert await resp.content.readline() == b": heartbeat\n"
    resp.close()


async def test_events_stream_ends_when_the_engine_stops(
    api_client: Client, api_engine: Engine
) -> None:
    resp = await api_client.get("/api/events")
    assert await resp.content.readline() == b": connected\n"
    await api_engine.close()
    with anyio.fail_after(5):
        rest = await resp.content.read()
    assert b"event:" not in rest


async def test_bad_last_event_id_is_400(api_client: Client) -> None:
    resp = await api_client.get("/api/events", headers={"Last-Event-ID": "yesterday"})
    body = await problem(resp, 400)
    assert "Last-Event-ID" in body["detail"]


# -- metrics ----------------------------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$")


def parse_metrics(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """The ``# TYPE`` of each family and every sample (name, labels, value)."""
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: list[tuple[str, dict[str, str], float]] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            pairs = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or ""))
            samples.append((name, pairs, float(value)))
    assert helps == types.keys()
    return types, samples


async def test_metrics_expose_every_family(api_client: Client, api_engine: Engine) -> None:
    pid = await start(api_client, "api_create", {"name": "n1"})
    await api_engine.wait(pid, timeout=5)
    resp = await api_client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    types, samples = parse_metrics(await resp.text())
    expected = {
        "orchd_processes": "gauge",
        "orchd_steps_total": "counter",
        "orchd_step_duration_seconds": "histogram",
        "orchd_checkpoint_batches_total": "counter",
        "orchd_checkpoints_total": "counter",
        "orchd_checkpoint_commit_seconds_total": "counter",
        "orchd_checkpoint_last_batch_size": "gauge",
        "orchd_checkpoint_queue_depth": "gauge",
        "orchd_actors_alive": "gauge",
        "orchd_step_threads_abandoned_total": "counter",
        "orchd_pruned_processes_total": "counter",
        "orchd_pruned_steps_total": "counter",
        "orchd_pruned_actions_total": "counter",
        "orchd_step_threads_abandoned_running": "gauge",
        "orchd_step_threads_busy": "gauge",
        "orchd_step_threads_queued_total": "counter",
        "orchd_mailbox_depth": "gauge",
        "orchd_event_streams": "gauge",
        "orchd_event_streams_refused_total": "counter",
        "orchd_event_streams_dropped_total": "counter",
        "orchd_api_requests_total": "counter",
        "orchd_store_failing": "gauge",
        "orchd_uptime_seconds": "gauge",
        "orchd_workflow_processes": "gauge",
        "orchd_workflow_step_failures_total": "counter",
        "orchd_workflow_step_duration_seconds": "histogram",
        "orchd_start_time_seconds": "gauge",
        # README "Limits on shared resources", a family even with no
        # limits
        "orchd_resource_in_use": "gauge",
        "orchd_resource_waiting": "gauge",
    }
    if api_engine.node is not None:  # on PostgreSQL the engine is a node of a cluster
        expected |= {
            "orchd_lease_renewals_total": "counter",
            "orchd_lease_renewal_failures_total": "counter",
            "orchd_takeovers_total": "counter",
            "orchd_forwarded_requests_total": "counter",
            "orchd_served_requests_total": "counter",
            "orchd_lease_expiry_timestamp_seconds": "gauge",
        }
    assert types == expected
    values = {(n, tuple(sorted(labels.items()))): v for n, labels, v in samples}
    assert values[("orchd_processes", (("status", "completed"),))] == 1
    assert {labels["status"] for n, labels, _ in samples if n == "orchd_processes"} == {
        s.value for s in ProcessStatus
    }
    assert values[("orchd_steps_total", ())] >= 3
    assert values[("orchd_api_requests_total", (("code", "201"),))] == 1


async def test_metrics_histogram_buckets_are_cumulative(
    api_client: Client, api_engine: Engine
) -> None:
    for _ in range(3):
        await api_engine.wait(await start(api_client, "api_create", {"name": "n"}), timeout=5)
    _, samples = parse_metrics(await (await api_client.get("/metrics")).text())
    buckets = [(s[1]["le"], s[2]) for s in samples if s[0] == "orchd_step_duration_seconds_bucket"]
    assert buckets[-1][0] == "+Inf"
    bounds = [float(le) for le, _ in buckets]
    assert bounds == sorted(bounds)
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    total = next(v for n, _, v in samples if n == "orchd_step_duration_seconds_count")
    assert counts[-1] == total >= 9


async def test_metrics_break_processes_and_steps_down_by_workflow(
    api_client: Client, api_engine: Engine
) -> None:
    await api_engine.wait(await start(api_client, "api_create", {"name": "n"}), timeout=5)
    await api_engine.wait(await start(api_client, "api_fail"), timeout=5)
    _, samples = parse_metrics(await (await api_client.get("/metrics")).text())
    values = {(n, tuple(sorted(labels.items()))): v for n, labels, v in samples}
    by = "orchd_workflow_processes"
    assert values[(by, (("status", "completed"), ("workflow", "api_create")))] == 1
    assert values[(by, (("status", "failed"), ("workflow", "api_fail")))] == 1
    assert (by, (("status", "failed"), ("workflow", "api_create"))) not in values
    failures = "orchd_workflow_step_failures_total"
    assert values[(failures, (("workflow", "api_fail"),))] == 1
    assert values[(failures, (("workflow", "api_create"),))] == 0
    count = "orchd_workflow_step_duration_seconds_count"
    assert values[(count, (("workflow", "api_create"),))] >= 3
    assert values[("orchd_start_time_seconds", ())] == pytest.approx(api_engine.started_at)


async def test_metrics_count_schedule_runs(api_serve: Serve, api_engine: Engine) -> None:
    client = await api_serve(scheduler=real_scheduler(api_engine))
    await client.post("/api/schedules/nightly/run")
    types, samples = parse_metrics(await (await client.get("/metrics")).text())
    assert types["orchd_schedule_runs_total"] == "counter"
    assert ("orchd_schedule_runs_total", {"schedule": "nightly"}, 1.0) in samples


# -- OpenAPI ----------------------------------------------------------------------------------


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


async def test_openapi_documents_every_route(api_client: Client) -> None:
    doc = await get(api_client, "/api/openapi.json")
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"]

    def shape(path: str) -> str:
        # OpenAPI allows one template per shape: POST /api/processes/{workflow} is documented
        # under /api/processes/{id}, beside GET of a process.
        return re.sub(r"\{[^}]+\}", "{}", path)

    registered = {
        (route.method.lower(), shape(route.resource.canonical))
        for route in api_client.app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        # The web console's pages are HTML for people, not part of the API it documents.
        and not route.resource.canonical.startswith("/ui")
    }
    documented = {(m, shape(path)) for path, ops in doc["paths"].items() for m in ops}
    assert registered == documented
    assert len(registered) == 24
    assert len({shape(p) for p in doc["paths"]}) == len(doc["paths"])


async def test_openapi_refs_resolve_and_problems_are_described(api_client: Client) -> None:
    doc = await get(api_client, "/api/openapi.json")
    for ref in refs(doc):
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    schemas = doc["components"]["schemas"]
    assert {"Problem", "Process", "WorkflowInfo", "ProcessPage", "Event"} <= schemas.keys()
    resume = doc["paths"]["/api/processes/{id}/resume"]["post"]
    assert {"202", "404", "409", "413", "422"} <= resume["responses"].keys()
    assert resume["parameters"][0] == {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    assert doc["paths"]["/api/health"]["get"]["security"] == []


# -- callbacks --------------------------------------------------------------------------------


async def test_callback_completes_the_process_and_a_used_token_is_404(
    api_client: Client, api_engine: Engine
) -> None:
    pid = await start(api_client, "api_callback")
    assert (await api_engine.wait(pid, timeout=5)).status == ProcessStatus.AWAITING_CALLBACK
    token = (await get(api_client, f"/api/processes/{pid}"))["state"]["sent_with"]
    assert token
    resp = await api_client.post(f"/api/callbacks/{token}", json={"ok": True})
    assert resp.status == 202
    assert (await resp.json())["id"] == pid
    process = await api_engine.wait(pid, timeout=5)
    assert process.status == ProcessStatus.COMPLETED
    assert process.state["callback_result"] == {"ok": True}
    assert process.state["checked"] is True
    await problem(await api_client.post(f"/api/callbacks/{token}", json={"ok": True}), 404)


async def test_requests_are_counted_by_status_code(api_client: Client) -> None:
    await api_client.get("/api/nothing")
    _, samples = parse_metrics(await (await api_client.get("/metrics")).text())
    assert ("orchd_api_requests_total", {"code": "404"}, 1.0) in samples


async def test_a_client_over_the_rate_limit_gets_429_and_health_still_answers(
    api_serve: Serve,
) -> None:
    client = await api_serve(rate_limit=1.0)
    statuses = [(await client.get("/api/workflows")).status for _ in range(4)]
    assert statuses[:2] == [200, 200] and statuses[-1] == 429
    body = await problem(await client.get("/api/workflows"), 429)
    assert "requests per second" in body["detail"]
    assert (await client.get("/api/health")).status == 200
