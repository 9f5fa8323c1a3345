"""Workflows the engine tests run (test_engine, test_lifecycle, test_status_machine, ...).

Tests steer and observe steps through engine resources (``Calls``, ``FailurePlan``, ``Gate``)
handed over by the fixtures in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import enum
import os
from datetime import datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

import msgspec
from steering import NO_FAILURES, Calls, FailurePlan

from orchd import (
    Form,
    State,
    Target,
    abort,
    callback_step,
    conditional,
    done,
    init,
    inputstep,
    retrystep,
    step,
    workflow,
)
from orchd.testing import Gate


class NodeForm(Form):
    name: str
    customer_id: str = "c1"


@step("create subscription")
def create_subscription(name: str, customer_id: str) -> State:
    return {
        "subscription": {
            "product": "node",
            "customer_id": customer_id,
            "description": f"node {name}",
            "attributes": {"name": name},
        }
    }


@step("activate")
async def activate(
    subscription: dict,  # type: ignore[type-arg]
    # A default plan, because create_node also serves tests that steer nothing.
    failures: FailurePlan = NO_FAILURES,
) -> State:
    failures.check("activate")
    return {"subscription": {**subscription, "status": "active"}}


@workflow("Create a node", initial_input_form=NodeForm)
def create_node():  # type: ignore[no-untyped-def]
    return init >> create_subscription >> activate >> done


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(msgspec.Struct):
    x: int
    y: int


@step("seed")
def seed() -> State:
    return {
        "uid": UUID("12345678-1234-5678-1234-567812345678"),
        "when": datetime(2026, 1, 2, 3, 4, 5),
        "amount": Decimal("12.50"),
        "colour": Colour.BLUE,
        "point": Point(1, 2),
        "numbers": ["1", "2"],
        "maybe": None,
    }


@step("use types")
def use_types(
    uid: UUID,
    when: datetime,
    amount: Decimal,
    colour: Colour,
    point: Point,
    numbers: list[int],
    maybe: int | None,
    mode: Literal["fast", "slow"] = "fast",
    missing_with_default: int = 7,
) -> State:
    return {
        "seen": {
            "uid": type(uid).__name__,
            "when": type(when).__name__,
            "amount": type(amount).__name__,
            "colour": type(colour).__name__,
            "point": type(point).__name__,
            "numbers": numbers,
            "maybe": maybe,
            "mode": mode,
            "default": missing_with_default,
        },
        "next_uid": uid,
        "later": when,
    }


@workflow("Typed State", target=Target.SYSTEM)
def typed():  # type: ignore[no-untyped-def]
    return init >> seed >> use_types >> done


@step("needs key")
def needs_key(absent_key: int) -> State:
    return {}


@workflow("A step whose key is missing", target=Target.SYSTEM)
def missing_key():  # type: ignore[no-untyped-def]
    return init >> needs_key >> done


@step("wrong type")
def wrong_type(count: int) -> State:
    return {}


@workflow("A step whose key has the wrong type")
def bad_type():  # type: ignore[no-untyped-def]
    return init >> wrong_type >> done


@step("returns list")
def returns_list() -> list[int]:
    return [1, 2]


@workflow("A step returning a non-dict", target=Target.SYSTEM)
def bad_return():  # type: ignore[no-untyped-def]
    return init >> returns_list >> done


@step("flaky")
def flaky(state: State, calls: Calls, failures: FailurePlan) -> State:
    calls.ran("flaky")
    failures.check("flaky")
    return {"flaky_ran": True, "saw_marker": state.get("marker")}


@step("mark")
def mark(calls: Calls) -> State:
    calls.ran("mark")
    return {"marker": 1}


@workflow("Fails until told otherwise", target=Target.SYSTEM)
def flaky_task():  # type: ignore[no-untyped-def]
    return init >> mark >> flaky >> done


@retrystep("call oss", max_attempts=3, backoff=0.05)
def call_oss(calls: Calls, failures: FailurePlan) -> State:
    calls.ran("call oss")
    failures.check("call oss")
    return {"oss": "ok"}


@workflow("Retries automatically", target=Target.SYSTEM)
def retrying():  # type: ignore[no-untyped-def]
    return init >> call_oss >> done


@retrystep("call oss in an hour", max_attempts=3, backoff=3600.0)
def call_oss_later(calls: Calls, failures: FailurePlan) -> State:
    calls.ran("call oss")
    failures.check("call oss")
    return {"oss": "ok"}


@workflow("Retries automatically, an hour later", target=Target.SYSTEM)
def retrying_later():  # type: ignore[no-untyped-def]
    """``waiting`` until someone acts (tests/test_status_machine.py): ``retrying`` goes on by
    itself after 0.05 s, and an action meant for ``waiting`` could find it running."""
    return init >> call_oss_later >> done


class Approval(Form):
    approved: bool
    comment: str = ""


@inputstep("approve")
def approve(name: str) -> type[Form]:
    return Approval


@step("after approval")
def after_approval(approved: bool, comment: str) -> State:
    return {"outcome": "approved" if approved else "rejected", "echo": comment}


@workflow("Waits for an approval", initial_input_form=NodeForm)
def needs_approval():  # type: ignore[no-untyped-def]
    return init >> approve >> after_approval >> done


@step("always")
def always() -> State:
    return {"always": True}


@step("only big")
def only_big() -> State:
    return {"big": True}


@workflow("Skips a step", target=Target.SYSTEM)
def conditional_task():  # type: ignore[no-untyped-def]
    return init >> always >> conditional(lambda s: s.get("size", 0) > 10)(only_big) >> done


@step("ask oss")
def ask_oss(callback_token: str) -> State:
    return {"asked_with": callback_token}


@step("check answer")
def check_answer(callback_result: dict) -> State:  # type: ignore[type-arg]
    return {"answer_ok": callback_result.get("ok") is True}


@workflow("Waits for a callback", target=Target.SYSTEM)
def with_callback():  # type: ignore[no-untyped-def]
    return init >> callback_step("wait for oss", ask_oss, check_answer) >> done


@step("change description")
def change_description(subscription: dict, description: str = "changed") -> State:  # type: ignore[type-arg]
    return {"subscription": {**subscription, "description": description}}


@workflow("Modify a node", target=Target.MODIFY)
def modify_node():  # type: ignore[no-untyped-def]
    return init >> change_description >> done


@inputstep("approve modify")
def approve_modify() -> type[Form]:
    return Approval


@workflow("Modify a node, with a pause", target=Target.MODIFY)
def modify_node_paused():  # type: ignore[no-untyped-def]
    return init >> change_description >> approve_modify >> done


@workflow("Terminate a node", target=Target.TERMINATE)
def terminate_node():  # type: ignore[no-untyped-def]
    return init >> done


@workflow("Aborts itself", target=Target.SYSTEM)
def self_abort():  # type: ignore[no-untyped-def]
    return init >> always >> abort >> only_big >> done


@step("slow")
async def slow(calls: Calls, gate: Gate) -> State:
    calls.ran("slow")
    await gate.passage()
    return {"slow": "done"}


@workflow("Has a slow step", target=Target.SYSTEM)
def slow_task():  # type: ignore[no-untyped-def]
    return init >> slow >> always >> done


# -- for the crash-recovery test: side effects go to a file named by $ORCHD_TEST_LOG -----


def _log_effect(name: str, pid: str) -> None:
    path = os.environ["ORCHD_TEST_LOG"]
    with open(path, "a") as f:
        f.write(f"{pid} {name}\n")
        f.flush()
        os.fsync(f.fileno())


def _make_effect_step(n: int):  # type: ignore[no-untyped-def]
    @step(f"effect {n}")
    async def effect(process_id: str) -> State:
        _log_effect(f"effect {n}", process_id)
        await asyncio.sleep(0.002)
        return {f"effect_{n}": True}

    return effect


EFFECTS = [_make_effect_step(n) for n in range(8)]


@workflow("Ten steps with side effects", target=Target.SYSTEM)
def effects():  # type: ignore[no-untyped-def]
    flow = init
    for s in EFFECTS:
        flow = flow >> s
    return flow >> done


@step("too slow", timeout=0.05)
async def too_slow() -> State:
    await asyncio.sleep(10)
    return {}


@workflow("A step that runs past its timeout", target=Target.SYSTEM)
def timing_out():  # type: ignore[no-untyped-def]
    return init >> too_slow >> done


@step("oss timeout")
def oss_timeout() -> State:
    raise TimeoutError("the OSS did not answer within 30 s")


@workflow("A step that raises its own TimeoutError", target=Target.SYSTEM)
def own_timeout():  # type: ignore[no-untyped-def]
    return init >> oss_timeout >> done


@step("blocks the loop")
async def blocks_the_loop() -> State:
    import time

    time.sleep(0.6)
    return {}


@workflow("An async step that blocks the event loop", target=Target.SYSTEM)
def blocking():  # type: ignore[no-untyped-def]
    return init >> blocks_the_loop >> done


@step("bad subscription")
def bad_subscription(kind: str) -> State:
    subs = {
        "unknown_field": {"product": "node", "customer_id": "c1", "colour": "red"},
        "no_product": {"customer_id": "c1"},
        "bad_status": {"product": "node", "customer_id": "c1", "status": "sleeping"},
        "list_id": {"id": ["x"], "product": "node", "customer_id": "c1"},
        "text_id": {"id": "node-1", "product": "node", "customer_id": "c1"},
        "object_date": {"product": "node", "customer_id": "c1", "start_date": {"y": 2026}},
    }
    return {"subscription": subs[kind]}


@workflow("Puts an invalid subscription into State")
def invalid_subscription():  # type: ignore[no-untyped-def]
    return init >> bad_subscription >> done
