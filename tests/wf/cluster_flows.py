"""Workflows the cluster tests run on several daemons sharing one PostgreSQL database.

Every run of a step appends ``<process id> <step> <daemon pid>`` to ``runs-<daemon pid>.log``
in ``$ORCHD_TEST_DIR`` (shared by the daemons of a test), so the test can tell which daemon ran
what, and whether a committed step ever ran again. A plain ``write`` survives a SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from orchd import (
    Form,
    State,
    StepList,
    Target,
    begin,
    callback_step,
    children,
    done,
    foreach,
    init,
    inputstep,
    parallel,
    step,
    workflow,
)


def _log(process_id: str, name: str) -> None:
    folder = Path(os.environ.get("ORCHD_TEST_DIR", "."))
    with open(folder / f"runs-{os.getpid()}.log", "a") as f:
        f.write(f"{process_id} {name} {os.getpid()}\n")


def _stamp(process_id: str, name: str) -> None:
    """``<process id> <step> <daemon pid> <time>`` to ``times-<daemon pid>.log``: when each run
    began, for the tests that compare it with the moment a node's loop woke up."""
    folder = Path(os.environ.get("ORCHD_TEST_DIR", "."))
    with open(folder / f"times-{os.getpid()}.log", "a") as f:
        f.write(f"{process_id} {name} {os.getpid()} {time.time():.6f}\n")


#: The files steps are held on, each watched by one task of the daemon: a thousand held
#: steps polling the file each would load the very daemons whose leases the tests time.
_released: dict[str, asyncio.Event] = {}
_watchers: set[asyncio.Task[None]] = set()


async def _watch(path: str, released: asyncio.Event) -> None:
    while not os.path.exists(path):  # noqa: ASYNC240 (a stat of a local file, 10 a second)
        await asyncio.sleep(0.1)
    released.set()


async def _until_exists(path: str) -> None:
    """Wait until the test creates the file ``path``."""
    if path not in _released:
        _released[path] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(_watch(path, _released[path]))
        _watchers.add(task)
        task.add_done_callback(_watchers.discard)
    await _released[path].wait()


def _pause(name: str):  # type: ignore[no-untyped-def]
    @step(name)
    async def pause(process_id: str, pause: float = 0.3, hold: str = "") -> State:
        _log(process_id, name)
        if hold:  # held until the test creates that file
            await _until_exists(hold)
        await asyncio.sleep(pause)
        return {name: os.getpid()}

    return pause


@workflow("Three short steps", target=Target.SYSTEM)
def cluster_steady() -> StepList:
    return init >> _pause("c1") >> _pause("c2") >> _pause("c3") >> done


class Approval(Form):
    approved: bool


@inputstep("approve")
def approve() -> type[Form]:
    return Approval


@step("after approval")
def after_approval(approved: bool) -> State:
    return {"ran_on": os.getpid(), "verdict": approved}


@workflow("Asks a person, then finishes", target=Target.SYSTEM)
def cluster_ask() -> StepList:
    return init >> approve >> after_approval >> done


@step("ask the OSS")
def ask_oss(process_id: str, callback_token: str) -> State:
    folder = Path(os.environ.get("ORCHD_TEST_DIR", "."))
    (folder / f"{process_id}.token").write_text(callback_token)
    return {}


@step("check the answer")
def check(callback_result: dict[str, Any]) -> State:
    return {"answered": callback_result.get("ok") is True, "checked_on": os.getpid()}


@workflow("Waits for an external system's callback", target=Target.SYSTEM)
def cluster_callback() -> StepList:
    return init >> callback_step("oss", ask_oss, check) >> done


@step("tick")
def tick(process_id: str) -> State:
    _log(process_id, "tick")
    return {}


@workflow("A task the cluster schedules", target=Target.SYSTEM)
def cluster_tick() -> StepList:
    return init >> tick >> done


@step("count the children")
def count_children(results: list[dict[str, Any]]) -> State:
    return {"finished": sum(1 for r in results if r["status"] == "completed")}


@workflow("Fans out to short processes, a few at a time", target=Target.SYSTEM)
def cluster_fan_out() -> StepList:
    fan = children(
        "fan", workflow="cluster_steady", inputs="inputs", max_concurrency=4, into="results"
    )
    return init >> fan >> count_children >> done


# -- forks (README "Parallel branches") across nodes -----------------------------------------------


@step("port")
async def port(process_id: str, item: int, pause: float = 0.3) -> State:
    _log(process_id, f"port-{item}")
    await asyncio.sleep(pause)
    return {"port": item, "node": os.getpid()}


@step("order circuit")
async def order_circuit(process_id: str, callback_token: str) -> State:
    _log(process_id, "order circuit")
    return {"ordered": True}


@step("take circuit")
async def take_circuit(callback_result: dict[str, Any]) -> State:
    return {"circuit": callback_result.get("circuit")}


class Ports(Form):
    ports: list[int]
    pause: float = 0.3


@workflow("A foreach over ports, four at a time", initial_input_form=Ports)
def cluster_foreach() -> StepList:
    fan = foreach("Ports", "ports", begin >> port, into="done_ports", max_concurrency=4)
    return init >> fan >> done


@workflow("A branch waits for a callback")
def cluster_branch_callback() -> StepList:
    wait = callback_step("await circuit", order_circuit, take_circuit)
    return init >> parallel("Provision", wait, begin >> _pause("inventory")) >> done


# -- a node whose event loop is blocked past its lease (README "Scaling out") ----------------------


def _churn(name: str):  # type: ignore[no-untyped-def]
    @step(name)
    async def churn(process_id: str, pause: float = 0.05, hold: str = "") -> State:
        _log(process_id, name)
        _stamp(process_id, name)
        if hold:  # held until the test creates that file
            await _until_exists(hold)
        await asyncio.sleep(pause)
        return {name: os.getpid()}

    return churn


@workflow("Twelve short steps", target=Target.SYSTEM)
def cluster_churn() -> StepList:
    steps = init >> _churn("k1")
    for i in range(2, 13):
        steps = steps >> _churn(f"k{i}")
    return steps >> done


@step("block the loop")
async def block_loop(process_id: str, seconds: float, when: str) -> State:
    """Once the file ``when`` exists, block the event loop for ``seconds`` (the first run
    only: the node that takes the process over runs it again without blocking)."""
    await _until_exists(when)
    marker = Path(os.environ.get("ORCHD_TEST_DIR", ".")) / f"blocked-{process_id}"
    if not marker.exists():
        marker.touch()
        _stamp(process_id, "blocked")
        time.sleep(seconds)  # noqa: ASYNC251 (the point: an async step that blocks the loop)
        _stamp(process_id, "unblocked")
    return {"blocked_on": os.getpid()}


@workflow("Blocks its node's event loop once", target=Target.SYSTEM)
def cluster_block() -> StepList:
    return init >> block_loop >> done
