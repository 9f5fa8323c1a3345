"""The storage ceiling: orchd's write pattern on SQLite alone, with no engine (P1's baseline).

P1 is bounded by two things: what SQLite can commit, and the Python work per step around it.
This measures the first alone, so P1's ratio to it says how much of the second there is: the
same database file layout (the schema an Engine creates), per step one update of the process
row and one insert of a step record with a small State and delta, grouped into durable
commits of 256 steps as the writer groups them under load, WAL and ``synchronous=FULL``.
Nothing is encoded or decoded in the timed loop: the values are prepared first.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid

import msgspec

from orchd.engine import Engine

#: Steps per durable commit: what P1's writer groups under load (its mean batch is 200-300).
BATCH = 256


async def storage_ceiling(directory: str, processes: int, steps: int = 10) -> float:
    """Steps per second SQLite commits for ``processes`` processes of ``steps`` steps."""
    path = os.path.join(directory, f"ceiling-{processes}-{uuid.uuid4().hex[:8]}.db")
    engine = Engine(database=path, workflows=[])
    await engine.open()  # the schema, as the engine creates it
    await engine.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        rows = _processes(conn, processes)
        work = [(rowid, n) for n in range(steps) for rowid in rows]
        state = msgspec.json.encode({f"k{n}": n for n in range(steps)})
        delta = msgspec.json.encode({"k0": 0})
        started = time.perf_counter()
        for first in range(0, len(work), BATCH):
            now = time.time()
            conn.execute("BEGIN")
            for rowid, n in work[first : first + BATCH]:
                conn.execute(
                    "UPDATE processes SET status = 'running', pc = ?, seq = ?, state = ?,"
                    " current_step = ?, step_key = ?, step_occurrence = 0, updated_at = ?"
                    " WHERE rowid = ?",
                    (n + 1, n + 1, state, f"step {n}", f"step {n}", now, rowid),
                )
                conn.execute(
                    "INSERT INTO steps (process, seq, name, key, status, started_at,"
                    " finished_at, delta) VALUES (?, ?, ?, ?, 'success', ?, ?, ?)",
                    (rowid, n, f"step {n}", f"step {n}", now, now, delta),
                )
            conn.execute("COMMIT")
        return len(work) / (time.perf_counter() - started)
    finally:
        conn.close()


def _processes(conn: sqlite3.Connection, count: int) -> list[int]:
    """``count`` created processes, committed before the clock starts; their row ids."""
    now = time.time()
    conn.execute("BEGIN")
    rows = []
    for _ in range(count):
        cursor = conn.execute(
            "INSERT INTO processes (id, workflow, target, status, pc, seq, state,"
            " created_at, updated_at) VALUES (?, 'bench_ten_steps', 'SYSTEM', 'created', 0, 0,"
            " ?, ?, ?)",
            (str(uuid.uuid4()), b"{}", now, now),
        )
        rows.append(int(cursor.lastrowid or 0))
    conn.execute("COMMIT")
    return rows
