"""Tools for testing workflows: run one step, run whole workflows in-process, hold steps.

::

    from orchd.testing import Gate, assert_steps, run_step, run_to, workflow_engine

Importing this package starts nothing and imports little: each name loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "FakeOss": "orchd.testing.fakeoss",
    "Gate": "orchd.testing.gate",
    "run_step": "orchd.testing.steps",
    "workflow_engine": "orchd.testing.running",
    "run_to": "orchd.testing.running",
    "assert_steps": "orchd.testing.running",
    "walk_form": "orchd.testing.running",
    "subscription": "orchd.testing.subscriptions",
}

__all__ = [
    "FakeOss",
    "Gate",
    "assert_steps",
    "run_step",
    "run_to",
    "subscription",
    "walk_form",
    "workflow_engine",
]

if TYPE_CHECKING:
    from orchd.testing.fakeoss import FakeOss
    from orchd.testing.gate import Gate
    from orchd.testing.running import assert_steps, run_to, walk_form, workflow_engine
    from orchd.testing.steps import run_step
    from orchd.testing.subscriptions import subscription


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'orchd.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
