"""``orchd check --workflows MODULE ...``: which in-flight processes would new code strand?

Run before a deploy: it imports the new workflow code, reads the database read-only (safe beside
a running daemon, and on a backup) and lists every process that is not ``completed`` or
``aborted`` whose position (its next step's key) the new code lacks, or whose workflow it does
not define. Such a process would fail when it goes on (contract §7); everything else continues
at its key, whatever was added, removed or reordered around it.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from dataclasses import asdict, dataclass
from typing import TextIO

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


def stranded(conn: sqlite3.Connection, workflows: dict[str, Workflow]) -> list[StrandedProcess]:
    """The unfinished processes the given workflow code cannot continue, oldest first."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(processes)")}
    keyed = "step_key" in columns  # a database from before step keys (a backup) has none
    finished = ", ".join(f"'{s.value}'" for s in FINAL)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    rows = conn.execute(
        "SELECT rowid, id, workflow, status, pc, current_step, "
        + ("step_key, step_occurrence" if keyed else "NULL, 0")
        + f" FROM processes WHERE status NOT IN ({finished}) ORDER BY rowid"
    ).fetchall()
    found = []
    for pk, pid, name, status, pc, current, key, occurrence in rows:
        wf = workflows.get(name)
        try:
            if wf is None:
                raise Stranded(f"workflow {name!r} is not in the new code")
            at = wf.locate(key, occurrence or 0, pc, current)
            if "branches" in tables and at < len(wf.steps) and wf.steps[at].forks:
                _locate_branches(conn, pk, wf.steps[at])
        except Stranded as exc:
            found.append(StrandedProcess(pid, name, status, key or current, str(exc)))
    return found


def _locate_branches(conn: sqlite3.Connection, pk: int, fork: Step) -> None:
    """Raise Stranded when a branch of the fork a process stands at has lost its step."""
    rows = conn.execute(
        "SELECT path, step_key, step_occurrence FROM branches "
        "WHERE process = ? AND step_key IS NOT NULL ORDER BY path",
        (pk,),
    )
    for path, key, occurrence in rows:
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
        path = database_path(args.database, args.config)
        try:
            workflows = load_workflows(args.workflows)
        except ConfigError as exc:
            raise MaintenanceError(f"--workflows: {exc.detail}", EXIT_USAGE) from None
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
    if args.json:
        body = {"ok": not found, "checked": checked, "stranded": [asdict(p) for p in found]}
        print(json.dumps(body, indent=2))
    else:
        print_stranded(found, checked, sys.stdout)
    return EXIT_FAILED if found else EXIT_OK
