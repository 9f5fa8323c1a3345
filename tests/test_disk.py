"""Disk and database trouble under a real ``orchd serve``: a full filesystem, a read-only one, a
database locked by another process, and the database file deleted or replaced while open.

The filesystem cases mount a small tmpfs (root only; skipped with the reason otherwise) and
keep the database there. Whatever happens, the daemon must say what is wrong (health 503
"degraded", ``orchd_store_failing 1``, one log line per failure, no traceback), lose and
duplicate no committed step, and carry on by itself once the trouble is gone.

A filesystem cannot be remounted read-only under files open for writing (EBUSY), so read-only
is tested where it can happen to us: at start-up. At run time it comes from the kernel
(errors=remount-ro) and reaches the writer as an SQLite I/O error, the path the full disk takes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.common import block_until
from support.daemons import ROOT, WF_DIR, DaemonFactory, DaemonProcess

from orchd.store import maintenance

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="tmpfs and mount are Linux")

PARTS = 5
#: The step records of one ``steady`` process, in order.
STEPS = ["init", *(f"part {n}" for n in range(1, PARTS + 1)), "done"]

FLOWS = f'''
"""A workflow of several steps, each a little slow and adding ~2 KB of State."""

import asyncio
import os
from pathlib import Path

from orchd import State, Target, done, init, step, workflow


def _ran(process_id: str, name: str) -> None:
    with (Path(os.environ["ORCHD_TEST_DIR"]) / f"{{process_id}}.{{name}}.runs").open("a") as f:
        f.write("ran\\n")


def _part(n: int):  # type: ignore[no-untyped-def]
    @step(f"part {{n}}")
    async def part(process_id: str, pause: float = 0.2) -> State:
        _ran(process_id, f"part {{n}}")
        await asyncio.sleep(pause)
        return {{f"part{{n}}": "x" * 2000}}

    return part


PARTS = [_part(n) for n in range(1, {PARTS} + 1)]


@workflow("Several slow steps", target=Target.SYSTEM)
def steady():  # type: ignore[no-untyped-def]
    flow = init
    for part in PARTS:
        flow = flow >> part
    return flow >> done
'''


# --- helpers -------------------------------------------------------------------------------------


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


class Tmpfs:
    """A small tmpfs at ``path``; ``fill`` takes every free byte, ``ro``/``rw`` remount it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> int:
        """Write the filler until no byte is left; return how many were written."""
        written = 0
        with self.filler.open("ab", buffering=0) as f:
            for size in (65536, 4096, 1):
                chunk = b"\0" * size
                while True:
                    try:
                        written += f.write(chunk) or 0
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        return written

    def drain(self) -> None:
        self.filler.unlink()

    def remount(self, mode: str) -> None:
        done = _run("mount", "-o", f"remount,{mode}", str(self.path))
        assert done.returncode == 0, done.stderr


@pytest.fixture
def tmpfs(tmp_path: Path, daemon_factory: DaemonFactory) -> Iterator[Tmpfs]:
    """A 4 MiB tmpfs under tmp_path, unmounted at the end (after every daemon is killed)."""
    path = tmp_path / "mnt"
    path.mkdir()
    done = _run("mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield Tmpfs(path)
    finally:
        daemon_factory.close()  # its files are open on the tmpfs
        if _run("umount", str(path)).returncode != 0:
            _run("umount", "-l", str(path))


@pytest.fixture
def make_daemon(tmp_path: Path, daemon_factory: DaemonFactory) -> Callable[..., DaemonProcess]:
    """``make_daemon(database=None, start=True)``: a daemon running the ``steady`` workflow."""
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "disk_flows.py").write_text(FLOWS)
    pythonpath = os.pathsep.join([str(flows), str(WF_DIR), str(ROOT)])

    def make(database: Path | None = None, *, start: bool = True) -> DaemonProcess:
        config: dict[str, Any] = {"workflows": ["disk_flows"], "log_level": "info"}
        if database is not None:
            config["database"] = str(database)
        daemon = daemon_factory(config, start=False, env={"PYTHONPATH": pythonpath})
        daemon.db = config.get("database", daemon.db)  # what the helpers below read
        return daemon.start() if start else daemon

    return make


def health(daemon: DaemonProcess) -> tuple[int, dict[str, Any]]:
    status, body = daemon.request("GET", "/api/health")
    return status, dict(body)


def ran_again(daemon: DaemonProcess, pid: str, times: int) -> bool:
    """Whether one of the process's steps has run ``times`` times."""
    return any(daemon.step_runs(pid, name) >= times for name in STEPS[1:-1])


def degraded(daemon: DaemonProcess) -> dict[str, Any] | None:
    status, body = health(daemon)
    return body if status == 503 else None


def db_rows(path: str | Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


def snapshot(db: str | Path) -> dict[str, tuple[str, int, list[tuple[int, str]]]]:
    """process id -> (status, seq, [(step seq, step name)])."""
    out: dict[str, tuple[str, int, list[tuple[int, str]]]] = {}
    for pid, status, seq, pk in db_rows(db, "SELECT id, status, seq, rowid FROM processes"):
        steps = db_rows(db, "SELECT seq, name FROM steps WHERE process = ? ORDER BY seq", (pk,))
        out[pid] = (status, seq, [(s, n) for s, n in steps])
    return out


def assert_whole(db: str | Path, pids: list[str]) -> None:
    """Every process completed with exactly one record per step, in order, and the database
    passes ``orchd check``."""
    snap = snapshot(db)
    for pid in pids:
        status, seq, steps = snap[pid]
        assert status == "completed", (pid, snap[pid])
        assert steps == list(enumerate(STEPS, start=1)), (pid, steps)
        assert seq == len(STEPS)
    report = maintenance.check(str(db))
    assert report.ok, report


def assert_resumable(snap: dict[str, tuple[str, int, list[tuple[int, str]]]]) -> None:
    """Active processes whose committed steps are a clean prefix of the workflow."""
    for pid, (status, seq, steps) in snap.items():
        assert status in ("created", "running", "completed"), (pid, status)
        assert steps == list(enumerate(STEPS[: len(steps)], start=1)), (pid, steps)
        assert seq == len(steps), (pid, seq, steps)


def error_lines(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "level=error" in ln]


# --- a full filesystem ---------------------------------------------------------------------------


def test_full_disk_degrades_then_recovers(
    tmpfs: Tmpfs, make_daemon: Callable[..., DaemonProcess]
) -> None:
    daemon = make_daemon(tmpfs.path / "orchd.db")
    pids = [daemon.start_process("steady", {"pause": 0.3}) for _ in range(4)]
    block_until(
        lambda: all(len(s[2]) >= 2 for s in snapshot(daemon.db).values()),
        "every process committed a step",
    )
    tmpfs.fill()
    body = block_until(lambda: degraded(daemon), "health reports the full disk", within=5)
    assert body["status"] == "degraded"
    assert "disk is full" in body["database"], body
    assert daemon.metric("orchd_store_failing") == 1
    # New work is refused with a clear problem, not accepted and lost.
    status, problem = daemon.request("POST", "/api/processes/steady", {})
    assert status == 503, problem
    assert "disk is full" in problem["detail"], problem

    # While the disk stays full nothing moves: each failed checkpoint left its process as it
    # was, with no partial step record, ready to continue.
    first = snapshot(daemon.db)
    assert_resumable(first)
    # Each process runs its unfinished step again from its last commit after a failed
    # checkpoint (1 s, then 2 s later): a third run of it shows that the second run's
    # checkpoint did not commit either, where a moving process would have begun its next step.
    block_until(
        lambda: all(ran_again(daemon, pid, 3) for pid in pids),
        "every process ran its unfinished step a third time",
        within=30,
    )
    assert snapshot(daemon.db) == first
    assert degraded(daemon)

    tmpfs.drain()
    block_until(
        lambda: all(daemon.get_process(p)["status"] == "completed" for p in pids),
        "every process completed after the disk was freed",
    )
    assert health(daemon)[0] == 200
    assert daemon.metric("orchd_store_failing") == 0
    assert daemon.stop() == 0
    assert db_rows(daemon.db, "PRAGMA integrity_check") == [("ok",)]
    assert_whole(daemon.db, pids)

    log = daemon.last_run_stderr()
    assert "Traceback" not in log
    errors = error_lines(log)
    assert errors and all("disk is full" in ln for ln in errors), errors
    # The step whose checkpoint failed ran again (at least once per step), nothing else did.
    for pid in pids:
        runs = [daemon.step_runs(pid, name) for name in STEPS[1:-1]]
        assert all(n >= 1 for n in runs), runs


def test_stop_while_disk_full_then_restart(
    tmpfs: Tmpfs, make_daemon: Callable[..., DaemonProcess]
) -> None:
    daemon = make_daemon(tmpfs.path / "orchd.db")
    pids = [daemon.start_process("steady", {"pause": 0.3}) for _ in range(3)]
    block_until(
        lambda: all(len(s[2]) >= 2 for s in snapshot(daemon.db).values()),
        "every process committed a step",
    )
    tmpfs.fill()
    block_until(lambda: degraded(daemon), "health reports the full disk", within=5)
    # SIGTERM while no checkpoint can be written: a clean, prompt exit all the same.
    started = time.monotonic()
    assert daemon.stop() == 0, daemon.last_run_stderr()
    assert time.monotonic() - started < 8
    assert "Traceback" not in daemon.last_run_stderr()
    assert_resumable(snapshot(daemon.db))
    tmpfs.drain()
    daemon.start()
    for pid in pids:
        daemon.wait_process(pid)
    assert daemon.stop() == 0
    assert_whole(daemon.db, pids)


# --- a read-only filesystem ----------------------------------------------------------------------


def test_read_only_filesystem_at_start(
    tmpfs: Tmpfs, make_daemon: Callable[..., DaemonProcess]
) -> None:
    db = tmpfs.path / "orchd.db"
    daemon = make_daemon(db)
    pid = daemon.start_process("steady", {"pause": 0})
    daemon.wait_process(pid)
    assert daemon.stop() == 0
    tmpfs.remount("ro")
    assert daemon.run_to_exit() == 2
    err = daemon.last_run_stderr().strip()
    assert (
        err
        == f"orchd: {daemon.config_path}: database: directory {str(tmpfs.path)!r} is not writable"
    )
    tmpfs.remount("rw")
    assert_whole(db, [pid])


# --- a database locked by another process --------------------------------------------------------

#: The writer's busy timeout (orchd.store._connect: sqlite3.connect(timeout=5.0)).
BUSY_TIMEOUT = 5.0


@contextlib.contextmanager
def write_lock(db: str) -> Iterator[sqlite3.Connection]:
    """Hold the database's write lock from another connection, as a stray `sqlite3` shell would."""
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def test_short_lock_delays_a_start(make_daemon: Callable[..., DaemonProcess]) -> None:
    # Documented behaviour: a write waits up to the busy timeout (5 s) for the lock, so a
    # lock held for less than that only delays the request, which then succeeds.
    daemon = make_daemon()
    with write_lock(daemon.db) as conn:
        timer = threading.Timer(1.0, conn.execute, ("ROLLBACK",))
        timer.start()
        started = time.monotonic()
        pid = daemon.start_process("steady", {"pause": 0})
        waited = time.monotonic() - started
        timer.join()
    assert 0.9 <= waited < BUSY_TIMEOUT, waited
    daemon.wait_process(pid)
    assert health(daemon)[0] == 200
    assert daemon.stop() == 0
    assert_whole(daemon.db, [pid])


def test_long_lock_refuses_a_start_then_recovers(make_daemon: Callable[..., DaemonProcess]) -> None:
    # Documented behaviour: past the busy timeout the write fails: the start is refused with
    # 503 naming the lock, health turns degraded; nothing is created, nothing is lost.
    daemon = make_daemon()
    running = daemon.start_process("steady", {"pause": 0.5})
    daemon.wait_step_started(running, "part 1")
    before = snapshot(daemon.db)
    with write_lock(daemon.db):
        started = time.monotonic()
        status, problem = daemon.request("POST", "/api/processes/steady", {"pause": 0})
        waited = time.monotonic() - started
        assert status == 503, problem
        assert problem["detail"] == "database write failed: database is locked", problem
        assert BUSY_TIMEOUT - 0.5 <= waited < 2 * BUSY_TIMEOUT, waited
        body = degraded(daemon)
        assert body is not None and "locked" in body["database"], body
        assert daemon.metric("orchd_store_failing") == 1
        assert snapshot(daemon.db).keys() == before.keys()  # the refused start left nothing
    block_until(
        lambda: daemon.get_process(running)["status"] == "completed",
        "the running process completed",
    )
    pid = daemon.start_process("steady", {"pause": 0})
    daemon.wait_process(pid)
    assert health(daemon)[0] == 200
    assert daemon.stop() == 0
    assert_whole(daemon.db, [running, pid])
    assert "Traceback" not in daemon.last_run_stderr()


# --- the database file deleted or replaced under the daemon --------------------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced"])
@pytest.mark.parametrize("which", ["", "-wal"])
def test_database_file_gone_is_reported(
    how: str, which: str, make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = make_daemon()
    first = daemon.start_process("steady", {"pause": 0})
    daemon.wait_process(first)
    # The health check below looks at the files: let it see the WAL once before it goes.
    assert health(daemon)[0] == 200
    target = daemon.db + which
    assert os.path.exists(target)
    if how == "deleted":
        os.unlink(target)
    else:
        other = tmp_path / "other.db"
        sqlite3.connect(other).close()
        os.replace(other, target)
    # Without a write in between: an idle daemon must notice too.
    body = block_until(lambda: degraded(daemon), "health reports the lost file", within=3)
    assert how in body["database"] and target in body["database"], body
    assert daemon.metric("orchd_store_failing") == 1
    # A write is refused rather than made into a file no later start will see.
    status, problem = daemon.request("POST", "/api/processes/steady", {"pause": 0})
    assert status == 503, problem
    assert how in problem["detail"], problem
    what = "WAL file" if which else "database file"
    daemon.wait_for_log(f"{what} {target} was {how}")


def test_a_deleted_wal_loses_no_acknowledged_step(
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = make_daemon()
    done = [daemon.start_process("steady", {"pause": 0}) for _ in range(5)]
    for pid in done:
        daemon.wait_process(pid)
    assert health(daemon)[0] == 200  # the WAL has been seen
    os.unlink(daemon.db + "-wal")
    daemon.wait_for_log("its committed pages were saved into the database file")
    daemon.kill()
    daemon.start()
    for pid in done:
        assert daemon.get_process(pid)["status"] == "completed"
