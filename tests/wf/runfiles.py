"""How steps in a daemon subprocess talk to the test: files in ``$ORCHD_TEST_DIR``.

The daemon is another process, so it cannot share a Gate or a counter with the test:
``<process id>.<step>.runs`` gets one fsynced line (the daemon's pid) per run of a step, and a
held step waits until the test creates ``<process id>.release``. The tests read these files
through tests/support/daemons.py and tests/test_e2e_api.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


def folder() -> Path:
    return Path(os.environ.get("ORCHD_TEST_DIR", "."))


def record_run(process_id: str, name: str) -> int:
    """Append one line for this run of step ``name``; return how many runs came before it."""
    path = folder() / f"{process_id}.{name}.runs"
    before = len(path.read_text().splitlines()) if path.exists() else 0
    with path.open("a") as f:
        f.write(f"{os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    return before


def released(process_id: str) -> bool:
    return (folder() / f"{process_id}.release").exists()


async def held(process_id: str, limit: float) -> bool:
    """Wait until the test releases the process, or ``limit`` seconds (so nothing hangs for
    ever); return whether it was released."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not released(process_id):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True
