"""Workflows whose steps name shared resources (README "Limits on shared resources"), for
tests/test_limits.py (in
process) and tests/test_limits_daemon.py (daemon subprocesses).

Each step records when it entered and left its key: in process into a ``Journal`` the test
hands over as a resource; in a daemon (no Journal) as lines ``enter|leave KEY PID TIME NODE``
appended to ``limits.log`` in ``$ORCHD_TEST_DIR``. A step with ``hold`` true in State is held:
in process at the ``Hold`` gate, in a daemon until the test creates ``<pid>.release``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from runfiles import held

from orchd import (
    State,
    StepList,
    Target,
    begin,
    callback_step,
    done,
    foreach,
    init,
    retrystep,
    step,
    workflow,
)
from orchd.testing import Gate


class Hold(Gate):
    """Holds the limited steps that ask for it (the test's other gates hold nothing)."""


class Journal:
    """Who entered and left which key, in order, and the most inside one key at once."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, float]] = []
        self.inside: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        #: Process id -> how many times its flaky step ran.
        self.attempts: Counter[str] = Counter()
        #: Process id -> the callback token its action handed out.
        self.tokens: dict[str, str] = {}

    def enter(self, key: str, pid: str) -> None:
        self.inside[key] += 1
        self.most[key] = max(self.most[key], self.inside[key])
        self.events.append(("enter", key, pid, time.monotonic()))

    def leave(self, key: str, pid: str) -> None:
        self.inside[key] -= 1
        self.events.append(("leave", key, pid, time.monotonic()))

    def entered(self, pid: str | None = None) -> list[tuple[str, str, float]]:
        """(key, process, time) of each entry, in order (of one process)."""
        return [(k, p, t) for e, k, p, t in self.events if e == "enter" and pid in (None, p)]


def _log(kind: str, key: str, pid: str) -> None:
    folder = Path(os.environ.get("ORCHD_TEST_DIR", "."))
    node = os.environ.get("ORCHD_TEST_NODE", str(os.getpid()))
    line = f"{kind} {key} {pid} {time.time():.6f} {node}\n".encode()
    fd = os.open(folder / "limits.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines of several daemons never mix
    finally:
        os.close(fd)


async def _inside(
    key: str,
    pid: str,
    journal: Journal | None,
    gate: Hold | None,
    pause: float,
    hold: bool,
) -> None:
    """Enter ``key``, stay (held, or for ``pause`` seconds), leave."""
    if journal is not None:
        journal.enter(key, pid)
    else:
        _log("enter", key, pid)
    try:
        if hold and gate is not None:
            await gate.passage()
        elif hold:
            await held(pid, 60)
        if pause:
            await asyncio.sleep(pause)
    finally:
        if journal is not None:
            journal.leave(key, pid)
        else:
            _log("leave", key, pid)


@step("configure", uses=["router:{node_name}"])
async def configure(
    process_id: str,
    node_name: str,
    journal: Journal = None,  # type: ignore[assignment]
    gate: Hold = None,  # type: ignore[assignment]
    pause: float = 0.0,
    hold: bool = False,
) -> State:
    await _inside(f"router:{node_name}", process_id, journal, gate, pause, hold)
    return {"configured": node_name}


@workflow("Configure one router, one change at a time per router", target=Target.SYSTEM)
def configure_router() -> StepList:
    return init >> configure >> done


@step("configure (sync)", uses=["router:{node_name}"])
def configure_sync(
    process_id: str,
    node_name: str,
    journal: Journal = None,  # type: ignore[assignment]
    pause: float = 0.0,
) -> State:
    # In a step thread: the Journal's counts are only touched by the holder of the key.
    if journal is not None:
        journal.enter(f"router:{node_name}", process_id)
    time.sleep(pause)
    if journal is not None:
        journal.leave(f"router:{node_name}", process_id)
    return {"configured": node_name}


@workflow("Configure a router from a plain function", target=Target.SYSTEM)
def configure_router_sync() -> StepList:
    return init >> configure_sync >> done


@step("call the OSS", uses=["oss"])
async def call_oss(process_id: str, journal: Journal = None) -> State:  # type: ignore[assignment]
    await _inside("oss", process_id, journal, None, 0.0, False)
    return {}


@workflow("Call a rate-limited OSS", target=Target.SYSTEM)
def rated_call() -> StepList:
    return init >> call_oss >> done


@step("link", uses=["device:{first}", "device:{second}"])
async def link(
    process_id: str,
    first: str,
    second: str,
    journal: Journal = None,  # type: ignore[assignment]
    gate: Hold = None,  # type: ignore[assignment]
    pause: float = 0.0,
    hold: bool = False,
) -> State:
    if journal is not None:
        journal.enter(f"device:{first}", process_id)
        journal.enter(f"device:{second}", process_id)
    try:
        if hold and gate is not None:
            await gate.passage()
        await asyncio.sleep(pause)
    finally:
        if journal is not None:
            journal.leave(f"device:{first}", process_id)
            journal.leave(f"device:{second}", process_id)
    return {"linked": [first, second]}


@workflow("Link two devices: both at once or neither", target=Target.SYSTEM)
def link_devices() -> StepList:
    return init >> link >> done


@step("touch one device", uses=["device:{first}"])
async def touch(
    process_id: str,
    first: str,
    journal: Journal = None,  # type: ignore[assignment]
    gate: Hold = None,  # type: ignore[assignment]
    hold: bool = False,
) -> State:
    await _inside(f"device:{first}", process_id, journal, gate, 0.0, hold)
    return {"touched": first}


@workflow("Touch one device", target=Target.SYSTEM)
def touch_device() -> StepList:
    return init >> touch >> done


@step("configure port", uses=["router:{item}"])
async def configure_port(
    process_id: str,
    item: str,
    item_index: int,
    journal: Journal = None,  # type: ignore[assignment]
    gate: Hold = None,  # type: ignore[assignment]
    pause: float = 0.0,
    hold: bool = False,
) -> State:
    await _inside(f"router:{item}", process_id, journal, gate, pause, hold)
    return {"port": item_index}


@workflow("Configure ports in a foreach, one change at a time per router", target=Target.SYSTEM)
def configure_ports() -> StepList:
    each = foreach("each port", "routers", begin >> configure_port, into="ports")
    return init >> each >> done


@retrystep("flaky push", max_attempts=3, backoff=0.05, uses=["router:{node_name}"])
async def flaky_push(
    process_id: str,
    node_name: str,
    journal: Journal = None,  # type: ignore[assignment]
    fails: int = 0,
) -> State:
    await _inside(f"router:{node_name}", process_id, journal, None, 0.0, False)
    if journal is not None:
        journal.attempts[process_id] += 1
        if journal.attempts[process_id] <= fails:
            raise RuntimeError("the router said no")
    return {"pushed": True}


@workflow("Push to a router, retried when it fails", target=Target.SYSTEM)
def push_router() -> StepList:
    return init >> flaky_push >> done


@step("order the circuit", uses=["router:{node_name}"])
async def order_circuit(
    process_id: str,
    node_name: str,
    callback_token: str,
    journal: Journal = None,  # type: ignore[assignment]
) -> State:
    await _inside(f"router:{node_name}", process_id, journal, None, 0.0, False)
    if journal is not None:
        journal.tokens[process_id] = callback_token
    return {}


@step("check the circuit")
def check_circuit(callback_result: Any) -> State:
    return {"circuit": callback_result}


@workflow("Order a circuit from a router, wait for the callback", target=Target.SYSTEM)
def order_router_circuit() -> StepList:
    return init >> callback_step("await the circuit", order_circuit, check_circuit) >> done


@step("configure then fail", uses=["router:{node_name}"])
async def configure_then_fail(process_id: str, node_name: str) -> State:
    raise RuntimeError(f"router {node_name} refused")


@workflow("A limited step that fails", target=Target.SYSTEM)
def failing_router() -> StepList:
    return init >> configure_then_fail >> done


@step("audit the site", uses=["router:{site}"])
async def audit_site(process_id: str) -> State:
    return {"audited": True}


@workflow("A limited step whose key names a State key the process lacks", target=Target.SYSTEM)
def audit_router() -> StepList:
    return init >> audit_site >> done
