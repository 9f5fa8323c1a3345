"""A resource factory and a workflow whose step receives the resource by annotation.

Used by tests/test_daemon_resources.py through the ``resources`` config key.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from orchd import State, Target, done, init, step, workflow


class Greeter:
    """A stand-in for a client a step needs (an inventory API, a vault, ...)."""

    def __init__(self, word: str) -> None:
        self.word = word


@asynccontextmanager
async def greeter() -> AsyncIterator[dict[type, object]]:
    # The test directory records the exit, so a test can see it ran after the engine closed.
    folder = Path(os.environ.get("ORCHD_TEST_DIR", "."))
    yield {Greeter: Greeter("hello from a resource")}
    (folder / "greeter.closed").write_text("closed\n")


def not_a_mapping() -> object:
    @asynccontextmanager
    async def manager() -> AsyncIterator[list[int]]:
        yield [1, 2]

    return manager()


NOT_CALLABLE = 42


@step("greet")
def greet(state: State, greeter: Greeter) -> State:
    return {"greeting": greeter.word}


@workflow("Greet with a resource", target=Target.SYSTEM)
def greet_with_resource():  # type: ignore[no-untyped-def]
    return init >> greet >> done
