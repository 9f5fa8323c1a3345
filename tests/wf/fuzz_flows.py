"""Workflows for tests/test_bad_input.py and the API fuzz (tests/test_fuzz.py).

They run in a real ``orchd serve`` subprocess and talk to the test through files in
``$ORCHD_TEST_DIR``: ``<process id>.<step>.runs`` gets one line per run of a step, and a step that
waits does so until ``<process id>.release`` appears.

Two environment variables change the module as a test restarts the daemon:
``ORCHD_FUZZ_FLOWS_VERSION`` picks the shape of ``fuzz_versioned`` (``A``, ``renamed``, ``removed``,
``inserted``), and ``ORCHD_FUZZ_FLOWS_IMPORT_ERROR`` makes importing the module fail.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from runfiles import held, record_run, released
from shared_steps import boom, tick

from orchd import (
    Form,
    State,
    StepList,
    Target,
    callback_step,
    done,
    init,
    inputstep,
    retrystep,
    step,
    workflow,
)

if os.environ.get("ORCHD_FUZZ_FLOWS_IMPORT_ERROR"):
    raise RuntimeError(os.environ["ORCHD_FUZZ_FLOWS_IMPORT_ERROR"])

VERSION = os.environ.get("ORCHD_FUZZ_FLOWS_VERSION", "A")
#: How long a waiting step waits for its release file at most, so nothing hangs for ever.
WAIT_LIMIT = 60.0


# -- the fuzz daemon's workflows: something in every status ------------------------------------


class NodeForm(Form):
    name: str
    size: int = 1
    tags: list[str] = []


class CountForm(Form):
    count: int
    note: str = ""


@step("make subscription")
def make_subscription(name: str, size: int) -> State:
    return {
        "subscription": {"product": "node", "customer_id": "fuzz", "description": name},
        "double": size * 2,
    }


@workflow("Create a node", initial_input_form=NodeForm)
def fuzz_create() -> StepList:
    return init >> make_subscription >> done


@inputstep("confirm")
def confirm() -> type[Form]:
    return CountForm


@workflow("Modify a node", target=Target.MODIFY)
def fuzz_modify() -> StepList:
    return init >> confirm >> done


@inputstep("ask count")
def ask_count() -> type[Form]:
    return CountForm


@workflow("Ask for a count", target=Target.SYSTEM)
def fuzz_ask() -> StepList:
    return init >> ask_count >> done


@workflow("Always fails", target=Target.SYSTEM)
def fuzz_fail() -> StepList:
    return init >> boom >> done


@step("wait for release")
async def wait_for_release(process_id: str) -> State:
    record_run(process_id, "wait for release")
    return {"released": await held(process_id, WAIT_LIMIT)}


@workflow("Runs until the test releases it", target=Target.SYSTEM)
def fuzz_hold() -> StepList:
    return init >> wait_for_release >> done


@retrystep("flaky", backoff=3600.0)
def flaky() -> State:
    raise ConnectionError("the other side is down")


@workflow("Retries a failing step later", target=Target.SYSTEM)
def fuzz_waiting() -> StepList:
    return init >> flaky >> done


@step("send request")
def send_request(callback_token: str) -> State:
    return {"sent_with": callback_token}


@step("check answer")
def check_answer(callback_result: Any) -> State:
    return {"answer_ok": isinstance(callback_result, dict) and callback_result.get("ok") is True}


@workflow("Waits for an external system", target=Target.SYSTEM)
def fuzz_callback() -> StepList:
    return init >> callback_step("external", send_request, check_answer) >> done


@workflow("A task to schedule", target=Target.SYSTEM)
def fuzz_tick() -> StepList:
    return init >> tick >> done


# -- misbehaving workflow code ----------------------------------------------------------------


class _Opaque:
    """Nothing msgspec knows how to encode."""


def _returns(name: str, value: Any) -> StepList:
    @step(name)
    def give() -> Any:
        return value() if callable(value) else value

    return init >> give >> done


def _self_referencing() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return {"loop": loop}


@workflow("A step returns a list", target=Target.SYSTEM)
def bad_list() -> StepList:
    return _returns("returns a list", lambda: [1, 2, 3])


@workflow("A step returns a string", target=Target.SYSTEM)
def bad_str() -> StepList:
    return _returns("returns a string", lambda: "done")


@workflow("A step returns an object()", target=Target.SYSTEM)
def bad_object() -> StepList:
    return _returns("returns an object", lambda: {"thing": object()})


@workflow("A step returns an instance of a plain class", target=Target.SYSTEM)
def bad_instance() -> StepList:
    return _returns("returns an instance", lambda: {"thing": _Opaque()})


@workflow("A step returns a set", target=Target.SYSTEM)
def bad_set() -> StepList:
    return _returns("returns a set", lambda: {"tags": {"a", "b"}})


@workflow("A step returns a dict with a tuple key", target=Target.SYSTEM)
def bad_key() -> StepList:
    return _returns("returns a tuple key", lambda: {("a", "b"): 1})


@workflow("A step returns a dict that contains itself", target=Target.SYSTEM)
def bad_cycle() -> StepList:
    return _returns("returns a cycle", _self_referencing)


@step("never returns", timeout=0.5)
async def never_returns() -> State:
    await asyncio.Event().wait()
    return {}


@workflow("An async step that never returns", target=Target.SYSTEM)
def hangs() -> StepList:
    return init >> never_returns >> done


@step("never returns in a thread", timeout=0.5)
def never_returns_in_a_thread(process_id: str) -> State:
    # A thread cannot be interrupted: it polls, so the daemon's exit is not held up for long.
    deadline = time.monotonic() + WAIT_LIMIT
    while not released(process_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {}


@workflow("A plain step that never returns", target=Target.SYSTEM)
def hangs_in_a_thread() -> StepList:
    return init >> never_returns_in_a_thread >> done


# -- a workflow whose shape changes between two runs of the daemon -----------------------------


@step("prepare")
def prepare(process_id: str) -> State:
    record_run(process_id, "prepare")
    return {"prepared": True}


@step("wait for release, renamed")
async def wait_renamed(process_id: str) -> State:
    record_run(process_id, "wait for release, renamed")
    return {"released": True}


@step("extra")
def extra(process_id: str) -> State:
    record_run(process_id, "extra")
    return {}


@step("finish")
def finish(process_id: str) -> State:
    record_run(process_id, "finish")
    return {"finished": True}


_SHAPES = {
    "A": lambda: init >> prepare >> wait_for_release >> finish >> done,
    "renamed": lambda: init >> prepare >> wait_renamed >> finish >> done,
    "removed": lambda: init >> prepare >> finish >> done,
    "inserted": lambda: init >> extra >> prepare >> wait_for_release >> finish >> done,
}


@workflow("Changes shape with ORCHD_FUZZ_FLOWS_VERSION", target=Target.SYSTEM)
def fuzz_versioned() -> StepList:
    return _SHAPES[VERSION]()
