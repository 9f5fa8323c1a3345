"""Steps that several test workflow modules use as they are, defined once.

Workflows stay in their own modules (an engine loads workflows by module); these are only
steps, which any workflow may compose.
"""

from __future__ import annotations

from orchd import State, step


@step("tick")
def tick() -> State:
    return {"ticked": True}


@step("boom")
def boom() -> State:
    raise RuntimeError("kaput")
