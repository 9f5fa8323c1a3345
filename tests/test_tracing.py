"""Traces (README "Traces", issue 32), in-process: trace ids, the ``traceparent`` a step's requests
carry, and the spans recorded with OpenTelemetry's SDK (its in-memory exporter).

Engine tests run on SQLite and PostgreSQL (``engine_factory``). Requests go to a real HTTP
server in the test that records their headers.
"""

from __future__ import annotations

import io
import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from support.common import EngineFactory, parse_logfmt, settle

from orchd.engine import Engine
from orchd.logs import LogfmtFormatter
from orchd.tracing import otel, parse_traceparent

sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="OpenTelemetry's SDK (test extra)")
from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from trace_flows import Flaky  # noqa: E402  (tests/wf/ is on the path through conftest)

REMOTE_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
REMOTE_SPAN = "00f067aa0ba902b7"
REMOTE = f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-01"
TRACE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Recorder:
    """A real HTTP server that answers ``{}`` and keeps each request's path and traceparent."""

    url: str = ""
    seen: list[tuple[str, str | None]] = field(default_factory=list)

    def headers(self, path: str) -> list[str | None]:
        return [tp for p, tp in self.seen if p == path]


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()

    async def answer(request: web.Request) -> web.Response:
        rec.seen.append((request.path, request.headers.get("traceparent")))
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}"
    try:
        yield rec
    finally:
        await runner.cleanup()


def span_of(header: str | None) -> int:
    parsed = parse_traceparent(header)
    assert parsed is not None, header
    return int(parsed.span_id, 16)


def trace_of(header: str | None) -> str:
    parsed = parse_traceparent(header)
    assert parsed is not None, header
    return parsed.trace_id


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, span.name
    return span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


# -- trace ids ------------------------------------------------------------------------------


async def test_a_start_joins_a_valid_traceparent_or_begins_its_own_trace(
    engine_factory: EngineFactory,
) -> None:
    engine = await engine_factory(["trace_flows"])
    joined = await engine.start("traced_child", traceparent=REMOTE)
    fresh = [await engine.start("traced_child") for _ in range(2)]
    invalid = [
        f"00-{REMOTE_TRACE.upper()}-{REMOTE_SPAN}-01",  # upper-case hex
        f"00-{'0' * 32}-{REMOTE_SPAN}-01",  # an all-zero trace id
        f"00-{REMOTE_TRACE}-{'0' * 16}-01",  # an all-zero span id
        f"ff-{REMOTE_TRACE}-{REMOTE_SPAN}-01",  # the forbidden version
        f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-01-extra",  # version 00 takes nothing more
        f"00-{REMOTE_TRACE[:-1]}-{REMOTE_SPAN}-01",  # too short
        "garbage",
    ]
    ignored = [await engine.start("traced_child", traceparent=bad) for bad in invalid]
    assert (await engine.wait(joined)).trace_id == REMOTE_TRACE
    ids = [(await engine.wait(pid)).trace_id for pid in fresh + ignored]
    assert all(TRACE_ID.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids) and REMOTE_TRACE not in ids
    # A later version may add fields after its own: its trace is joined.
    later = await engine.start("traced_child", traceparent=f"01-{REMOTE_TRACE}-{REMOTE_SPAN}-01-x")
    assert (await engine.wait(later)).trace_id == REMOTE_TRACE


async def test_the_trace_id_is_kept_in_the_database(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(["trace_flows"], name="kept.db")
    pid = await engine.start("traced_child")
    before = (await engine.wait(pid)).trace_id
    await engine.close()
    again = await engine_factory(["trace_flows"], name="kept.db")
    assert (await again.get(pid)).trace_id == before


async def test_children_are_in_their_parents_trace(engine_factory: EngineFactory) -> None:
    engine = await engine_factory(["trace_flows"])
    pid = await engine.start("traced_parent", {"inputs": [{}, {}, {}]}, traceparent=REMOTE)
    parent = await settle(engine, pid, "completed")
    assert parent.status == "completed" and len(parent.children) == 3
    for link in parent.children:
        child = await engine.get(link.id)
        assert child.trace_id == REMOTE_TRACE
        assert trace_of(child.state["child_seen"]) == REMOTE_TRACE


@pytest.mark.sqlite_only
async def test_a_process_from_before_traces_has_a_stable_trace_id_from_its_id(
    engine_factory: EngineFactory, database_factory: Any
) -> None:
    engine = await engine_factory(["trace_flows"], name="old.db")
    pid = await engine.start("traced_child")
    await engine.wait(pid)
    await engine.close()
    path = await database_factory("old.db")
    with sqlite3.connect(path) as conn:  # as a database from before traces has it
        conn.execute("UPDATE processes SET trace_id = NULL WHERE id = ?", (pid,))
    derived = pid.replace("-", "")
    engine = await engine_factory(["trace_flows"], name="old.db")
    assert (await engine.get(pid)).trace_id == derived
    assert (await engine.get(pid)).trace_id == derived


# -- the traceparent of a step's requests ---------------------------------------------------


async def test_requests_a_step_makes_carry_the_process_trace_without_otel(
    engine_factory: EngineFactory, recorder: Recorder
) -> None:
    engine = await engine_factory(
        ["trace_flows"], resources={Flaky: Flaky()}, retry_delay=0.01, retry_max_delay=0.02
    )
    assert not engine.tracing.on  # no spans: the trace still reaches the OSS
    pid = await engine.start("traced", {"url": recorder.url})
    p = await engine.wait(pid)
    assert p.status == "completed", p.error
    [call] = recorder.headers("/call")
    [branch] = recorder.headers("/branch")
    seen = [p.state[k] for k in ("call_seen", "thread_seen", "flaky_seen", "branch_seen")]
    seen.append(p.state["branch_thread_seen"])
    # The header the OSS got is the step's own, on the loop, in a thread and in a branch.
    assert call == p.state["call_seen"] and branch == p.state["branch_seen"]
    assert {trace_of(h) for h in seen} == {p.trace_id}
    assert len({span_of(h) for h in seen}) == len(seen)  # a span id per step


async def test_a_header_given_by_the_step_is_kept(
    engine_factory: EngineFactory, recorder: Recorder
) -> None:
    from orchd.http import HttpClient

    engine = await engine_factory(["trace_flows"])
    http = engine.resources[HttpClient]
    mine = f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-00"
    await http.request("GET", f"{recorder.url}/outside")  # outside a step: none added
    await http.request("GET", f"{recorder.url}/given", headers={"TraceParent": mine})
    assert recorder.headers("/outside") == [None]
    assert recorder.headers("/given") == [mine]


async def test_log_lines_name_the_process_trace(
    engine_factory: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orchd")
    engine = await engine_factory(["trace_flows"])
    pid = await engine.start("traced_child", traceparent=REMOTE)
    await engine.wait(pid)
    about = [r.getMessage() for r in caplog.records if f"process={pid}" in r.getMessage()]
    assert about and all(f"trace_id={REMOTE_TRACE}" in m for m in about), about


async def test_a_line_logged_inside_a_step_names_its_process_and_trace(
    engine_factory: EngineFactory, recorder: Recorder
) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LogfmtFormatter())
    logger = logging.getLogger("orchd.http")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)  # where the HTTP client logs its retries
    try:
        engine = await engine_factory(["trace_flows"], retry_delay=0.01)
        # The OSS is gone: the HTTP client logs its retries from inside the step.
        pid = await engine.start("traced_calls", {"url": "http://127.0.0.1:1"})
        p = await engine.wait(pid)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert p.status == "failed"
    lines = [parse_logfmt(line) for line in out.getvalue().splitlines()]
    retries = [f for f in lines if f["msg"].startswith("retrying GET")]
    assert retries and all(f["process"] == pid and f["trace_id"] == p.trace_id for f in retries)


# -- spans ----------------------------------------------------------------------------------


async def test_spans_of_a_process_its_runs_steps_and_branches(
    engine_factory: EngineFactory, recorder: Recorder
) -> None:
    exporter = InMemorySpanExporter()
    engine = await engine_factory(
        ["trace_flows"],
        resources={Flaky: Flaky(flaky=1)},
        tracing=otel(exporter),
        retry_delay=0.01,
        retry_max_delay=0.02,
    )
    pid = await engine.start("traced", {"url": recorder.url}, traceparent=REMOTE)
    p = await settle(engine, pid, "completed")  # past its retry
    await engine.close()  # its last run's span is made when its actor retires
    spans = list(exporter.get_finished_spans())
    assert {f"{s.context.trace_id:032x}" for s in spans if s.context} == {REMOTE_TRACE}

    start = one(spans, "start traced")
    assert start.parent is not None and start.parent.is_remote
    assert f"{parent_of(start):016x}" == REMOTE_SPAN
    assert start.attributes is not None and start.attributes["orchd.process.id"] == pid

    # The retrystep failed once: the process waited (its actor retired), then ran again.
    runs = named(spans, "run traced")
    assert len(runs) == 2 and {parent_of(r) for r in runs} == {span_id(start)}
    first_run, second_run = sorted(runs, key=lambda s: s.start_time or 0)
    assert first_run.attributes is not None and second_run.attributes is not None
    assert first_run.attributes["orchd.process.status"] == "waiting"
    assert second_run.attributes["orchd.process.status"] == "completed"

    call = one(spans, "step call oss")
    assert parent_of(call) == span_id(first_run)
    # The span id the OSS saw is the step's span.
    assert span_id(call) == span_of(recorder.headers("/call")[0]) == span_of(p.state["call_seen"])
    assert span_id(one(spans, "step in a thread")) == span_of(p.state["thread_seen"])
    assert call.attributes is not None
    assert call.attributes["orchd.step.name"] == "call oss"
    assert call.attributes["orchd.step.key"] == "call oss"
    assert call.attributes["orchd.step.status"] == "success"
    assert call.attributes["orchd.step.attempt"] == 1
    assert isinstance(call.attributes["orchd.step.duration_s"], float)
    assert call.start_time is not None and call.end_time is not None
    assert call.end_time >= call.start_time

    flaky = sorted(named(spans, "step flaky"), key=lambda s: s.start_time or 0)
    assert [(s.attributes or {}).get("orchd.step.attempt") for s in flaky] == [1, 2]
    assert [(s.attributes or {}).get("orchd.step.status") for s in flaky] == [
        "waiting",
        "success",
    ]
    assert not flaky[0].status.is_ok and "failed on purpose" in str(flaky[0].status.description)
    assert [parent_of(s) for s in flaky] == [span_id(first_run), span_id(second_run)]

    # The fork is a step span over its branches' spans, each over its own steps.
    gather = one(spans, "step Gather")
    assert parent_of(gather) == span_id(second_run)
    for index, step in ((0, "branch call"), (1, "branch thread")):
        branch = one(spans, f"branch Gather/{index}")
        assert parent_of(branch) == span_id(gather)
        inner = one(spans, f"step {step}")
        assert parent_of(inner) == span_id(branch)
        assert inner.attributes is not None
        assert inner.attributes["orchd.step.branch"] == f"Gather/{index}"
    assert span_id(one(spans, "step branch call")) == span_of(recorder.headers("/branch")[0])
    assert parent_of(one(spans, "step done")) == span_id(second_run)


async def test_children_start_spans_hang_under_their_parents_run(
    engine_factory: EngineFactory,
) -> None:
    exporter = InMemorySpanExporter()
    engine = await engine_factory(["trace_flows"], tracing=otel(exporter))
    pid = await engine.start("traced_parent", {"inputs": [{}, {}]})
    parent = await settle(engine, pid, "completed")
    await engine.close()
    spans = list(exporter.get_finished_spans())
    assert {f"{s.context.trace_id:032x}" for s in spans if s.context} == {parent.trace_id}
    fan_out_run = min(named(spans, "run traced_parent"), key=lambda s: s.start_time or 0)
    starts = named(spans, "start traced_child")
    assert len(starts) == 2 and {parent_of(s) for s in starts} == {span_id(fan_out_run)}
    assert {(s.attributes or {}).get("orchd.process.parent_id") for s in starts} == {pid}
    child_runs = named(spans, "run traced_child")
    assert {parent_of(r) for r in child_runs} == {span_id(s) for s in starts}
    assert one(spans, "start traced_parent").parent is None  # no traceparent: a new trace


async def test_a_callback_with_a_traceparent_is_linked_from_the_process_trace(
    engine_factory: EngineFactory,
) -> None:
    exporter = InMemorySpanExporter()
    engine = await engine_factory(["trace_flows"], tracing=otel(exporter))
    pid = await engine.start("traced_callback")
    p = await engine.wait(pid)
    assert p.status == "awaiting_callback"
    sender = f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-01"
    assert await engine.callback(p.state["asked_with"], {"ok": 1}, traceparent=sender) == pid
    p = await engine.wait(pid)
    assert p.status == "completed"
    await engine.close()
    spans = list(exporter.get_finished_spans())
    callback = one(spans, "callback")
    assert callback.context is not None and f"{callback.context.trace_id:032x}" == p.trace_id
    assert parent_of(callback) == span_id(one(spans, "start traced_callback"))
    [link] = callback.links
    assert f"{link.context.trace_id:032x}" == REMOTE_TRACE
    assert f"{link.context.span_id:016x}" == REMOTE_SPAN
    assert [e.name for e in callback.events] == ["callback arrived"]
    # The wait's answer is a step of the run the callback began.
    waits = named(spans, "step wait for oss")
    assert [(s.attributes or {}).get("orchd.step.status") for s in waits] == [
        "awaiting_callback",
        "success",
    ]


# -- the API and the console ----------------------------------------------------------------

TOKEN = "trace-test-token-0123456789abcdefghijkl"


@pytest.fixture
async def client(engine_factory: EngineFactory) -> AsyncIterator[TestClient[Any, Any]]:
    from orchd.api.app import create_app

    engine: Engine = await engine_factory(["trace_flows"], name="api.db")
    test_client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(engine, token=TOKEN, heartbeat=0.2))
    )
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


async def test_the_api_takes_a_traceparent_and_shows_the_trace_id(
    client: TestClient[Any, Any],
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ids = []
    for header in (REMOTE, "00-nonsense", None):
        headers = {**auth, **({"traceparent": header} if header else {})}
        resp = await client.post("/api/processes/traced_child", json={}, headers=headers)
        assert resp.status == 201, await resp.text()
        ids.append((await resp.json())["id"])
    traces = []
    for pid in ids:
        resp = await client.get(f"/api/processes/{pid}", headers=auth)
        traces.append((await resp.json())["trace_id"])
    assert traces[0] == REMOTE_TRACE
    assert all(TRACE_ID.fullmatch(t) for t in traces[1:]) and REMOTE_TRACE not in traces[1:]
    # The console's process page shows it too.
    resp = await client.post(
        "/ui/login", data={"token": TOKEN, "next": "/ui/"}, allow_redirects=False
    )
    assert resp.status == 303
    page = await client.get(f"/ui/processes/{ids[0]}")
    assert page.status == 200 and REMOTE_TRACE in await page.text()
