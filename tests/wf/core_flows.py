"""Workflows of the engine's core tests (tests/test_engine_core.py): callback tokens handed out
by an action that then fails, in a branch and on the main line, and a step held at a gate.

Steps are steered through the test's ``Oss`` resource (what the external system was sent, and
whether the action fails or waits) and its ``Gate``, never through module globals.
"""

from __future__ import annotations

import asyncio
from typing import Any

from orchd import State, begin, callback_step, done, init, parallel, step, workflow
from orchd.testing import Gate


class Oss:
    """An external system as a test sees it: the tokens it was sent, and how it answers."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.handed = asyncio.Event()
        #: The action raises after it handed its token out (the OSS refused the order).
        self.refuse = True
        #: Set: the action waits for ``go`` after handing its token out.
        self.hold = False
        self.go = asyncio.Event()

    async def order(self, token: str) -> None:
        self.tokens.append(token)
        self.handed.set()
        if self.hold:
            await self.go.wait()
        if self.refuse:
            raise RuntimeError("the OSS refused the order")


@step("order circuit")
async def order_circuit(callback_token: str, oss: Oss) -> State:
    await oss.order(callback_token)
    return {"ordered": True}


@step("check circuit")
async def check_circuit(callback_result: dict[str, Any]) -> State:
    return {"circuit": callback_result["circuit"]}


@step("inventory")
async def inventory(gate: Gate) -> State:
    await gate.passage()
    return {"inventoried": True}


@workflow("A branch orders a circuit while its sibling works")
def branch_order():  # type: ignore[no-untyped-def]
    order = callback_step("await circuit", order_circuit, check_circuit)
    return init >> parallel("Provision", order, begin >> inventory) >> done


@workflow("The main line orders a circuit")
def main_order():  # type: ignore[no-untyped-def]
    return init >> callback_step("await circuit", order_circuit, check_circuit) >> done


@workflow("One step held at a gate")
def held():  # type: ignore[no-untyped-def]
    return init >> inventory >> done
