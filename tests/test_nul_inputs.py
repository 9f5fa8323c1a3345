"""What a client sends holding the character U+0000 is refused with a 422 naming the field, and
changes nothing: orchd stores none (PostgreSQL refuses it in jsonb and in text, and a SQLite
database stays movable to PostgreSQL). Found by the fuzz campaign: a skip whose reason held one
answered 500."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support.common import EngineFactory

from orchd.errors import FormValidationError
from orchd.model import ProcessStatus


async def test_a_skip_whose_reason_holds_u0000_is_a_422_naming_reason_and_the_process_stays_failed(
    engine_factory: EngineFactory, app_client: Callable[..., Awaitable[Any]]
) -> None:
    engine = await engine_factory(["nul_flows"])
    client = await app_client(engine)
    pid = await engine.start("returns_nul", {"text": "fine"})
    assert (await engine.wait(pid, 30)).status == ProcessStatus.FAILED
    resp = await client.post(f"/api/processes/{pid}/skip", json={"reason": "a\x00b"})
    assert resp.status == 422 and resp.content_type == "application/problem+json"
    body = await resp.json(content_type=None)
    assert body["errors"] == [{"loc": ["reason"], "msg": "holds the character U+0000"}]
    process = await engine.get(pid)
    assert process.status == ProcessStatus.FAILED
    assert [s.status for s in process.steps if s.name == "add a NUL"] == ["failed"]


async def test_a_start_holding_u0000_deep_in_its_input_names_the_path_to_it(
    engine_factory: EngineFactory,
) -> None:
    engine = await engine_factory(["nul_flows"])
    with pytest.raises(FormValidationError) as refused:
        await engine.start("returns_nul", {"text": "ok", "extra": {"list": ["x", "y\x00"]}})
    assert refused.value.errors == [
        {"loc": ["extra", "list", 1], "msg": "holds the character U+0000"}
    ]
    assert "extra.list[1] holds the character U+0000" in str(refused.value)
    assert (await engine.list_processes(limit=10)).items == []


async def test_a_callback_answer_holding_u0000_is_refused_and_the_wait_still_takes_a_good_one(
    engine_factory: EngineFactory,
) -> None:
    engine = await engine_factory(["engine_flows"])
    pid = await engine.start("with_callback", {})
    process = await engine.wait(pid, 30)
    assert process.status == ProcessStatus.AWAITING_CALLBACK
    token = process.state["asked_with"]
    with pytest.raises(FormValidationError) as refused:
        await engine.callback(token, {"ok": "x\x00"})
    assert refused.value.errors == [{"loc": ["ok"], "msg": "holds the character U+0000"}]
    with pytest.raises(FormValidationError):
        await engine.answer_callback(pid, {"ok": "x\x00"}, reporter="ops")
    assert (await engine.get(pid)).status == ProcessStatus.AWAITING_CALLBACK
    await engine.callback(token, {"ok": True})
    done = await engine.wait(pid, 30)
    assert done.status == ProcessStatus.COMPLETED and done.state["answer_ok"] is True


@pytest.mark.parametrize(
    "path", ["/api/subscriptions?q=a%00", "/api/processes?workflow=a%00", "/api/processes?q=%00"]
)
async def test_a_list_filter_holding_u0000_is_a_400_naming_the_parameter(
    engine_factory: EngineFactory, app_client: Callable[..., Awaitable[Any]], path: str
) -> None:
    client = await app_client(await engine_factory(["engine_flows"]))
    resp = await client.get(path)
    assert resp.status == 400 and resp.content_type == "application/problem+json"
    body = await resp.json(content_type=None)
    name = path.split("?")[1].split("=")[0]
    assert body["detail"].startswith(f"{name}: holds the character U+0000")


async def test_a_step_whose_error_holds_u0000_fails_its_process_showing_it_escaped(
    engine_factory: EngineFactory,
) -> None:
    """PostgreSQL's text refuses U+0000: the failure was never recorded and the process stayed
    running."""
    engine = await engine_factory(["nul_flows"])
    pid = await engine.start("raises_nul", {})
    process = await engine.wait(pid, 30)
    assert process.status == ProcessStatus.FAILED
    assert process.error == "ValueError: bad\\x00value"
    (failed,) = [s for s in process.steps if s.name == "raise a NUL"]
    assert failed.traceback is not None and "bad\\x00value" in failed.traceback


@pytest.mark.parametrize("path", ["/api/processes/{id}/callback", "/api/callbacks/{token}"])
async def test_the_openapi_document_says_a_callback_answer_may_be_refused_with_422(
    engine_factory: EngineFactory, app_client: Callable[..., Awaitable[Any]], path: str
) -> None:
    client = await app_client(await engine_factory(["engine_flows"]))
    document = await (await client.get("/api/openapi.json")).json()
    assert "422" in document["paths"][path]["post"]["responses"]
