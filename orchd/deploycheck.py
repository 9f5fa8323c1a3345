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
import asyncio
import json
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TextIO

from orchd.dsl import Positions, Step, Stranded, Workflow, branch_steps
from orchd.engine.loading import load_workflows
from orchd.errors import ConfigError, StoreError
from orchd.store.base import Placement
from orchd.store.maintenance import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    MaintenanceError,
    database_path,
)
from orchd.store.readonly import open_readonly


@dataclass(frozen=True)
class StrandedProcess:
    id: str
    workflow: str
    status: str
    key: str | None
    problem: str


async def read_placements(database: str) -> list[Placement]:
    """Where every unfinished process stands, read through the store's read side, read-only."""
    async with open_readonly(database) as reads:
        return await reads.placements()


def placed(
    placements: Iterable[Placement], workflows: dict[str, Workflow]
) -> list[StrandedProcess]:
    """Of ``placements``, those the workflow code cannot place: their own position, or (at a
    fork) one of their branches' positions is gone."""
    found = []
    for p in placements:
        wf = workflows.get(p.workflow)
        try:
            if wf is None:
                raise Stranded(f"workflow {p.workflow!r} is not in the new code")
            at = wf.locate(p.step_key, p.step_occurrence, p.pc, p.current_step)
            if at < len(wf.steps) and wf.steps[at].forks:
                _locate_branches(wf.steps[at], p.branches)
        except Stranded as exc:
            key = p.step_key or p.current_step
            found.append(StrandedProcess(p.id, p.workflow, p.status, key, str(exc)))
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
        placements = asyncio.run(read_placements(path))
    except MaintenanceError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}, indent=2))
        print(f"orchd: check: {exc}", file=sys.stderr)
        return exc.exit_status
    except StoreError as exc:
        print(f"orchd: check: {exc.detail}", file=sys.stderr)
        return EXIT_FAILED
    return _report(args, placed(placements, workflows), len(placements))


def _report(args: argparse.Namespace, found: list[StrandedProcess], checked: int) -> int:
    if args.json:
        body = {"ok": not found, "checked": checked, "stranded": [asdict(p) for p in found]}
        print(json.dumps(body, indent=2))
    else:
        print_stranded(found, checked, sys.stdout)
    return EXIT_FAILED if found else EXIT_OK
