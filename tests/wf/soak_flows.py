"""Workflows of the crash-fault soak test (tests/test_soak.py), run by a real ``orchd serve``.

Every step with a side effect appends one line to ``$ORCHD_SOAK_LOG``, fsynced before the step
returns::

    <process id> <step name> <nonce> <daemon pid> <ok|fail>

and leaves its nonce where its step record keeps it: under the State key ``ran:<step name>``
(so in the record's delta) when it succeeds, in the error message when it fails. The test
matches the log with the committed records by nonce, so it knows which runs were committed
and which were lost to a kill.

Steps that fail on purpose count their attempts in ``$ORCHD_SOAK_DIR/<process id>.<step>``
(one fsynced line per attempt): the count survives a restart, so a process fails at most as
often as its input says and then succeeds. Everything else a driver needs (what to answer,
what to abort, which MODIFY/TERMINATE to start on a subscription) is in the input, so it can
be read back from the process's State.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
from pathlib import Path
from typing import Any

from orchd import (
    Form,
    State,
    Target,
    begin,
    callback_step,
    conditional,
    done,
    foreach,
    init,
    inputstep,
    parallel,
    retrystep,
    step,
    workflow,
)

#: The State key under which a step leaves the nonce of its committed run.
RAN = "ran:"


def _effect(process_id: str, name: str, outcome: str = "ok") -> str:
    """Append this run's line to the effect log (one write, then fsync); return its nonce."""
    nonce = secrets.token_hex(8)
    line = f"{process_id} {name} {nonce} {os.getpid()} {outcome}\n".encode()
    fd = os.open(os.environ["ORCHD_SOAK_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return nonce


def _attempt(process_id: str, name: str) -> int:
    """Count one more attempt of this step for this process; return how many came before."""
    path = Path(os.environ["ORCHD_SOAK_DIR"]) / f"{process_id}.{name.replace('/', '_')}"
    before = len(path.read_text().splitlines()) if path.exists() else 0
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return before


def _maybe_fail(process_id: str, name: str, times: int) -> State:
    """Fail the first ``times`` attempts, then succeed; log the effect either way."""
    if _attempt(process_id, name) < times:
        nonce = _effect(process_id, name, "fail")
        raise RuntimeError(f"planned failure nonce={nonce}")
    return {RAN + name: _effect(process_id, name)}


def _after(value: State) -> State:
    """A sync step's tail: the effect has happened, the step is not done yet."""
    time.sleep(random.uniform(0.002, 0.05))
    return value


async def _pause(value: State) -> State:
    """An async step's tail: kills land here, between the side effect and the checkpoint."""
    await asyncio.sleep(random.uniform(0.005, 0.1))
    return value


# -- plain steps ------------------------------------------------------------------------------


@step("prepare")
async def prepare(process_id: str) -> State:
    return await _pause({RAN + "prepare": _effect(process_id, "prepare")})


@step("work")
def work(process_id: str) -> State:
    # A sync step: it runs in a worker thread.
    return _after({RAN + "work": _effect(process_id, "work"), "worked": True})


@step("extra")
async def extra(process_id: str) -> State:
    return await _pause({RAN + "extra": _effect(process_id, "extra")})


@step("finish")
async def finish(process_id: str) -> State:
    return await _pause({RAN + "finish": _effect(process_id, "finish")})


@workflow("Soak: plain steps, one of them conditional", target=Target.SYSTEM)
def soak_plain():  # type: ignore[no-untyped-def]
    return init >> prepare >> work >> conditional(lambda s: s.get("extra"))(extra) >> finish >> done


# -- failing (retried by hand) and retrystep (retried automatically) --------------------------


@step("flaky")
def flaky(process_id: str, fail_times: int = 1) -> State:
    return _after(_maybe_fail(process_id, "flaky", fail_times))


@workflow("Soak: a step fails, then succeeds on a retry", target=Target.SYSTEM)
def soak_failing():  # type: ignore[no-untyped-def]
    return init >> prepare >> flaky >> finish >> done


@retrystep("call-oss")
async def call_oss(process_id: str, retry_times: int = 1) -> State:
    return await _pause(_maybe_fail(process_id, "call-oss", retry_times))


@workflow("Soak: a retrystep waits, then succeeds", target=Target.SYSTEM)
def soak_retrying():  # type: ignore[no-untyped-def]
    return init >> prepare >> call_oss >> finish >> done


# -- suspended (resumed or aborted by the driver) ---------------------------------------------


class Approval(Form):
    approved: bool
    note: str = ""


@inputstep("approve")
def approve() -> type[Form]:
    return Approval


@step("after-approval")
async def after_approval(process_id: str, approved: bool, note: str) -> State:
    effect = _effect(process_id, "after-approval")
    return await _pause({RAN + "after-approval": effect, "echo": note})


@workflow("Soak: suspends for an approval", target=Target.SYSTEM)
def soak_suspend():  # type: ignore[no-untyped-def]
    return init >> prepare >> approve >> after_approval >> done


# -- callback ---------------------------------------------------------------------------------


@step("ask-oss")
async def ask_oss(process_id: str, callback_token: str) -> State:
    effect = _effect(process_id, "ask-oss")
    return await _pause({RAN + "ask-oss": effect, "asked_with": callback_token})


@step("check-answer")
def check_answer(process_id: str, callback_result: dict[str, Any]) -> State:
    if callback_result.get("ok") is not True:
        raise ValueError(f"unexpected callback payload {callback_result!r}")
    return _after({RAN + "check-answer": _effect(process_id, "check-answer")})


@workflow("Soak: waits for an external callback", target=Target.SYSTEM)
def soak_callback():  # type: ignore[no-untyped-def]
    return init >> callback_step("await-oss", ask_oss, check_answer) >> finish >> done


# -- subscriptions ----------------------------------------------------------------------------


@step("make-subscription")
async def make_subscription(process_id: str, name: str, customer: str) -> State:
    subscription = {
        "product": "soak",
        "customer_id": customer,
        "description": f"soak {name}",
        "attributes": {"name": name, "bumps": 0},
    }
    effect = _effect(process_id, "make-subscription")
    return await _pause({RAN + "make-subscription": effect, "subscription": subscription})


@step("provision")
def provision(process_id: str, subscription: dict[str, Any]) -> State:
    changed = {**subscription, "status": "provisioning"}
    return _after({RAN + "provision": _effect(process_id, "provision"), "subscription": changed})


@step("activate")
async def activate(process_id: str, subscription: dict[str, Any]) -> State:
    changed = {**subscription, "status": "active", "start_date": "2026-01-01"}
    effect = _effect(process_id, "activate")
    return await _pause({RAN + "activate": effect, "subscription": changed})


@workflow("Soak: create a subscription", target=Target.CREATE)
def soak_create():  # type: ignore[no-untyped-def]
    return init >> make_subscription >> provision >> activate >> done


@step("bump")
async def bump(process_id: str, subscription: dict[str, Any]) -> State:
    attributes = dict(subscription["attributes"])
    attributes["bumps"] = attributes.get("bumps", 0) + 1
    changed = {**subscription, "description": f"bumped {attributes['bumps']}"}
    changed["attributes"] = attributes
    return await _pause({RAN + "bump": _effect(process_id, "bump"), "subscription": changed})


@step("apply")
def apply(process_id: str, subscription: dict[str, Any], note: str) -> State:
    changed = {**subscription, "attributes": {**subscription["attributes"], "note": note}}
    return _after({RAN + "apply": _effect(process_id, "apply"), "subscription": changed})


@workflow("Soak: modify a subscription, with an approval", target=Target.MODIFY)
def soak_modify():  # type: ignore[no-untyped-def]
    return init >> bump >> approve >> apply >> done


@step("disable")
async def disable(process_id: str, subscription: dict[str, Any]) -> State:
    changed = {**subscription, "status": "disabled"}
    return await _pause({RAN + "disable": _effect(process_id, "disable"), "subscription": changed})


@workflow("Soak: terminate a subscription", target=Target.TERMINATE)
def soak_terminate():  # type: ignore[no-untyped-def]
    return init >> disable >> done


# -- forks (README "Parallel branches") ------------------------------------------------------------
#
# A step in a branch logs itself as ``<name>@<branch>`` and leaves its nonce under
# ``ran:<name>@<branch>``, so the checks follow each branch's runs on their own.


def _in_branch(process_id: str, label: str) -> State:
    return {RAN + label: _effect(process_id, label)}


@step("left")
def left(process_id: str) -> State:
    return _after(_in_branch(process_id, "left@Split/0"))


@retrystep("right")
async def right(process_id: str, retry_times: int = 0) -> State:
    return await _pause(_maybe_fail(process_id, "right@Split/1", retry_times))


@step("right-after")
async def right_after(process_id: str) -> State:
    return await _pause(_in_branch(process_id, "right-after@Split/1"))


@workflow("Soak: two branches, one retrying", target=Target.SYSTEM)
def soak_parallel():  # type: ignore[no-untyped-def]
    split = parallel("Split", begin >> left, begin >> right >> right_after)
    return init >> prepare >> split >> finish >> done


@step("fan-work")
async def fan_work(process_id: str, item_index: int, fail_at: int = -1) -> State:
    label = f"fan-work@Fan/{item_index}"
    if item_index == fail_at:
        return await _pause(_maybe_fail(process_id, label, 1))
    return await _pause(_in_branch(process_id, label))


@step("fan-check")
def fan_check(process_id: str, item_index: int) -> State:
    return _after(_in_branch(process_id, f"fan-check@Fan/{item_index}"))


@workflow("Soak: a foreach, three branches at a time", target=Target.SYSTEM)
def soak_foreach():  # type: ignore[no-untyped-def]
    fan = foreach(
        "Fan", "elements", begin >> fan_work >> fan_check, into="fanned", max_concurrency=3
    )
    return init >> fan >> finish >> done
