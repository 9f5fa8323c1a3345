"""A process's steps drawn on a time axis (README "Web console"): one lane for the main line and
one per branch (README "Parallel branches"), a bar per step record, waits and retries marked.

Only the geometry is computed here; ``templates/process.html`` draws it as SVG inside the page,
so every text goes through the templates' escaping, and it is styled by ``console.css`` alone
(the CSP allows no inline style: only SVG's own attributes, positions and sizes, are set).

- A bar runs from a record's ``started_at`` to its ``finished_at`` (at least ``MIN_BAR`` wide,
  so an instant step still shows), coloured by its status.
- A wait is the time after a record that left its lane waiting (``suspended``, ``waiting``
  for a retry, ``awaiting_callback``) until the lane's next record, or until now while the
  process still waits: a hatched segment, its kind and length in its title.
- A retry is a record of a step that already has an earlier record in its lane: it is marked,
  with its attempt's number.
- A process that has not finished has a "now" line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from orchd.api.console.render import duration
from orchd.branchpaths import path_order
from orchd.model import FINAL, Process, StepRecord, StepStatus

#: The drawing's size, in SVG units: the lanes' names on the left, the time axis to their right.
LABEL_W = 190
CHART_W = 760
WIDTH = LABEL_W + CHART_W + 20
AXIS_H = 28
LANE_H = 22
BAR_H = 14
MIN_BAR = 2.0
#: Where a time is on the axis.
XOf = Callable[[datetime], float]
#: Lanes drawn at most; the steps table below still lists every step shown.
MAX_LANES = 60
#: A lane's name is cut to this many characters (the whole name in its title).
LABEL_CHARS = 26
#: A bar names its step inside it when it has room for this many units per character.
CHAR_W = 7.0
#: Statuses a record leaves its lane waiting in.
WAITS = frozenset({StepStatus.SUSPENDED, StepStatus.WAITING, StepStatus.AWAITING_CALLBACK})
#: What a wait is called in its title.
WAIT_NAMES = {
    StepStatus.SUSPENDED: "waited for a form",
    StepStatus.WAITING: "waited to retry",
    StepStatus.AWAITING_CALLBACK: "waited for the callback",
}


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    status: str
    title: str
    #: The step's name when it fits inside the bar, else "".
    label: str = ""
    retry: bool = False


@dataclass(frozen=True)
class Wait:
    x: float
    y: float
    width: float
    status: str
    title: str


@dataclass(frozen=True)
class Lane:
    name: str
    label: str
    y: float
    #: The branch it draws (None: the main line), for a link to its steps.
    branch: str | None


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass
class Timeline:
    width: int
    height: int
    label_w: int
    chart_w: int
    axis_h: int
    lane_h: int
    bar_h: int
    lanes: list[Lane] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)
    ticks: list[Tick] = field(default_factory=list)
    #: Where "now" is, for a process that has not finished.
    now_x: float | None = None
    #: Lanes left out (beyond ``MAX_LANES``).
    more_lanes: int = 0
    #: What the drawing shows, in words (its accessible name).
    summary: str = ""


def build(
    process: Process, steps: list[tuple[int, StepRecord, str | None]], now: datetime
) -> Timeline | None:
    """The timeline of ``steps`` (``pages.timeline``'s numbered records, with their branch);
    ``None`` when there is nothing to draw."""
    if not steps:
        return None
    finished = process.status in FINAL
    start = min([process.created_at, *(s.started_at for _, s, _ in steps)])
    end = max(s.finished_at for _, s, _ in steps)
    if not finished:
        end = max(end, now)
    span = max((end - start).total_seconds(), 0.001)

    def x_of(when: datetime) -> float:
        return LABEL_W + (when - start).total_seconds() / span * CHART_W

    names = sorted({b for _, _, b in steps if b is not None}, key=path_order)
    shown = [None, *names][:MAX_LANES]
    rows = {name: i for i, name in enumerate(shown)}
    timeline = Timeline(
        width=WIDTH,
        height=AXIS_H + len(shown) * LANE_H + 8,
        label_w=LABEL_W,
        chart_w=CHART_W,
        axis_h=AXIS_H,
        lane_h=LANE_H,
        bar_h=BAR_H,
        more_lanes=len(names) + 1 - len(shown),
        ticks=_ticks(span),
    )
    for name, row in rows.items():
        text = "main" if name is None else name
        label = text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"
        timeline.lanes.append(Lane(name=text, label=label, y=AXIS_H + row * LANE_H, branch=name))
    last: dict[str | None, StepRecord] = {}
    runs: dict[tuple[str | None, str], int] = {}
    for n, record, branch in steps:
        lane = rows.get(branch)
        if lane is None:
            continue
        y = AXIS_H + lane * LANE_H + (LANE_H - BAR_H) / 2
        before = last.get(branch)
        if before is not None and before.status in WAITS:
            timeline.waits.append(_wait(before, record.started_at, y, x_of))
        last[branch] = record
        attempt = runs.get((branch, record.name), 0) + 1
        runs[(branch, record.name)] = attempt
        timeline.bars.append(_bar(n, record, attempt, y, x_of))
    if not finished:
        for branch, record in last.items():
            if record.status in WAITS and branch in rows:
                y = AXIS_H + rows[branch] * LANE_H + (LANE_H - BAR_H) / 2
                timeline.waits.append(_wait(record, now, y, x_of))
        timeline.now_x = x_of(now)
    retries = sum(1 for b in timeline.bars if b.retry)
    counts = [
        _count(len(timeline.bars), "step", "steps") + f" over {duration(start, end)}",
        _count(len(shown), "lane", "lanes"),
    ]
    if timeline.waits:
        counts.append(_count(len(timeline.waits), "wait", "waits"))
    if retries:
        counts.append(_count(retries, "retry", "retries"))
    timeline.summary = ", ".join(counts)
    return timeline


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _bar(n: int, record: StepRecord, attempt: int, y: float, x_of: XOf) -> Bar:
    x = x_of(record.started_at)
    width = max(x_of(record.finished_at) - x, MIN_BAR)
    took = duration(record.started_at, record.finished_at)
    title = f"#{n} {record.name}: {record.status}, {took}"
    if attempt > 1:
        title += f" (attempt {attempt})"
    if record.error:
        title += f" — {record.error}"
    fits = width >= (len(record.name) + 1) * CHAR_W
    return Bar(
        x=round(x, 1),
        y=y,
        width=round(width, 1),
        status=str(record.status),
        title=title,
        label=record.name if fits else "",
        retry=attempt > 1,
    )


def _wait(record: StepRecord, until: datetime, y: float, x_of: XOf) -> Wait:
    x = x_of(record.finished_at)
    width = max(x_of(until) - x, MIN_BAR)
    what = WAIT_NAMES.get(StepStatus(record.status), "waited")
    return Wait(
        x=round(x, 1),
        y=y,
        width=round(width, 1),
        status=str(record.status),
        title=f"{record.name}: {what}, {duration(record.finished_at, until)}",
    )


#: Tick spacings to choose from, in seconds.
_SPACINGS = [m * 10.0**e for e in range(-3, 6) for m in (1, 2, 5)]  # 1 ms ... 500,000 s


def _ticks(span: float) -> list[Tick]:
    """Round times from 0 along the axis, at most about eight."""
    spacing = next((s for s in _SPACINGS if span / s <= 8), _SPACINGS[-1])
    ticks, t = [], 0.0
    while t <= span * 1.0001:
        ticks.append(Tick(x=round(LABEL_W + t / span * CHART_W, 1), label=_seconds(t)))
        t += spacing
    return ticks


def _seconds(t: float) -> str:
    if t == 0:
        return "0"
    if t < 1:
        return f"{t * 1000:.0f} ms"
    if t < 120:
        return f"{t:g} s"
    if t < 7200:
        return f"{t / 60:g} min"
    return f"{t / 3600:g} h"
