"""Connection limits for the TCP listener, enforced before aiohttp sees a connection.

Anyone who can reach the TCP port can open connections before a token is checked. Each one
holds a file descriptor, and the daemon shares its descriptors with the Unix control socket,
the database and the steps' HTTP client: a few thousand idle connections would leave the
operator's socket unanswered and steps failing with "Too many open files". So every TCP
connection passes a `TcpGuard` first:

- at most ``max_connections`` open at once per listener, ``max_per_peer`` per peer address and
  ``max_per_prefix`` per network (an IPv4 /24, an IPv6 /64; over every TCP listener); a
  connection past a cap is reset as it arrives, before any request is read, and counted;
- the last ``reserved`` of a listener's ``max_connections`` are kept for requests that carry
  the token or post to a callback (issue 26 item 9: eight addresses could fill every slot and
  callbacks were refused). A connection that arrives when only those are left is admitted on
  probation: nothing of it reaches aiohttp until its first request head has come whole, and
  unless that head posts to ``/api/callbacks/`` or gives the right bearer token it is reset
  (read and compared as the API does, ``orchd.api.identity``: a wrong token counts as a
  failed login). One network may hold at
  most an eighth of the reserved slots (at least one) on probation at once;
- a connection must send its first complete request head (through the blank line) within
  ``header_timeout`` seconds, or it is reset and counted. An idle keep-alive connection after
  a response is aiohttp's to close (the runner's ``keepalive_timeout``).

`raise_open_files_limit` is the other half of that budget: the daemon calls it at start.

The Unix socket passes a `UnixGuard`: only its cap on open connections (``[unix]
max_connections``), since its clients are the socket's group; a runaway script there must not
take every descriptor either. The counters live on the guards; the daemon stores the TCP one
(which knows the Unix one) in the app under `GUARD_KEY` for the API's metrics to read
(`TcpGuard.counts`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import socket
import time
import typing
from collections.abc import Callable

import msgspec
from aiohttp import web

from orchd.api.identity import Identity, Verdict, bearer
from orchd.api.logins import FailedLogins, ip_of
from orchd.settings import TcpSettings, UnixSettings

__all__ = [
    "GUARD_KEY",
    "ConnectionCounts",
    "TcpGuard",
    "UnixGuard",
    "network_prefix",
    "raise_open_files_limit",
]

log = logging.getLogger("orchd.api.guard")

#: At most one warning about refused connections per this many seconds: an attack must not
#: flood the journal.
WARN_EVERY = 10.0
#: The highest soft limit on open files the daemon asks for (Linux's default fs.nr_open).
NOFILE_CEILING = 1 << 20
#: A network may hold this share of a listener's reserved slots on probation (at least one).
RESERVE_SHARE = 8
#: The longest first request head a connection on probation may send (aiohttp's own limits
#: on a request line and its header fields are below it).
MAX_PROBATION_HEAD = 64 * 1024
#: Requests that may take a reserved slot without the token: an external system's callback.
CALLBACK_PREFIX = b"/api/callbacks/"


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
    #: Connections reset on arrival because their network had ``max_per_prefix`` open.
    refused_prefix_total: int = 0
    #: Connections on probation for a reserved slot whose first request did not earn it.
    refused_reserve_total: int = 0
    #: Wrong tokens (``orchd.api.logins``), and token checks refused while throttled.
    failed_logins_total: int = 0
    logins_refused_total: int = 0
    #: The Unix socket's connections open now, and those reset over ``[unix] max_connections``.
    unix_open: int = 0
    unix_refused_total: int = 0


def network_prefix(address: str) -> str:
    """The network a peer address counts in for ``max_per_prefix``: its IPv4 /24 (an
    IPv4-mapped IPv6 address too), its IPv6 /64."""
    ip = ip_of(address)
    if ip is None:
        return address
    bits = 24 if isinstance(ip, ipaddress.IPv4Address) else 64
    return str(ipaddress.ip_network((ip, bits), strict=False))


class UnixGuard:
    """The control socket's cap on open connections (no timers: a client of the socket may
    hold an event stream, or take its time)."""

    def __init__(self, settings: UnixSettings) -> None:
        self.settings = settings
        self.open = 0
        self.refused_total = 0
        self._warned_at = -WARN_EVERY

    async def serve(self, runner: web.AppRunner, sock: socket.socket) -> asyncio.AbstractServer:
        """Serve ``runner``'s app on a Unix socket, every connection counted first."""
        assert runner.server is not None
        server = runner.server
        loop = asyncio.get_running_loop()
        return await loop.create_unix_server(lambda: _CappedConnection(self, server), sock=sock)

    def admit(self) -> bool:
        if self.open >= self.settings.max_connections:
            self.refused_total += 1
            now = time.monotonic()
            if now - self._warned_at >= WARN_EVERY:
                self._warned_at = now
                log.warning(
                    "refusing Unix socket connections: %d open (unix.max_connections); "
                    "refused so far: %d",
                    self.open,
                    self.refused_total,
                )
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


class _PassedThrough(asyncio.Protocol):
    """A connection handed on to aiohttp's protocol (``handler``) once it is let in: what
    happens to the connection afterwards reaches aiohttp unchanged."""

    def __init__(self, server: web.Server) -> None:
        self.server = server
        self.handler: asyncio.Protocol | None = None

    def hand_over(self, transport: asyncio.Transport, data: bytes = b"") -> None:
        """Let the connection in: aiohttp takes it, with the bytes read before, if any."""
        self.handler = self.server()
        self.handler.connection_made(transport)
        if data:
            self.handler.data_received(data)

    def hand_back(self, exc: Exception | None) -> None:
        """The connection is gone: tell aiohttp, once."""
        if self.handler is not None:
            handler, self.handler = self.handler, None
            handler.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return None if self.handler is None else self.handler.eof_received()

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()


class _CappedConnection(_PassedThrough):
    """One Unix socket connection: reset past the cap, else passed through to aiohttp."""

    def __init__(self, guard: UnixGuard, server: web.Server) -> None:
        super().__init__(server)
        self.guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = typing.cast(asyncio.Transport, transport)
        if not self.guard.admit():
            transport.abort()
            return
        self.hand_over(transport)

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handler is not None:
            self.guard.release()
        self.hand_back(exc)


class TcpGuard:
    """The limits and counters of every TCP listener of one daemon run."""

    def __init__(
        self,
        settings: TcpSettings,
        logins: FailedLogins | None = None,
        unix: UnixGuard | None = None,
    ) -> None:
        self.settings = settings
        #: Wrong tokens per address, shared with the API (a reserved slot's check is one).
        self.logins = logins or FailedLogins.of(settings)
        #: The Unix socket's guard, whose counters `counts` reports too.
        self.unix = unix
        #: The token check, shared rules with the API's (`set_token` gives it the token).
        self.identity = Identity(None, self.logins)
        self._peers: dict[str, int] = {}
        self._prefixes: dict[str, int] = {}
        self._open = 0
        self._accepted = 0
        self._refused_listener = 0
        self._refused_peer = 0
        self._refused_prefix = 0
        self._refused_reserve = 0
        self._timeouts = 0
        self._warned_at = -WARN_EVERY

    def set_token(self, token: str | None) -> None:
        """The bearer token that earns a reserved slot (None: only callbacks do)."""
        self.identity = Identity(token, self.logins)

    def counts(self) -> ConnectionCounts:
        unix = self.unix
        return ConnectionCounts(
            open=self._open,
            accepted_total=self._accepted,
            refused_listener_total=self._refused_listener,
            refused_peer_total=self._refused_peer,
            header_timeouts_total=self._timeouts,
            refused_prefix_total=self._refused_prefix,
            refused_reserve_total=self._refused_reserve,
            failed_logins_total=self.logins.failures_total,
            logins_refused_total=self.logins.refused_total,
            unix_open=0 if unix is None else unix.open,
            unix_refused_total=0 if unix is None else unix.refused_total,
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

    def admit(self, listener: _Listener, peer: str, prefix: str) -> Admission:
        """Whether a new connection is admitted: ``open``, on ``probation`` for a reserved
        slot, or None (refused, counted)."""
        settings = self.settings
        if self._peers.get(peer, 0) >= settings.max_per_peer:
            self._refused_peer += 1
            self._warn(f"{self._peers[peer]} open from peer {peer} (max_per_peer)")
            return None
        if self._prefixes.get(prefix, 0) >= settings.max_per_prefix:
            self._refused_prefix += 1
            self._warn(f"{self._prefixes[prefix]} open from network {prefix} (max_per_prefix)")
            return None
        admission: Admission = "open"
        if listener.open >= settings.max_connections - settings.reserve:
            share = max(1, settings.reserve // RESERVE_SHARE)
            if listener.open >= settings.max_connections or (
                listener.probation.get(prefix, 0) >= share
            ):
                self._refused_listener += 1
                self._warn(f"{listener.open} open on the listener (max_connections)")
                return None
            admission = "probation"
            listener.probation[prefix] = listener.probation.get(prefix, 0) + 1
        listener.open += 1
        self._peers[peer] = self._peers.get(peer, 0) + 1
        self._prefixes[prefix] = self._prefixes.get(prefix, 0) + 1
        self._open += 1
        self._accepted += 1
        return admission

    def earns_reserve(self, head: bytes, peer: str) -> bool:
        """Whether a first request head earns a reserved slot: it posts to a callback, or
        gives the right bearer token (a wrong one is a failed login of ``peer``; while
        ``peer`` is throttled its token is not compared)."""
        line, _, fields = head.partition(b"\n")
        parts = line.split()
        if len(parts) == 3 and parts[0] == b"POST" and parts[1].startswith(CALLBACK_PREFIX):
            return True
        for field in fields.split(b"\n"):
            name, colon, value = field.partition(b":")
            if not colon or name.strip().lower() != b"authorization":
                continue
            # As aiohttp decodes a header's bytes, which the identity check gives back.
            given = bearer(value.decode("utf-8", "surrogateescape"))
            verdict = self.identity.verdict(given, peer, "tcp reserved slot")
            if verdict is Verdict.THROTTLED:
                self.logins.refused_total += 1
            return verdict is Verdict.RIGHT
        return False

    def judged(self, listener: _Listener, prefix: str, earned: bool) -> None:
        """A connection on probation has sent its first head: it earned its slot or not."""
        _drop(listener.probation, prefix)
        if not earned:
            self._refused_reserve += 1

    def release(self, listener: _Listener, peer: str, prefix: str, probation: bool) -> None:
        listener.open -= 1
        self._open -= 1
        _drop(self._peers, peer)
        _drop(self._prefixes, prefix)
        if probation:
            _drop(listener.probation, prefix)

    def timed_out(self) -> None:
        self._timeouts += 1

    def _warn(self, why: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            c = self.counts()
            log.warning(
                "refusing TCP connections: %s; refused so far: %d over max_connections, "
                "%d over max_per_peer, %d over max_per_prefix",
                *(why, c.refused_listener_total, c.refused_peer_total, c.refused_prefix_total),
            )


#: How `TcpGuard.admit` admits a connection (None: not at all).
Admission = typing.Literal["open", "probation"] | None

#: Where the daemon puts its guard in the app, for the API's metrics.
GUARD_KEY = web.AppKey("orchd.tcp_guard", TcpGuard)


def _drop(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class _Listener:
    """One TCP listener's count of open connections, and of those on probation by network."""

    def __init__(self, guard: TcpGuard) -> None:
        self.guard = guard
        self.open = 0
        self.probation: dict[str, int] = {}


#: The end of a request head; bare LF line ends are accepted as aiohttp's parser accepts them.
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")


class _GuardedConnection(_PassedThrough):
    """One TCP connection: admitted or reset on arrival, then passed through to aiohttp.

    Until the first request head is complete, a timer runs; the bytes are scanned for the
    blank line that ends a head (the last three bytes are kept, as it may straddle reads). A
    connection on probation for a reserved slot keeps its bytes until its head is whole, and
    reaches aiohttp only once the head has earned the slot.
    """

    def __init__(self, listener: _Listener, server: web.Server) -> None:
        super().__init__(server)
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.prefix = ""
        self.admitted = False
        #: The bytes of a connection on probation, None once it is not (or never was).
        self.held: bytearray | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport).
        transport = typing.cast(asyncio.Transport, transport)
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else "?"
        self.prefix = network_prefix(self.peer)
        guard = self.listener.guard
        admission = guard.admit(self.listener, self.peer, self.prefix)
        if admission is None:
            # Reset, not a graceful close: the descriptor is freed now, and the peer is
            # owed nothing for a request it has not made.
            transport.abort()
            return
        self.admitted = True
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(guard.settings.header_timeout, self._header_timeout)
        if admission == "probation":
            self.held = bytearray()
            return
        self.hand_over(transport)

    def data_received(self, data: bytes) -> None:
        if self.held is not None:
            self._on_probation(data)
            return
        if self.timer is not None:
            seen = self.tail + data
            if any(end in seen for end in _HEAD_ENDS):
                self.timer.cancel()
                self.timer = None
            else:
                self.tail = seen[-3:]
        if self.handler is not None:
            self.handler.data_received(data)

    def _on_probation(self, data: bytes) -> None:
        assert self.held is not None and self.transport is not None
        self.held += data
        ends = [i for i in (self.held.find(end) for end in _HEAD_ENDS) if i >= 0]
        if not ends:
            if len(self.held) > MAX_PROBATION_HEAD:
                self._judge(b"")
            return
        self._judge(bytes(self.held[: min(ends)]).replace(b"\r\n", b"\n"))

    def _judge(self, head: bytes) -> None:
        assert self.held is not None and self.transport is not None
        guard = self.listener.guard
        earned = bool(head) and guard.earns_reserve(head, self.peer)
        guard.judged(self.listener, self.prefix, earned)
        held, self.held = bytes(self.held), None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not earned:
            self.transport.abort()
            return
        self.hand_over(self.transport, held)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.admitted:
            self.admitted = False
            probation = self.held is not None
            self.held = None
            self.listener.guard.release(self.listener, self.peer, self.prefix, probation)
        self.hand_back(exc)

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
