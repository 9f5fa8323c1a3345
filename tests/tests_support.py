"""Paths and small helpers shared by test modules."""

from __future__ import annotations

from pathlib import Path

TESTS_DIR = Path(__file__).parent
WF_DIR = TESTS_DIR / "wf"
ROOT = TESTS_DIR.parent
