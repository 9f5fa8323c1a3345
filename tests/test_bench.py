"""`orchd bench --quick` runs end to end and prints its table (figures are not asserted)."""

from __future__ import annotations

import subprocess
import sys


def test_bench_quick_prints_every_scenario() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orchd", "bench", "--quick", "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for label in ("raw durable commit", "P1 ", "P2 ", "P3 ", "P4 ", "P5 "):
        assert label in result.stdout
    assert "1,000/1,000 completed" in result.stdout
