"""Connection limits for the TCP listener, enforced before aiohttp sees a connection.

Anyone who can reach the TCP port can open connections before a token is checked. Each one
holds a file descriptor, and the daemon shares its descriptors with the Unix control socket,
the database and the steps' HTTP client: a few thousand idle connections would leave the
operator's socket unanswered and steps failing with "Too many open files". So every TCP
connection passes a `TcpGuard` first:

- at most ``max_connections`` open at once per listener and ``max_per_peer`` per peer address
  (over every TCP listener); a connection past either cap is reset as it arrives, before any
  request is read, and counted;
- a connection must send its first complete request head (through the blank line) within
  ``header_timeout`` seconds, or it is reset and counted. An idle keep-alive connection after
  a response is aiohttp's to close (the runner's ``keepalive_timeout``).

`raise_open_files_limit` is the other half of that budget: the daemon calls it at start.

The Unix socket does not pass the guard: it is reachable only by the socket's group. The
counters live on the guard, which the daemon stores in the app under `GUARD_KEY` for the API's
metrics to read (`TcpGuard.counts`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
import typing
from collections.abc import Callable

import msgspec
from aiohttp import web

from orchd.settings import TcpSettings

__all__ = ["GUARD_KEY", "ConnectionCounts", "TcpGuard", "raise_open_files_limit"]

log = logging.getLogger("orchd.api.guard")

#: At most one warning about refused connections per this many seconds: an attack must not
#: flood the journal.
WARN_EVERY = 10.0
#: The highest soft limit on open files the daemon asks for (Linux's default fs.nr_open).
NOFILE_CEILING = 1 << 20


class ConnectionCounts(msgspec.Struct, frozen=True, kw_only=True):
    """The TCP listeners' connection counters since start (a snapshot, for metrics)."""

    #: Connections open now.
    open: int = 0
    #: Connections admitted.
    accepted_total: int = 0
    #: Connections reset on arrival because their listener had ``max_connections`` open.
    refused_listener_total: int = 0
    #: Connections reset on arrival because their peer had ``max_per_peer`` open.
    refused_peer_total: int = 0
    #: Connections reset for not sending a request head within ``header_timeout``.
    header_timeouts_total: int = 0


class TcpGuard:
    """The limits and counters of every TCP listener of one daemon run."""

    def __init__(self, settings: TcpSettings) -> None:
        self.settings = settings
        self._peers: dict[str, int] = {}
        self._open = 0
        self._accepted = 0
        self._refused_listener = 0
        self._refused_peer = 0
        self._timeouts = 0
        self._warned_at = -WARN_EVERY

    def counts(self) -> ConnectionCounts:
        return ConnectionCounts(
            open=self._open,
            accepted_total=self._accepted,
            refused_listener_total=self._refused_listener,
            refused_peer_total=self._refused_peer,
            header_timeouts_total=self._timeouts,
        )

    async def serve(self, runner: web.AppRunner, sock: socket.socket) -> asyncio.AbstractServer:
        """Serve ``runner``'s app on a TCP socket, every connection through this guard first.

        Not an aiohttp site, whose protocol factory cannot be wrapped: the runner's server
        handles the admitted connections, so its cleanup closes them as it closes a site's.
        """
        assert runner.server is not None
        factory = self.protocol_factory(runner.server)
        return await asyncio.get_running_loop().create_server(factory, sock=sock)

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` on one TCP listener.

        Admitted connections are handed to ``server`` (the AppRunner's), so they are served,
        counted and closed at shutdown like those of any aiohttp site.
        """
        listener = _Listener(self)
        return lambda: _GuardedConnection(listener, server)

    # -- bookkeeping, called by the connections on the event loop ------------------------

    def admit(self, listener: _Listener, peer: str) -> bool:
        if listener.open >= self.settings.max_connections:
            self._refused_listener += 1
            self._warn(f"{listener.open} open on the listener (max_connections)")
            return False
        if self._peers.get(peer, 0) >= self.settings.max_per_peer:
            self._refused_peer += 1
            self._warn(f"{self._peers[peer]} open from peer {peer} (max_per_peer)")
            return False
        listener.open += 1
        self._peers[peer] = self._peers.get(peer, 0) + 1
        self._open += 1
        self._accepted += 1
        return True

    def release(self, listener: _Listener, peer: str) -> None:
        listener.open -= 1
        self._open -= 1
        left = self._peers[peer] - 1
        if left:
            self._peers[peer] = left
        else:
            del self._peers[peer]

    def timed_out(self) -> None:
        self._timeouts += 1

    def _warn(self, why: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            c = self.counts()
            log.warning(
                "refusing TCP connections: %s; refused so far: %d over max_connections, "
                "%d over max_per_peer",
                *(why, c.refused_listener_total, c.refused_peer_total),
            )


#: Where the daemon puts its guard in the app, for the API's metrics.
GUARD_KEY = web.AppKey("orchd.tcp_guard", TcpGuard)


class _Listener:
    """One TCP listener's count of open connections."""

    def __init__(self, guard: TcpGuard) -> None:
        self.guard = guard
        self.open = 0


#: The end of a request head; bare LF line ends are accepted as aiohttp's parser accepts them.
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")


class _GuardedConnection(asyncio.Protocol):
    """One TCP connection: admitted or reset on arrival, then passed through to aiohttp.

    Until the first request head is complete, a timer runs; the bytes are scanned for the
    blank line that ends a head (the last three bytes are kept, as it may straddle reads).
    """

    def __init__(self, listener: _Listener, server: web.Server) -> None:
        self.listener = listener
        self.server = server
        self.handler: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport).
        transport = typing.cast(asyncio.Transport, transport)
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else "?"
        guard = self.listener.guard
        if not guard.admit(self.listener, self.peer):
            # Reset, not a graceful close: the descriptor is freed now, and the peer is
            # owed nothing for a request it has not made.
            transport.abort()
            return
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(guard.settings.header_timeout, self._header_timeout)
        self.handler = self.server()
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.timer is not None:
            seen = self.tail + data
            if any(end in seen for end in _HEAD_ENDS):
                self.timer.cancel()
                self.timer = None
            else:
                self.tail = seen[-3:]
        if self.handler is not None:
            self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.handler is None else self.handler.eof_received()

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.handler is not None:
            self.listener.guard.release(self.listener, self.peer)
            handler, self.handler = self.handler, None
            handler.connection_lost(exc)

    def _header_timeout(self) -> None:
        self.timer = None
        self.listener.guard.timed_out()
        # Debug only: under attack this happens for every connection.
        log.debug("closing TCP connection from %s: no request head in time", self.peer)
        if self.transport is not None:
            self.transport.abort()


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one; return the soft limit.

    The soft limit is often 1024 outside systemd, which a busy daemon reaches (step HTTP
    connections, API clients, SQLite). The unit sets both limits (``LimitNOFILE=``) and
    forbids ``setrlimit``, so nothing is called when they are already equal.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Linux refuses an unlimited soft limit on open files; its own ceiling (fs.nr_open)
    # is 2**20 by default.
    target = min(hard, NOFILE_CEILING) if hard != resource.RLIM_INFINITY else NOFILE_CEILING
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
    return soft
