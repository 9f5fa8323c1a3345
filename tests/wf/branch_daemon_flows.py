"""Forking workflows in a daemon subprocess (tests/test_branches_daemon.py, README "Parallel
branches").

Steps record each run in ``$ORCHD_TEST_DIR`` (``runfiles``); an element named in ``fail`` fails
while the file ``<process id>.release`` does not exist.
"""

from __future__ import annotations

import asyncio
from typing import Any

from runfiles import record_run, released

from orchd import Form, State, begin, callback_step, done, foreach, init, parallel, step, workflow


class Ports(Form):
    ports: list[int]
    pause: float = 0.0
    fail: list[int] = []


@step("configure")
async def configure(process_id: str, item: int, pause: float, fail: list[int]) -> State:
    record_run(process_id, f"configure {item}")
    await asyncio.sleep(pause)
    if item in fail and not released(process_id):
        raise RuntimeError(f"port {item} refused the change")
    return {"configured": item * 10}


@step("verify")
async def verify(process_id: str, item: int, configured: int = -1) -> State:
    record_run(process_id, f"verify {item}")
    return {"verified": configured + 1}


@step("report")
def report(process_id: str, results: list[dict[str, Any]]) -> State:
    record_run(process_id, "report")
    return {"total": sum(r.get("verified", 0) for r in results)}


@workflow("Configures ports five at a time", initial_input_form=Ports)
def configure_ports():  # type: ignore[no-untyped-def]
    fan = foreach(
        "Configure ports",
        "ports",
        begin >> configure >> verify,
        into="results",
        max_concurrency=5,
    )
    return init >> fan >> report >> done


@step("order")
async def order(callback_token: str) -> State:
    return {"ordered": True}


@step("accept")
async def accept(callback_result: dict[str, Any]) -> State:
    return {"circuit": callback_result.get("circuit")}


@step("inventory")
async def inventory() -> State:
    return {"inventoried": True}


@workflow("One branch waits for a callback, one runs")
def provision():  # type: ignore[no-untyped-def]
    wait = callback_step("await circuit", order, accept)
    return init >> parallel("Provision", wait, begin >> inventory) >> done
