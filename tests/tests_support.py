"""Paths and small helpers shared by test modules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchd.engine import Engine

TESTS_DIR = Path(__file__).parent
WF_DIR = TESTS_DIR / "wf"
ROOT = TESTS_DIR.parent

#: The ``engine_factory`` fixture (tests/conftest.py): ``await engine_factory(workflows, ...)``.
EngineFactory = Callable[..., Awaitable["Engine"]]
