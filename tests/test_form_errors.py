"""A refused form names every field at fault, not only the first (422 with ``errors``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support.common import engine_fixture

from orchd import Engine
from orchd.errors import FormValidationError

pytestmark = pytest.mark.anyio

Serve = Callable[..., Awaitable[Any]]


engine = engine_fixture("form_flows")


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


async def test_the_api_answers_422_with_every_field(engine: Engine, app_client: Serve) -> None:
    client = await app_client(engine)
    resp = await client.post("/api/processes/configure_port", json={"vlan": "x"})
    assert resp.status == 422
    body = await resp.json()
    assert {e["loc"][0] for e in body["errors"]} == {"name", "vlan", "port"}
    assert (await engine.list_processes()).items == []
