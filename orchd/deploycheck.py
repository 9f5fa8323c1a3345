"""``orchd check --workflows MODULE ...``: which in-flight processes would new code strand?

Run before a deploy: it imports the new workflow code, reads the database read-only (safe beside
a running daemon, and on a backup) and lists every process that is not ``completed`` or
``aborted`` whose position (its next step's key) the new code lacks, or whose workflow it does
not define. Such a process would fail when it goes on (README "Changing workflows safely");
everything else continues
at its key, whatever was added, removed or reordered around it.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from orchd.dburl import is_postgres
from orchd.dsl import Positions, Step, Stranded, Workflow, branch_steps
from orchd.engine.loading import load_workflows
from orchd.errors import ConfigError
from orchd.status import FINAL
from orchd.store.maintenance import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    MaintenanceError,
    connect_readonly,
    database_path,
)


@dataclass(frozen=True)
class StrandedProcess:
    id: str
    workflow: str
    status: str
    key: str | None
    problem: str


_FINISHED = ", ".join(f"'{s.value}'" for s in FINAL)
#: The unfinished processes, oldest first, as ``placed`` reads them.
UNFINISHED = (
    "SELECT rowid, id, workflow, status, pc, current_step, step_key, step_occurrence "
    f"FROM processes WHERE status NOT IN ({_FINISHED}) ORDER BY rowid"
)
#: Where the started branches of unfinished processes stand (README "Parallel branches").
BRANCHES = (
    "SELECT b.process, b.path, b.step_key, b.step_occurrence FROM branches b "
    f"JOIN processes p ON p.rowid = b.process WHERE p.status NOT IN ({_FINISHED}) "
    "AND b.step_key IS NOT NULL ORDER BY b.process, b.path"
)
#: Branch positions by process key: (path, key, occurrence).
BranchPlaces = Mapping[int, list[tuple[str, str, int]]]


def _by_process(rows: Iterable[Sequence[Any]]) -> dict[int, list[tuple[str, str, int]]]:
    found: dict[int, list[tuple[str, str, int]]] = {}
    for pk, path, key, occurrence in rows:
        found.setdefault(pk, []).append((path, key, occurrence or 0))
    return found


def stranded(conn: sqlite3.Connection, workflows: dict[str, Workflow]) -> list[StrandedProcess]:
    """The unfinished processes the given workflow code cannot continue, oldest first."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(processes)")}
    keyed = "step_key" in columns  # a database from before step keys (a backup) has none
    query = UNFINISHED if keyed else UNFINISHED.replace("step_key, step_occurrence", "NULL, 0")
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    branches = _by_process(conn.execute(BRANCHES)) if "branches" in tables else {}
    return placed(conn.execute(query).fetchall(), workflows, branches)


def placed(
    rows: Iterable[Sequence[Any]], workflows: dict[str, Workflow], branches: BranchPlaces
) -> list[StrandedProcess]:
    """Of ``rows`` (``UNFINISHED``'s columns), those the workflow code cannot place: their
    own position, or (at a fork) one of their branches' positions is gone."""
    found = []
    for pk, pid, name, status, pc, current, key, occurrence in rows:
        wf = workflows.get(name)
        try:
            if wf is None:
                raise Stranded(f"workflow {name!r} is not in the new code")
            at = wf.locate(key, occurrence or 0, pc, current)
            if at < len(wf.steps) and wf.steps[at].forks:
                _locate_branches(wf.steps[at], branches.get(pk, []))
        except Stranded as exc:
            found.append(StrandedProcess(pid, name, status, key or current, str(exc)))
    return found


def _locate_branches(fork: Step, places: list[tuple[str, str, int]]) -> None:
    """Raise Stranded when a branch of the fork a process stands at has lost its step."""
    for path, key, occurrence in places:
        steps = branch_steps(fork, path)
        if steps is None:
            raise Stranded(f"workflow changed: branch {path!r} no longer exists")
        if Positions(steps).index(key, occurrence) is None:
            raise Stranded(f"workflow changed: step key {key!r} no longer exists (branch {path!r})")


def print_stranded(found: list[StrandedProcess], checked: int, stream: TextIO) -> None:
    if not found:
        print(f"no unfinished process would be stranded ({checked} checked)", file=stream)
        return
    rows = [("ID", "WORKFLOW", "STATUS", "KEY", "PROBLEM")]
    rows += [(p.id, p.workflow, p.status, p.key or "", p.problem) for p in found]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4],
              file=stream)  # fmt: skip
    print(f"{len(found)} of {checked} unfinished processes would be stranded", file=stream)


def cmd_check_workflows(args: argparse.Namespace) -> int:
    try:
        path = database_path(args.database, args.config, postgres=True)
        try:
            workflows = load_workflows(args.workflows)
        except ConfigError as exc:
            raise MaintenanceError(f"--workflows: {exc.detail}", EXIT_USAGE) from None
        if is_postgres(path):
            found, checked = _on_postgres(path, workflows)
            return _report(args, found, checked)
        conn = connect_readonly(path)
        try:
            found = stranded(conn, workflows)
            finished = ", ".join(f"'{s.value}'" for s in FINAL)
            checked = conn.execute(
                f"SELECT count(*) FROM processes WHERE status NOT IN ({finished})"
            ).fetchone()[0]
        finally:
            conn.close()
    except MaintenanceError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}, indent=2))
        print(f"orchd: check: {exc}", file=sys.stderr)
        return exc.exit_status
    except sqlite3.Error as exc:
        print(f"orchd: check: cannot read the database: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return _report(args, found, checked)


def _report(args: argparse.Namespace, found: list[StrandedProcess], checked: int) -> int:
    if args.json:
        body = {"ok": not found, "checked": checked, "stranded": [asdict(p) for p in found]}
        print(json.dumps(body, indent=2))
    else:
        print_stranded(found, checked, sys.stdout)
    return EXIT_FAILED if found else EXIT_OK


def _on_postgres(url: str, workflows: dict[str, Workflow]) -> tuple[list[StrandedProcess], int]:
    """The same check on a cluster's database (read-only: one SELECT)."""
    import asyncio

    import asyncpg

    async def read() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction(readonly=True, isolation="repeatable_read"):
                rows = [tuple(r) for r in await conn.fetch(UNFINISHED)]
                return rows, [tuple(r) for r in await conn.fetch(BRANCHES)]
        finally:
            await conn.close()

    try:
        rows, branches = asyncio.run(read())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise MaintenanceError(f"cannot read the database: {exc}") from None
    return placed(rows, workflows, _by_process(branches)), len(rows)
