"""A refused form names every field at fault, not only the first (422 with ``errors``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from tests_support import DatabaseFactory

from orchd import Engine
from orchd.api.app import create_app
from orchd.errors import FormValidationError

pytestmark = pytest.mark.anyio


@pytest.fixture
async def engine(database_factory: DatabaseFactory) -> AsyncIterator[Engine]:
    database = await database_factory("orchd.db")
    async with Engine(database=database, workflows=["form_flows"]) as e:
        yield e


async def test_every_wrong_field_is_listed(engine: Engine) -> None:
    bad = {"vlan": 0, "port": {"speed": "fast"}, "mtu": "big", "colour": "red"}
    with pytest.raises(FormValidationError) as err:
        await engine.start("configure_port", bad)
    at_fault = sorted(tuple(map(str, e["loc"])) for e in err.value.errors)
    assert at_fault == [("colour",), ("mtu",), ("name",), ("port", "speed"), ("vlan",)]
    assert all(e["msg"] for e in err.value.errors)


async def test_a_form_with_one_wrong_field_lists_just_that_one(engine: Engine) -> None:
    with pytest.raises(FormValidationError) as err:
        await engine.start("configure_port", {"name": "p1", "vlan": 5000, "port": {"speed": 1}})
    assert [e["loc"] for e in err.value.errors] == [["vlan"]]


async def test_the_api_answers_422_with_every_field(engine: Engine) -> None:
    client = TestClient(TestServer(create_app(engine)))
    await client.start_server()
    try:
        resp = await client.post("/api/processes/configure_port", json={"vlan": "x"})
        assert resp.status == 422
        body = await resp.json()
    finally:
        await client.close()
    assert {e["loc"][0] for e in body["errors"]} == {"name", "vlan", "port"}
    assert (await engine.list_processes()).items == []
