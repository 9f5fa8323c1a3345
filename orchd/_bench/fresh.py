"""Memory figures come from a fresh interpreter, so memory freed by an earlier scenario cannot
hide a cost: the bench runs itself (``orchd._bench.run`` with a hidden flag) and reads the one
JSON object the probe prints last."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import msgspec


def in_fresh_interpreter(flag: str, *args: str) -> dict[str, float]:
    """Run the bench's probe ``flag`` with ``args`` in a new Python; its figures."""
    out = subprocess.run(
        [sys.executable, "-m", "orchd._bench.run", flag, *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = msgspec.json.decode(out.strip().splitlines()[-1])
    return result


def report(figures: dict[str, Any]) -> int:
    """The probe's side: print its figures as that last line."""
    print(msgspec.json.encode(figures).decode())
    return 0
