"""The bundled example workflows, end to end: a real Engine against a real fake OSS."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import anyio
import pytest
from aiohttp import web
from support.common import EngineFactory

from orchd import Engine, Process
from orchd.http import HttpClient
from orchd.model import Event
from orchd.testing.fakeoss import FakeOss


@pytest.fixture
async def oss() -> AsyncIterator[FakeOss]:
    # Every fifth request fails with 503: the workflows must get through that on retries.
    async with FakeOss(latency=0.002, error_rate=0.2, seed=7, provision_time=0.2) as server:
        yield server


@pytest.fixture
async def engine(
    engine_factory: EngineFactory, oss: FakeOss, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Engine]:
    monkeypatch.setenv("ORCHD_OSS_URL", oss.url)
    async with HttpClient(retries=8, backoff=0.005) as http:
        engine = await engine_factory(["orchd.examples"], name="db", resources={HttpClient: http})
        yield engine
        await engine.close()  # before the client it uses closes


@pytest.fixture
async def callbacks(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """The daemon's callback route, for the fake OSS's job callbacks, in front of ``engine``
    (``ORCHD_CALLBACK_URL`` points the example workflows at it)."""

    async def receive(request: web.Request) -> web.Response:
        await engine.callback(request.match_info["token"], await request.json())
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/api/callbacks/{token}", receive)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        monkeypatch.setenv("ORCHD_CALLBACK_URL", f"http://127.0.0.1:{runner.addresses[0][1]}")
        yield
    finally:
        await runner.cleanup()


async def reach(engine: Engine, pid: str, status: str) -> Process:
    """The process once it has reached ``status`` (from the engine's events, no polling)."""
    with anyio.fail_after(10):
        listen = cast(AsyncGenerator[Event, None], engine.listen(after=0))
        async with contextlib.aclosing(listen) as events:
            async for event in events:
                if event.process_id == pid and event.status == status:
                    break
    return await engine.get(pid)


async def create(engine: Engine, **form: Any) -> str:
    pid = await engine.start("create_node", form, reporter="test")
    process = await engine.wait(pid, timeout=10)
    assert process.status == "completed", process.error
    assert process.subscription_id is not None
    return process.subscription_id


def steps(process: Process) -> list[tuple[str, str]]:
    """The step records that moved the process on (not the waits and failed attempts)."""
    return [(s.name, s.status) for s in process.steps if s.status in ("success", "skipped")]


async def test_create_node(engine: Engine, oss: FakeOss) -> None:
    pid = await engine.start("create_node", {"name": "n1", "role": "core"}, reporter="test")
    process = await engine.wait(pid, timeout=10)
    assert process.status == "completed", process.error
    assert [name for name, _ in steps(process)] == [
        "init",
        "reserve_node",
        "wait_until_active",
        "activate",
        "done",
    ]
    sub = await engine.get_subscription(process.subscription_id or "")
    assert (sub.product, sub.customer_id, sub.status, sub.insync) == (
        "node",
        "demo",
        "active",
        True,
    )
    node_id = sub.attributes["node_id"]
    assert sub.attributes == {"node_id": node_id, "name": "n1", "role": "core"}
    assert oss.nodes[node_id]["status"] == "active"
    assert len(oss.nodes) == 1  # retried POSTs did not create a second node
    assert oss.stats.injected_errors > 0


async def test_create_node_rejects_a_bad_form(engine: Engine) -> None:
    with pytest.raises(Exception, match="role") as caught:
        await engine.start("create_node", {"name": "n1", "role": "spine"})
    assert getattr(caught.value, "status", None) == 422


async def test_modify_core_node_waits_for_confirmation(engine: Engine, oss: FakeOss) -> None:
    sid = await create(engine, name="c1", role="core")
    pid = await engine.start("modify_node", {"subscription_id": sid, "description": "uplink"})
    process = await engine.wait(pid, timeout=10)
    assert process.status == "suspended", process.error
    assert process.form is not None
    assert set(process.form["properties"]) == {"confirm", "window"}
    await engine.resume(pid, {"confirm": True, "window": "Sun 02:00-04:00"})
    process = await engine.wait(pid, timeout=10)
    assert process.status == "completed", process.error
    assert ("confirm_maintenance", "success") in steps(process)
    assert ("abort", "skipped") in steps(process)
    sub = await engine.get_subscription(sid)
    assert (sub.description, sub.insync, sub.status) == ("uplink", True, "active")
    node = oss.nodes[sub.attributes["node_id"]]
    assert (node["description"], node["maintenance_window"]) == ("uplink", "Sun 02:00-04:00")


async def test_modify_edge_node_needs_no_confirmation(engine: Engine, oss: FakeOss) -> None:
    sid = await create(engine, name="e1")
    pid = await engine.start("modify_node", {"subscription_id": sid, "role": "access"})
    process = await engine.wait(pid, timeout=10)
    assert process.status == "completed", process.error
    assert ("confirm_maintenance", "skipped") in steps(process)
    sub = await engine.get_subscription(sid)
    assert sub.attributes["role"] == "access" and sub.description == "edge node e1"
    assert oss.nodes[sub.attributes["node_id"]]["role"] == "access"


async def test_declined_maintenance_aborts(engine: Engine, oss: FakeOss) -> None:
    sid = await create(engine, name="c2", role="core")
    pid = await engine.start("modify_node", {"subscription_id": sid, "description": "x"})
    assert (await engine.wait(pid, timeout=10)).status == "suspended"
    await engine.resume(pid, {"confirm": False, "window": ""})
    process = await engine.wait(pid, timeout=10)
    assert process.status == "aborted"
    sub = await engine.get_subscription(sid)
    assert (sub.description, sub.insync) == ("core node c2", True)
    assert "description" not in oss.nodes[sub.attributes["node_id"]]


async def test_terminate_node(engine: Engine, oss: FakeOss) -> None:
    sid = await create(engine, name="t1")
    node_id = (await engine.get_subscription(sid)).attributes["node_id"]
    pid = await engine.start("terminate_node", {"subscription_id": sid})
    process = await engine.wait(pid, timeout=10)
    assert process.status == "completed", process.error
    assert [name for name, _ in steps(process)] == [
        "init",
        "delete_node",
        "wait_until_gone",
        "done",
    ]
    sub = await engine.get_subscription(sid)
    assert sub.status == "terminated" and sub.end_date is not None
    assert node_id not in oss.nodes


@pytest.mark.parametrize("job_time", [0.0, 0.05])
async def test_provision_port_completes_after_the_callback(
    engine: Engine, oss: FakeOss, callbacks: None, job_time: float
) -> None:
    # job_time 0: the callback may arrive before the action's checkpoint is written.
    oss.job_time = job_time
    sid = await create(engine, name="p1")
    pid = await engine.start(
        "provision_port", {"subscription_id": sid, "port": "xe-0/0/1", "vlan": 100}
    )
    process = await reach(engine, pid, "completed")
    assert process.state["callback_result"]["result"] == "ok"
    assert oss.jobs[process.state["job_id"]]["request"]["vlan"] == 100
    names = [name for name, _ in steps(process)]
    assert names == ["init", "request_port", "await_port", "confirm_port", "done"]
    sub = await engine.get_subscription(sid)
    assert sub.attributes["ports"] == [{"port": "xe-0/0/1", "vlan": 100}]
    assert sub.insync


async def test_provision_port_with_a_direct_callback(engine: Engine) -> None:
    sid = await create(engine, name="p2")
    pid = await engine.start("provision_port", {"subscription_id": sid, "port": "ge-1", "vlan": 7})
    # Nothing listens at ORCHD_CALLBACK_URL here: an operator answers in the OSS's place.
    await reach(engine, pid, "awaiting_callback")
    await engine.answer_callback(pid, {"result": "error", "reason": "no such port"})
    process = await engine.wait(pid, timeout=10)
    assert process.status == "failed"
    assert process.error is not None and "no such port" in process.error


async def test_find_faulty_nodes_reports_faulty_nodes(engine: Engine, oss: FakeOss) -> None:
    healthy = await create(engine, name="ok1")
    faulty = await create(engine, name="bad1")
    bad_node = (await engine.get_subscription(faulty)).attributes["node_id"]
    oss.set_status(bad_node, "error")
    pid = await engine.start("find_faulty_nodes")
    process = await engine.wait(pid, timeout=10)
    assert process.status == "completed", process.error
    assert process.state["checked"] == 2
    assert process.state["out_of_sync"] == [
        {"node_id": bad_node, "name": "bad1", "customer_id": "demo", "status": "error"}
    ]
    assert healthy != faulty


async def test_provision_ports_configures_every_port_in_its_own_branch(
    engine: Engine, oss: FakeOss, callbacks: None
) -> None:
    oss.job_time = 0.02
    sid = await create(engine, name="many")
    ports = [{"port": f"ge-0/0/{n}", "vlan": 100 + n} for n in range(6)]
    pid = await engine.start("provision_ports", {"subscription_id": sid, "ports": ports})
    process = await reach(engine, pid, "completed")
    assert [r["configured"] for r in process.state["port_results"]] == ports
    branches = {s.branch for s in process.steps if s.branch is not None}
    assert branches == {f"configure_ports/{n}" for n in range(6)}
    sub = await engine.get_subscription(sid)
    assert sub.attributes["ports"] == ports and sub.insync
