"""A process running the Engine is SIGKILLed mid-step; a new one finishes every process."""

from __future__ import annotations

import collections
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support.common import WF_DIR, block_until

RUNNER = WF_DIR / "recovery_runner.py"


def run_engine(db: Path, log: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ORCHD_TEST_LOG": str(log), "PYTHONPATH": str(WF_DIR)}
    return subprocess.Popen(
        [sys.executable, str(RUNNER), str(db), *args],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def effects_logged(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.parametrize("kill_after", [40, 400])
def test_sigkill_mid_step_then_restart_finishes_every_process_without_rerunning_committed_steps(
    tmp_path: Path, kill_after: int
) -> None:
    db, log = tmp_path / "orchd.db", tmp_path / "effects.log"
    first = run_engine(db, log, "start", "100")
    block_until(
        lambda: effects_logged(log) >= kill_after,
        f"{kill_after} effects logged",
        within=30,
        every=0.005,
    )
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert effects_logged(log) < 800, "the kill came too late to interrupt anything"

    with sqlite3.connect(db) as conn:
        committed_before = set(
            conn.execute(
                "SELECT p.id, s.name FROM steps s JOIN processes p ON p.rowid = s.process "
                "WHERE s.name LIKE 'effect%'"
            )
        )

    second = run_engine(db, log, "finish")
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0 and "finished" in out

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        statuses = collections.Counter(s for (s,) in conn.execute("SELECT status FROM processes"))
        records = collections.Counter(
            conn.execute("SELECT p.id, s.name FROM steps s JOIN processes p ON p.rowid = s.process")
        )
        pids = [p for (p,) in conn.execute("SELECT id FROM processes")]
    assert statuses == {"completed": len(pids)}
    # Exactly one record per step of every process.
    assert set(records.values()) == {1}
    assert len(records) == len(pids) * 10

    runs = collections.Counter(tuple(line.split(" ", 1)) for line in log.read_text().splitlines())
    for pid in pids:
        for n in range(8):
            key = (pid, f"effect {n}")
            assert runs[key] >= 1, f"{key} never ran"
            if key in committed_before:
                assert runs[key] == 1, f"{key} was committed before the kill but ran again"
        # Only the step in flight at the kill may have run twice.
        assert sum(runs[(pid, f"effect {n}")] > 1 for n in range(8)) <= 1
