"""Announcing what the engine commits: to SSE clients, waiters and anyone listening."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any

from orchd.model import Event

#: Events a listener may leave unread before the hub closes it (unless it asks for another
#: bound): enough for an in-process consumer to keep up with thousands of processes.
LISTENER_BUFFER = 10_000


class EventHub:
    """Fans engine events out to listeners, keeping recent ones so a client can catch up."""

    def __init__(self, keep: int = 10_000) -> None:
        # Ids keep growing across restarts, so a reconnecting client never sees one reused.
        self.last_id = int(time.time() * 1000) * 1000
        self.recent: deque[Event] = deque(maxlen=keep)
        self.listeners: set[asyncio.Queue[Event | None]] = set()

    def publish(self, **fields: Any) -> None:
        self.last_id += 1
        event = Event(id=self.last_id, at=datetime.now(UTC), **fields)
        self.recent.append(event)
        for listener in list(self.listeners):
            try:
                listener.put_nowait(event)
            except asyncio.QueueFull:
                # A listener that cannot keep up is closed rather than allowed to grow.
                self.listeners.discard(listener)
                listener.get_nowait()
                listener.put_nowait(None)

    async def listen(
        self, after: int | None = None, buffer: int = LISTENER_BUFFER
    ) -> AsyncGenerator[Event, None]:
        # A listener that falls this far behind is closed (it may reconnect and resume).
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=buffer)
        backlog = [e for e in self.recent if after is not None and e.id > after]
        self.listeners.add(queue)
        try:
            for event in backlog:
                yield event
            seen = backlog[-1].id if backlog else (after or 0)
            while True:
                item = await queue.get()
                if item is None:
                    return
                if item.id > seen:
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
