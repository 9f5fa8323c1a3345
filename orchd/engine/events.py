"""Announcing what the engine commits: to SSE clients, waiters and anyone listening.

Events are stored by the writer in the transaction that causes them (the id is the events
table's key), then handed to the hub here in commit order. A listener that asks for events
after an id gets what is kept of them from memory or the database, then follows live; one that
asks for more than is kept gets one :class:`~orchd.model.Reset` instead of a silent gap.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchd.model import Event, ProcessStatus, Reset, StepStatus
from orchd.store.base import Checkpoint

if TYPE_CHECKING:
    from orchd.engine.host import Identity

#: Events a listener may leave unread before the hub closes it (unless it asks for another
#: bound): enough for an in-process consumer to keep up with thousands of processes.
LISTENER_BUFFER = 10_000
#: Events read from the database per query while a listener catches up.
PAGE = 500

Bounds = Callable[[], Awaitable[tuple[int, int]]]
After = Callable[[int, int], Awaitable[list[Event]]]


class EventHub:
    """Fans committed events out to listeners, keeping the newest in memory."""

    def __init__(self, keep: int = 2_000) -> None:
        #: The newest id announced (set from the database when the engine opens).
        self.last_id = 0
        self.recent: deque[Event] = deque(maxlen=keep)
        self.listeners: set[asyncio.Queue[Event | None]] = set()

    def publish(self, events: list[Event]) -> None:
        if not events:
            return
        self.last_id = events[-1].id
        self.recent.extend(events)
        for listener in list(self.listeners):
            for event in events:
                try:
                    listener.put_nowait(event)
                except asyncio.QueueFull:
                    # A listener that cannot keep up is closed rather than allowed to grow.
                    self.listeners.discard(listener)
                    listener.get_nowait()
                    listener.put_nowait(None)
                    break

    async def stream(
        self, after: int | None, buffer: int, bounds: Bounds, stored: After
    ) -> AsyncGenerator[Event | Reset, None]:
        """Events after ``after`` (None: from now on), then live ones. ``bounds`` and
        ``stored`` read the database's oldest kept and newest ids, and kept events."""
        # Registered first: whatever is announced while the backlog is read waits here.
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=buffer)
        upto = self.last_id
        self.listeners.add(queue)
        try:
            seen = upto if after is None else after
            if seen > upto:
                # An id this database never gave (another database, or from before ids were
                # durable): what the client has cannot be continued.
                yield Reset(id=upto, reason=f"event {seen} is unknown here; reload")
                seen = upto
            elif seen < upto:
                kept = list(self.recent)
                if kept and kept[0].id <= seen + 1:
                    for event in kept:
                        if seen < event.id <= upto:
                            yield event
                    seen = upto
                else:
                    oldest, _ = await bounds()
                    if seen + 1 < oldest:
                        yield Reset(
                            id=upto,
                            reason=f"events after {seen} are no longer kept (the oldest kept "
                            f"is {oldest}); reload",
                        )
                        seen = upto
                    while seen < upto:
                        page = await stored(seen, PAGE)
                        if not page:
                            break
                        for event in page:
                            if event.id > upto:
                                break
                            yield event
                        seen = max(seen, min(page[-1].id, upto))
                    seen = upto
            while True:
                item = await queue.get()
                if item is None:
                    return
                if item.id > seen:
                    seen = item.id
                    yield item
        finally:
            self.listeners.discard(queue)

    def close(self) -> None:
        for listener in list(self.listeners):
            try:
                listener.put_nowait(None)
            except asyncio.QueueFull:
                pass
        self.listeners.clear()


def event(
    kind: str,
    pid: str,
    workflow: str,
    status: ProcessStatus,
    step: str | None = None,
    step_status: StepStatus | None = None,
    *,
    parent_id: str | None = None,
    at: datetime | None = None,
) -> Event:
    """An event to store and announce; the id is the events table's key, given when the write
    commits."""
    return Event(
        id=0,
        kind=kind,
        process_id=pid,
        workflow=workflow,
        parent_id=parent_id,
        status=status,
        step=step,
        step_status=step_status,
        at=at or datetime.now(UTC),
    )


def events_of(process: Identity, previous: ProcessStatus, checkpoint: Checkpoint) -> list[Event]:
    """What a checkpoint of ``process`` announces: each step record, then the status when it
    changes from ``previous`` (or when no step was recorded)."""
    # Every step of every process announces itself: this runs once per checkpoint, so the
    # statuses (already members) are not converted again and the clock is read once.
    status: Any = checkpoint.process.status
    pid, name, parent, at = process.pid, process.workflow, process.parent_id, datetime.now(UTC)
    events = [
        Event(
            id=0, kind="step", process_id=pid, workflow=name, parent_id=parent, status=status,
            step=r.name, step_status=r.status, branch=r.branch, at=at,  # type: ignore[arg-type]
        )
        for r in checkpoint.steps
    ]  # fmt: skip
    if status != previous or not checkpoint.steps:
        events.append(event("process", pid, name, status, parent_id=parent, at=at))
    return events
