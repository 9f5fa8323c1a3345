"""How the ``orchd`` command prints for people: tables, fields, times and durations, and one
process with its step log, its forks and its children (``--json`` prints what the API answers
instead). Standard library only, like the rest of the client."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from orchd.branchpaths import within


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Aligned columns; the last one is not padded."""
    cells = [list(headers)] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        line = "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=False))
        print(f"{line}  {row[-1]}".rstrip() if len(row) > 1 else row[0])


def print_fields(pairs: Sequence[tuple[str, Any]]) -> None:
    shown = [(k, v) for k, v in pairs if v not in (None, "")]
    width = max((len(k) for k, _ in shown), default=0) + 1
    for key, value in shown:
        print(f"{key + ':':<{width}} {value}")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def when(value: Any) -> str:
    """A timestamp, compactly, in local time: the clock for today, the date otherwise."""
    moment = _parse_time(value)
    if moment is None:
        return "" if value is None else str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone()
    if moment.date() == datetime.now(moment.tzinfo).date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M")


def duration(start: Any, end: Any) -> str:
    first, last = _parse_time(start), _parse_time(end)
    if first is None or last is None:
        return ""
    return seconds_text((last - first).total_seconds())


def seconds_text(seconds: float) -> str:
    """A span of time for people: ``850ms``, ``12.5s``, ``3m05s``, ``2h10m``, ``3d04h``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def epoch_text(value: Any, now: float) -> str:
    """An epoch time as ISO 8601 in UTC, with how long ago (or how soon) it is from ``now``."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "" if value is None else str(value)
    moment = datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")
    moment = moment.replace("+00:00", "Z")
    span = seconds_text(abs(now - value))
    return f"{moment} ({span} ago)" if value <= now else f"{moment} (in {span})"


def print_health(health: dict[str, Any], now: float | None = None) -> None:
    """``GET /api/health`` for people: its fields, then a cluster's nodes as a table."""
    now = time.time() if now is None else now
    pairs: list[tuple[str, Any]] = []
    for key, value in health.items():
        if key == "nodes":
            continue
        if key == "uptime_seconds" and isinstance(value, int | float):
            key, value = "uptime", seconds_text(float(value))
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, dict):  # processes by status: "running 2, failed 1"
            value = ", ".join(f"{k} {v}" for k, v in value.items() if v) or "none"
        pairs.append((str(key), value))
    print_fields(pairs)
    nodes = [n for n in health.get("nodes") or [] if isinstance(n, dict)]
    if not nodes:
        return
    # The nodes' times are the database's clock; the ages are from this machine's.
    print("\nnodes:")
    rows = [
        (
            f"{n.get('node_id')} (this node)"
            if n.get("node_id") == health.get("node")
            else n.get("node_id"),
            epoch_text(n.get("started_at"), now),
            epoch_text(n.get("heartbeat_at"), now),
            epoch_text(n.get("lease_until"), now),
        )
        for n in nodes
    ]
    print_table(("NODE", "STARTED", "LAST HEARTBEAT", "LEASE UNTIL"), rows)


def one_line(text: Any, limit: int = 80) -> str:
    if text is None:
        return ""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _children_summary(children: Any) -> str | None:
    """``12 children: 9 completed, 2 running, 1 failed`` (counts, not 10,000 lines)."""
    if not isinstance(children, list) or not children:
        return None
    counts: dict[str, int] = {}
    for child in children:
        status = str(child.get("status")) if isinstance(child, dict) else "?"
        counts[status] = counts.get(status, 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda i: -i[1]))
    return f"{len(children)}: {parts}  (orchd ps --parent ID lists them)"


def _in_branch(step: dict[str, Any], branch: str | None) -> bool:
    """Whether a step record belongs to the log asked for: the main line's (no branch), or
    the branches at or under ``branch``."""
    where = step.get("branch")
    if branch is None:
        return where is None
    return isinstance(where, str) and within(where, branch)


def print_branches(proc: dict[str, Any]) -> None:
    """A process's forks as a tree: each fork with its branches counted by status, and the
    branches listed while there are few (else the ones that did not finish)."""
    forks = [f for f in proc.get("branches") or [] if isinstance(f, dict)]
    if not forks:
        return
    print("\nbranches:")
    for fork in forks:
        path = str(fork.get("fork"))
        depth = "  " * (1 + path.count("/") // 2)
        counts = fork.get("counts") or {}
        total = sum(int(n) for n in counts.values())
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda i: -i[1]))
        joined = "joined" if fork.get("joined") else "forked"
        print(f"{depth}{path}  {joined}  {total} started: {parts}")
        for b in fork.get("branches") or []:
            error = one_line(b.get("error"), 60)
            line = f"{depth}  {b.get('branch')}  {b.get('status')}  {b.get('step') or ''}"
            print(f"{line}  {error}".rstrip())
        if fork.get("abridged"):
            listed = len(fork.get("branches") or [])
            print(
                f"{depth}  ({total - listed} more; orchd show {proc.get('id')} "
                f"--branch '{path}' gives their steps)"
            )


def _skip_note(step: dict[str, Any]) -> str | None:
    """``skipped by uid:1000 (alice): applied by hand`` for a step an operator skipped."""
    reason = step.get("reason")
    if not reason:
        return None
    actor = step.get("actor")
    return f"skipped by {actor}: {reason}" if actor else f"skipped: {reason}"


def print_actions(proc: dict[str, Any]) -> None:
    """The audit trail: who started, resumed, retried, skipped, aborted or answered the
    process, and when, oldest first."""
    actions = [a for a in proc.get("actions") or [] if isinstance(a, dict)]
    if not actions:
        return
    print("\nactions:")
    rows = [
        (when(a.get("at")), a.get("action"), a.get("actor"), one_line(a.get("detail")))
        for a in actions
    ]
    print_table(("AT", "ACTION", "ACTOR", "DETAIL"), rows)


def _blocked_on(blocked: Any) -> str | None:
    """README "Limits on shared resources": ``router r1 since 12:00:01`` while a step waits for a
    limit's slot."""
    if not isinstance(blocked, dict):
        return None
    key = f" {blocked.get('key')}" if blocked.get("key") else ""
    return f"{blocked.get('resource')}{key} since {when(blocked.get('since'))}"


def print_process(proc: dict[str, Any], branch: str | None = None) -> None:
    """A process for humans: header, step log (with skip reasons), forks, audit trail, and the
    failed step's traceback."""
    status = proc.get("status")
    target = proc.get("target")
    form = proc.get("form")
    form_text = None
    if status == "suspended" and isinstance(form, dict):
        fields = ", ".join(form.get("properties") or {}) or "(no fields)"
        form_text = f"{fields}  (answer: orchd resume {proc.get('id')} --input JSON)"
    print_fields(
        [
            ("id", proc.get("id")),
            ("workflow", f"{proc.get('workflow')} ({target})" if target else proc.get("workflow")),
            ("status", status),
            ("current step", proc.get("current_step")),
            ("subscription", proc.get("subscription_id")),
            ("parent", proc.get("parent_id")),
            ("children", _children_summary(proc.get("children"))),
            ("reporter", proc.get("reporter")),
            ("trace", proc.get("trace_id")),
            ("node", proc.get("node")),
            ("created", when(proc.get("created_at"))),
            ("updated", when(proc.get("updated_at"))),
            ("error", proc.get("error")),
            ("attempts", proc.get("attempts") or None),
            ("next retry", when(proc.get("next_retry_at")) or None),
            ("blocked on", _blocked_on(proc.get("blocked_on"))),
            ("form", form_text),
        ]
    )
    every = [s for s in proc.get("steps") or [] if isinstance(s, dict)]
    steps = [s for s in every if _in_branch(s, branch)]
    if steps:
        print()
        rows = [
            (
                s.get("name") if branch is None else f"{s.get('branch')}: {s.get('name')}",
                s.get("status"),
                when(s.get("started_at")),
                duration(s.get("started_at"), s.get("finished_at")),
                one_line(s.get("error") or _skip_note(s)),
            )
            for s in steps
        ]
        print_table(("STEP", "STATUS", "STARTED", "DURATION", "ERROR / REASON"), rows)
    if branch is None:
        print_branches(proc)
        print_actions(proc)
    # Only while the process is stuck on it: once a retry got past the step, the old attempt's
    # traceback is history (still in the step log and --json), not the problem to look at.
    stuck = ("failed", "waiting")
    failed = [s for s in every if s.get("traceback") and s.get("status") in stuck]
    if failed and status in stuck:
        where = f" (branch {failed[-1]['branch']})" if failed[-1].get("branch") else ""
        print(f"\ntraceback of step {failed[-1].get('name')!r}{where}:")
        print(str(failed[-1]["traceback"]).rstrip())
