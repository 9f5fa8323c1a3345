"""``GET /api/events``: server-sent events, with limits on what the streams may hold.

Every stream buffers the events its client has not read yet. Unbounded, a few thousand clients
that connect and never read held most of a gigabyte; so the number of streams is capped (in all
and per client), each stream's buffer is small, and a client that stops reading for
``write_timeout`` is disconnected (it reconnects with ``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from aiohttp import web

from orchd.errors import TooManyRequests
from orchd.model import Event, Reset
from orchd.settings import EventSettings

log = logging.getLogger("orchd.api.sse")

#: Seconds between heartbeat comments on a quiet stream.
HEARTBEAT = 15.0
#: Seconds between checks that a client is still connected.
POLL = 1.0
#: Events a stream holds for its client beyond what the engine's hub holds for it.
BUFFER = 64
#: Events the hub holds for a stream's client before it closes the stream.
HUB_BUFFER = 1000

_encode = msgspec.json.Encoder().encode
_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

Listen = Callable[[int | None, int], AsyncIterator[Event | Reset]]


class StreamCounts(msgspec.Struct, frozen=True, kw_only=True):
    """The event streams, for metrics."""

    open: int
    refused_total: int
    dropped_total: int


class EventStreams:
    """Serves event streams within the limits of ``settings``."""

    def __init__(self, settings: EventSettings, heartbeat: float = HEARTBEAT) -> None:
        self.settings = settings
        self.heartbeat = heartbeat
        self._open: Counter[str] = Counter()
        self.refused_total = 0
        self.dropped_total = 0

    def counts(self) -> StreamCounts:
        return StreamCounts(
            open=sum(self._open.values()),
            refused_total=self.refused_total,
            dropped_total=self.dropped_total,
        )

    def _admit(self, client: str) -> None:
        settings = self.settings
        if sum(self._open.values()) >= settings.max_streams:
            self.refused_total += 1
            raise TooManyRequests(
                f"{settings.max_streams} event streams are open, the most the daemon serves"
            )
        if self._open[client] >= settings.max_per_peer:
            self.refused_total += 1
            raise TooManyRequests(
                f"{client} has {settings.max_per_peer} event streams open, the most per client"
            )
        self._open[client] += 1

    def _leave(self, client: str) -> None:
        self._open[client] -= 1
        if self._open[client] <= 0:
            del self._open[client]

    async def serve(
        self,
        request: web.Request,
        client: str,
        listen: Listen,
        after: int | None,
        only: str | None,
    ) -> web.StreamResponse:
        """Stream events after the id ``after`` (of process ``only``, if given). A HEAD
        request gets the stream's headers and nothing else: no body, no stream held open."""
        if request.method == "HEAD":
            response = web.StreamResponse(headers=_HEADERS)
            await response.prepare(request)
            return response
        self._admit(client)
        try:
            return await self._stream(request, client, listen, after, only)
        finally:
            self._leave(client)

    async def _stream(
        self,
        request: web.Request,
        client: str,
        listen: Listen,
        after: int | None,
        only: str | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=_HEADERS)
        await response.prepare(request)
        queue: asyncio.Queue[Event | Reset | None] = asyncio.Queue(maxsize=BUFFER)
        pump = asyncio.create_task(_pump(listen, queue, after), name="sse pump")
        try:
            await self._write(request, response, b": connected\n\n")
            last_write = time.monotonic()
            # aiohttp does not cancel a handler whose client left: look at the transport
            # every POLL seconds, so a quiet stream is not kept for a whole heartbeat.
            while request.transport is not None:
                try:
                    event = await asyncio.wait_for(queue.get(), min(POLL, self.heartbeat))
                except TimeoutError:
                    if time.monotonic() - last_write >= self.heartbeat:
                        await self._write(request, response, b": heartbeat\n\n")
                        last_write = time.monotonic()
                    continue
                if event is None:
                    break
                if only is not None and isinstance(event, Event) and event.process_id != only:
                    continue
                frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (
                    event.id,
                    event.kind.encode(),
                    _encode(event),
                )
                await self._write(request, response, frame)
                last_write = time.monotonic()
        except ConnectionError:
            pass  # the client went away
        except _SlowClient:
            self.dropped_total += 1
            log.info("dropped an event stream client=%s: it stopped reading", client)
            if request.transport is not None:
                request.transport.close()
        finally:
            pump.cancel()
            await asyncio.wait([pump])
        return response

    async def _write(self, request: web.Request, response: web.StreamResponse, data: Any) -> None:
        try:
            await asyncio.wait_for(response.write(data), self.settings.write_timeout)
        except TimeoutError:
            raise _SlowClient() from None


class _SlowClient(Exception):
    """Raised when a client has not taken a write within the write timeout."""


async def _pump(
    listen: Listen, queue: asyncio.Queue[Event | Reset | None], after: int | None
) -> None:
    try:
        async for event in listen(after, HUB_BUFFER):
            await queue.put(event)
    finally:
        # The engine closed the stream (shutdown, or this listener fell behind).
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(None)
