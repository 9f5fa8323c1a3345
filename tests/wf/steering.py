"""Test doubles that in-process tests hand to steps as engine resources, never as globals.

A step asks for them by annotation (``calls: Calls``, ``failures: FailurePlan``), like the
kit's ``orchd.testing.Gate``; each test gets fresh ones from the fixtures in tests/conftest.py,
so nothing a test sets leaks into the next one.
"""

from __future__ import annotations

from collections import Counter


class Calls(Counter[str]):
    """How many times each step ran, by step name."""

    def ran(self, name: str) -> None:
        self[name] += 1


class FailurePlan(dict[str, int]):
    """Step name -> how many more times that step raises before it succeeds."""

    def check(self, name: str) -> None:
        """Raise if the plan says ``name`` fails this time (and count that failure down)."""
        if self.get(name, 0) > 0:
            self[name] -= 1
            raise RuntimeError(f"{name} failed on purpose")


#: The plan of an engine given none: no step fails. Only read, never changed.
NO_FAILURES = FailurePlan()
