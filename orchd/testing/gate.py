"""``Gate``: hold a step until the test says so, handed to steps as an engine resource.

A step asks for it by annotation, like any resource (``Engine(resources={Gate: gate})``)::

    @step("provision")
    async def provision(gate: Gate) -> State:
        await gate.passage()          # returns at once when the gate is open
        return {"provisioned": True}

The test then sees the process ``running`` in that step (``await gate.reached()``), acts on
it (abort, a concurrent start, a shutdown), and calls ``gate.open()`` to let it finish. Two
different holds in one engine are two resource types: ``class ApprovalGate(Gate): pass``.
"""

from __future__ import annotations

import asyncio


class Gate:
    """A barrier for async steps: closed until ``open()``; counts who reached it."""

    def __init__(self, *, open: bool = False) -> None:
        self._open = asyncio.Event()
        self._arrival = asyncio.Event()
        #: How many times a step reached the gate (whether it was open or not).
        self.arrivals = 0
        #: How many steps are held at the gate right now.
        self.waiting = 0
        if open:
            self._open.set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def passage(self) -> None:
        """Called by a step: return once the gate is open."""
        self.arrivals += 1
        self._arrival.set()
        self.waiting += 1
        try:
            await self._open.wait()
        finally:
            self.waiting -= 1

    def open(self) -> None:
        """Let every held step (and every later one) through."""
        self._open.set()

    def close(self) -> None:
        """Hold the steps that reach the gate from now on."""
        self._open.clear()

    async def reached(self, count: int = 1, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Return once steps reached the gate ``count`` times in all; TimeoutError after
        ``timeout`` seconds (a step that never gets there should fail the test, not hang it)."""
        async with asyncio.timeout(timeout):
            while self.arrivals < count:
                self._arrival.clear()
                await self._arrival.wait()
