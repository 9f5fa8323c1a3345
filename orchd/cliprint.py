"""How the ``orchd`` command prints for people: tables, fields, times and durations, and one
process with its step log, its forks and its children (``--json`` prints what the API answers
instead). Standard library only, like the rest of the client."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
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
    seconds = (last - first).total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


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


def print_process(proc: dict[str, Any], branch: str | None = None) -> None:
    """A process for humans: header, step log, the failed step's traceback."""
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
            ("created", when(proc.get("created_at"))),
            ("updated", when(proc.get("updated_at"))),
            ("error", proc.get("error")),
            ("attempts", proc.get("attempts") or None),
            ("next retry", when(proc.get("next_retry_at")) or None),
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
                one_line(s.get("error")),
            )
            for s in steps
        ]
        print_table(("STEP", "STATUS", "STARTED", "DURATION", "ERROR"), rows)
    if branch is None:
        print_branches(proc)
    # Only while the process is stuck on it: once a retry got past the step, the old attempt's
    # traceback is history (still in the step log and --json), not the problem to look at.
    stuck = ("failed", "waiting")
    failed = [s for s in every if s.get("traceback") and s.get("status") in stuck]
    if failed and status in stuck:
        where = f" (branch {failed[-1]['branch']})" if failed[-1].get("branch") else ""
        print(f"\ntraceback of step {failed[-1].get('name')!r}{where}:")
        print(str(failed[-1]["traceback"]).rstrip())
