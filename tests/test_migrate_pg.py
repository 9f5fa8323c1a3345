"""``orchd migrate --to postgresql://...``: a stopped SQLite database moves to PostgreSQL.

The copy is run as an operator runs it (the CLI in a subprocess); what it copied is then run by
an Engine on PostgreSQL: finished processes read the same, a waiting one goes on.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support import pg
from support.daemons import ROOT, WF_DIR

from orchd import Engine

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return pg._run(coro)


def migrate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WF_DIR), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "orchd", "migrate", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


async def fill(path: str) -> dict[str, str]:
    """A SQLite database with finished, waiting and subscription-holding processes."""
    async with Engine(database=path, workflows=["e2e_flows"]) as engine:
        done = await engine.start("e2e_hello", reporter="me")
        created = await engine.start("e2e_create", {"name": "w1", "customer_id": "c1"})
        asked = await engine.start("e2e_ask")
        failed = await engine.start("e2e_fail")
        for pid in (done, created, asked, failed):
            await engine.wait(pid)
        return {"done": done, "created": created, "asked": asked, "failed": failed}


def test_migrate_copies_everything_and_the_copy_runs_on(
    tmp_path: Path, pg_server: pg.PgServer
) -> None:
    source = str(tmp_path / "orchd.db")
    pids = run(fill(source))
    target = pg.fresh_schema(pg_server)

    copied = migrate("--database", source, "--to", target)
    assert copied.returncode == 0, copied.stderr
    assert "verified the counts" in copied.stdout
    counts = dict(line.split("\t") for line in copied.stdout.splitlines() if "\t" in line)
    assert counts["processes"] == "4" and counts["subscriptions"] == "1"

    async def compare() -> None:
        async with Engine(database=source, workflows=["e2e_flows"]) as before:
            old = {name: await before.get(pid) for name, pid in pids.items()}
            old_events = [e async for e in _events(before)]
        async with Engine(database=target, workflows=["e2e_flows"]) as after:
            for name, pid in pids.items():
                new = await after.get(pid)
                assert new.status == old[name].status and new.state == old[name].state
                assert new.steps == old[name].steps and new.actions == old[name].actions
            sub = await after.get_subscription(old["created"].state["subscription_id"])
            assert [p.id for p in sub.processes] == [pids["created"]]
            assert [e async for e in _events(after)] == old_events
            # The waiting process goes on where it was, on PostgreSQL.
            await after.resume(pids["asked"], {"count": 4})
            resumed = await after.wait(pids["asked"])
            assert resumed.status == "completed" and resumed.state["doubled"] == 8
            # New ids come after the copied ones.
            newer = await after.start("e2e_hello")
            assert (await after.list_processes(limit=1)).items[0].id == newer

    run(compare())

    again = migrate("--database", source, "--to", target)
    assert again.returncode == 1 and "not empty" in again.stderr


async def _events(engine: Engine) -> Any:
    async for event in engine.stream(0):
        yield (event.id, getattr(event, "process_id", None), getattr(event, "status", None))
        if event.id >= engine.last_event_id:
            return


def test_migrate_refuses_what_it_cannot_copy_safely(tmp_path: Path, pg_server: pg.PgServer) -> None:
    source = str(tmp_path / "orchd.db")
    run(fill(source))
    target = pg.fresh_schema(pg_server)

    no_url = migrate("--database", source, "--to", str(tmp_path / "other.db"))
    assert no_url.returncode == 2 and "PostgreSQL URL" in no_url.stderr
    missing = migrate("--database", str(tmp_path / "nothing.db"), "--to", target)
    assert missing.returncode == 2 and "does not exist" in missing.stderr

    # A daemon still running on the file holds its lock: nothing is copied.
    fd = os.open(source, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = migrate("--database", source, "--to", target)
    finally:
        os.close(fd)
    assert busy.returncode == 1 and "stop it first" in busy.stderr
    assert pg.query(target, "SELECT to_regclass('processes')")[0][0] is None  # untouched


@pytest.mark.parametrize("command", [["backup", "x.db"], ["check"]])
def test_file_tools_say_they_work_on_sqlite_only(
    command: list[str], pg_server: pg.PgServer
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "orchd", *command, "--database", pg_server.url],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 2 and "pg_dump" in done.stderr, done.stderr
