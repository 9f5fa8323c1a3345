"""Forking workflows (tests/test_branches.py, README "Parallel branches").

Steps note what they do in the test's ``Ledger`` resource (every call, with its start and end
times), and fail while the ledger says so: a test steers them through the ledger, not through
module globals.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from orchd import (
    Form,
    State,
    begin,
    callback_step,
    conditional,
    done,
    foreach,
    init,
    parallel,
    retrystep,
    step,
    workflow,
)
from orchd.testing import Gate


class Ledger:
    """What the branch steps did, and what they are told to do."""

    def __init__(self) -> None:
        #: (step, what it was called for) of every call, in order.
        self.calls: list[tuple[str, Any]] = []
        #: (item, started, finished) of every configure_port call.
        self.spans: list[tuple[Any, float, float]] = []
        #: Items (or step names) that fail while listed here.
        self.failing: set[Any] = set()
        self.pause = 0.0

    def note(self, name: str, what: Any = None) -> None:
        self.calls.append((name, what))

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.calls if n == name)

    def check(self, what: Any) -> None:
        if what in self.failing:
            raise RuntimeError(f"{what} is failing")


class Plan(Form):
    """What a test gives a forking workflow to work on."""

    node: str = "n1"
    ports: list[Any] = []
    numbers: list[int] = []
    links: list[dict[str, Any]] = []


# -- parallel -------------------------------------------------------------------------------


@step("read IMS")
async def read_ims(node: str, ledger: Ledger) -> State:
    ledger.note("read IMS", node)
    ledger.check("read IMS")
    return {"ims_port": f"{node}:ge-0/0/1"}


@step("read IPAM")
def read_ipam(node: str, ledger: Ledger) -> State:  # a sync step: runs in the step threads
    ledger.note("read IPAM", node)
    return {"ipam_prefix": "10.0.0.0/31"}


@step("check IPAM")
async def check_ipam(ipam_prefix: str, ledger: Ledger) -> State:
    ledger.note("check IPAM", ipam_prefix)
    ledger.check("check IPAM")
    return {"ipam_ok": True}


@step("decide")
async def decide(ims_port: str, ipam_prefix: str, ipam_ok: bool) -> State:
    return {"decision": f"{ims_port} {ipam_prefix} {ipam_ok}"}


@workflow("Gathers facts from two systems at once", initial_input_form=Plan)
def gather():  # type: ignore[no-untyped-def]
    facts = parallel("Gather facts", begin >> read_ims, begin >> read_ipam >> check_ipam)
    return init >> facts >> decide >> done


@step("say left")
async def say_left() -> State:
    return {"colour": "left", "left_only": 1}


@step("say right")
async def say_right() -> State:
    return {"colour": "right"}


@step("say same")
async def say_same() -> State:
    return {"colour": "left"}


@workflow("Two branches set one key differently", initial_input_form=Plan)
def clash():  # type: ignore[no-untyped-def]
    return init >> parallel("Clash", begin >> say_left, begin >> say_right) >> done


@workflow("Two branches set one key alike", initial_input_form=Plan)
def agree():  # type: ignore[no-untyped-def]
    return init >> parallel("Agree", begin >> say_left, begin >> say_same) >> done


# -- foreach --------------------------------------------------------------------------------


@step("configure port")
async def configure_port(item: Any, item_index: int, ledger: Ledger) -> State:
    started = time.time()
    ledger.note("configure port", item)
    if ledger.pause:
        await asyncio.sleep(ledger.pause)
    ledger.spans.append((item, started, time.time()))
    ledger.check(item)
    return {"configured": f"port {item} (#{item_index})"}


@workflow("Configures ports two at a time", initial_input_form=Plan)
def ports():  # type: ignore[no-untyped-def]
    fan = foreach(
        "Configure ports",
        "ports",
        begin >> configure_port,
        into="port_results",
        max_concurrency=2,
    )
    return init >> fan >> done


@workflow("Configures ports, keeping nothing", initial_input_form=Plan)
def ports_dropped():  # type: ignore[no-untyped-def]
    return init >> foreach("Configure ports", "ports", begin >> configure_port) >> done


@step("use vlan")
async def use_vlan(vlan: int, name: str) -> State:
    return {"label": f"{name}@{vlan}", "vlan": vlan}


@workflow("A foreach over dicts sees their keys", initial_input_form=Plan)
def dict_items():  # type: ignore[no-untyped-def]
    return init >> foreach("Label", "links", begin >> use_vlan, into="labels") >> done


# -- waiting in branches --------------------------------------------------------------------


@retrystep("reserve", max_attempts=5, backoff=0.2)
async def reserve(ledger: Ledger) -> State:
    ledger.note("reserve")
    ledger.check("reserve")
    return {"reserved": True}


@step("count")
async def count(ledger: Ledger) -> State:
    ledger.note("count")
    return {"counted": True}


@workflow("One branch retries, the other runs on", initial_input_form=Plan)
def flaky():  # type: ignore[no-untyped-def]
    return init >> parallel("Prepare", begin >> reserve, begin >> count) >> done


@step("order circuit")
async def order_circuit(callback_token: str, ledger: Ledger) -> State:
    ledger.note("order circuit", callback_token)
    return {"ordered": True}


@step("check circuit")
async def check_circuit(callback_result: dict[str, Any]) -> State:
    return {"circuit": callback_result["circuit"]}


@workflow("One branch waits for a callback", initial_input_form=Plan)
def circuit():  # type: ignore[no-untyped-def]
    order = callback_step("await circuit", order_circuit, check_circuit)
    return init >> parallel("Provision", order, begin >> count) >> done


@workflow("Two branches wait for callbacks", initial_input_form=Plan)
def two_circuits():  # type: ignore[no-untyped-def]
    order = callback_step("await circuit", order_circuit, check_circuit)
    return init >> parallel("Provision", order, order) >> done


# -- nesting and conditions -----------------------------------------------------------------


@step("left half")
async def left_half(item: int) -> State:
    return {"left": item * 10}


@step("right half")
async def right_half(item: int) -> State:
    return {"right": item * 100}


@workflow("A parallel inside a foreach", initial_input_form=Plan)
def halves():  # type: ignore[no-untyped-def]
    inner = parallel("Halves", begin >> left_half, begin >> right_half)
    return init >> foreach("Each", "numbers", begin >> inner, into="results") >> done


@step("sum them")
async def sum_them(results: list[dict[str, Any]]) -> State:
    return {"total": sum(r["configured_sum"] for r in results)}


@step("configured sum")
async def configured_sum(item: int) -> State:
    return {"configured_sum": item}


@step("other side")
async def other_side() -> State:
    return {"other": "done"}


@workflow("A foreach inside a parallel", initial_input_form=Plan)
def fan_in_branch():  # type: ignore[no-untyped-def]
    inner = foreach("Each", "numbers", begin >> configured_sum, into="results")
    return init >> parallel("Outer", begin >> inner >> sum_them, begin >> other_side) >> done


@step("only big")
async def only_big(item: int, ledger: Ledger) -> State:
    ledger.note("only big", item)
    return {"big": True}


@workflow("A condition inside a branch", initial_input_form=Plan)
def conditions():  # type: ignore[no-untyped-def]
    big = conditional(lambda state: state["item"] > 10)(only_big)
    return init >> foreach("Sizes", "numbers", begin >> big, into="sizes") >> done


# -- holding (abort, restarts) --------------------------------------------------------------


@step("quick")
async def quick(ledger: Ledger) -> State:
    ledger.note("quick")
    return {"quick": True}


@step("hold")
async def hold(gate: Gate, ledger: Ledger) -> State:
    ledger.note("hold")
    await gate.passage()
    return {"held": True}


@step("after hold")
async def after_hold(ledger: Ledger) -> State:
    ledger.note("after hold")
    return {"after_hold": True}


@workflow("One branch holds at the gate", initial_input_form=Plan)
def held():  # type: ignore[no-untyped-def]
    return init >> parallel("Hold", begin >> quick, begin >> hold >> after_hold) >> done


@step("hold item")
async def hold_item(item: int, gate: Gate, ledger: Ledger) -> State:
    ledger.note("hold item", item)
    if item % 2:
        await gate.passage()
    return {"seen": item}


@workflow("Odd elements hold at the gate", initial_input_form=Plan)
def held_items():  # type: ignore[no-untyped-def]
    return init >> foreach("Hold odd", "numbers", begin >> hold_item, into="seen") >> done


@workflow("A foreach over a string", initial_input_form=Plan)
def not_a_list():  # type: ignore[no-untyped-def]
    return init >> foreach("Bad", "node", begin >> configure_port) >> done


@workflow("A branch's callback may time out", initial_input_form=Plan)
def circuit_deadline():  # type: ignore[no-untyped-def]
    order = callback_step("await circuit", order_circuit, check_circuit, timeout=0.3)
    return init >> parallel("Provision", order, begin >> count) >> done


@retrystep("reserve item", backoff=0.1)
async def reserve_item(item: int, ledger: Ledger) -> State:
    ledger.note("reserve item", item)
    if ledger.count("reserve item") <= len(ledger.failing):
        raise RuntimeError(f"item {item}: not yet")
    return {"reserved": item}


@workflow("Several branches wait for their retries", initial_input_form=Plan)
def retry_many():  # type: ignore[no-untyped-def]
    return init >> foreach("Reserve", "numbers", begin >> reserve_item, into="reserved") >> done
