"""Shared fixtures. Workflow modules used by tests live in tests/wf/ and import by name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

WF_DIR = Path(__file__).parent / "wf"
if str(WF_DIR) not in sys.path:
    sys.path.insert(0, str(WF_DIR))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
