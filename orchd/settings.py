"""Settings as the running code reads them: frozen values with durations already in seconds.

The config file (``orchd.config``) is what an operator writes; these are what the engine and the
daemon use. They are built from a config in one place, so a duration is parsed once, and a
reload swaps one object instead of assigning fields one by one.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import msgspec


class LimitSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One limit on a shared resource (``[limits]``, README "Limits on shared resources"), per key:
    at most
    ``concurrency`` steps at once, and at most ``rate`` starts a second, spaced evenly."""

    #: Steps holding a key at once (None: no bound, only the rate).
    concurrency: int | None = None
    #: Starts per second per key (None: no rate), one every ``1 / rate`` seconds.
    rate: float | None = None
    #: The rate as written ("10/s"), for the API and reload messages.
    rate_text: str | None = None


class EngineSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the engine runs steps; a reload (SIGHUP) may replace the whole object."""

    #: Seconds running steps get to finish when the engine stops.
    grace_period: float = 10.0
    #: Default per-step timeout in seconds (None: no limit); a step's own ``timeout`` wins.
    step_timeout: float | None = None
    #: Automatic retries of a retrystep: first delay, the cap, and attempts before ``failed``.
    retry_delay: float = 5.0
    retry_max_delay: float = 600.0
    retry_max_attempts: int = 10
    #: Warn when workflow code blocks the event loop longer than this (None: off).
    block_warning: float | None = 1.0
    #: Threads for sync steps (calls abandoned after a timeout do not count against it).
    step_threads: int = 64
    #: Seconds a completed or aborted task (SYSTEM target) and other process are kept after
    #: their last change (None: for ever); see ``Engine.gc``.
    retain_tasks: float | None = 7 * 86400.0
    retain_workflows: float | None = 365 * 86400.0
    #: Events kept in the database for clients that resume (``Last-Event-ID``).
    keep_events: int = 100_000
    #: This daemon's name in a cluster (PostgreSQL); None: ``hostname:pid``.
    node_id: str | None = None
    #: Seconds a node's lease lasts unrenewed: how long its processes wait after it dies.
    lease_timeout: float = 10.0
    #: Limits on shared resources by name (README "Limits on shared resources"); a step's ``uses=``
    #: names them.
    limits: dict[str, LimitSpec] = {}


class HttpSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The shared HTTP client's pool and patience (``[http]``); durations in seconds."""

    #: Connections open at once, in total and per host (a queued request waits, costing no socket).
    limit: int = 1000
    limit_per_host: int = 100
    #: The whole request, and connecting alone.
    timeout: float = 30.0
    connect_timeout: float = 10.0
    #: Retries of an idempotent request on a connection error, a timeout or 502/503/504.
    retries: int = 3


class ScheduleSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One ``[[schedules]]`` entry as the scheduler runs it: parsed and checked at load.

    Exactly one of ``every`` and ``cron`` is set; the cron expression is known to be valid
    in ``zone``. Only what the config cannot know (does the workflow exist, is it a SYSTEM
    task) is left for the scheduler to check.
    """

    #: The entry's unique name (the workflow's unless the entry names one).
    name: str
    workflow: str
    input: dict[str, Any] = {}
    #: Seconds between runs, or None for a cron entry.
    every: float | None = None
    #: ``every`` as written ("5m"), for the API and reload messages.
    every_text: str | None = None
    cron: str | None = None
    zone: ZoneInfo = ZoneInfo("UTC")
    #: Up to this many seconds are added at random to each fire time.
    jitter: float = 0.0
    #: A fire time missed while the daemon was down runs at start when at most this old.
    misfire_grace: float = 300.0
    enabled: bool = True


class EventSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Limits on ``GET /api/events`` streams (``[events]``): each holds the events its client
    has not read yet."""

    #: Streams open at once, in all and per client (uid on the socket, address on TCP).
    max_streams: int = 128
    max_per_peer: int = 16
    #: A client that takes no write for this long is disconnected (it reconnects and resumes).
    write_timeout: float = 10.0


class ConsoleSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The web console (``[console]``): whether ``/ui/`` is served, and how long a TCP login
    lasts before the token is asked again."""

    enabled: bool = True
    session_timeout: float = 8 * 3600.0


class TcpSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Limits on the TCP listener's connections (``[tcp]``), and on guessing its token.

    Anyone who can reach the port can open connections before any token is checked, so
    these bound what an unauthenticated peer can hold: descriptors, and the daemon's
    room to answer on the Unix socket.
    """

    #: Connections open at once on one TCP listener; more are closed as they arrive.
    max_connections: int = 512
    #: Connections open at once from one peer address, over every TCP listener.
    max_per_peer: int = 64
    #: Connections open at once from one network (an IPv4 /24, an IPv6 /64).
    max_per_prefix: int = 128
    #: Of ``max_connections``, slots kept for connections whose first request carries the
    #: token or posts to a callback (None: an eighth of ``max_connections``).
    reserved: int | None = None
    #: Seconds a new connection has to send its first complete request head.
    header_timeout: float = 5.0
    #: Wrong tokens one address (an IPv6 /64) may send in ``failed_login_window`` seconds;
    #: past them its token checks are answered 429 until the window lets one more (0: no limit).
    failed_logins: int = 10
    failed_login_window: float = 60.0

    @property
    def reserve(self) -> int:
        """The slots kept for requests with the token or a callback."""
        return self.max_connections // 8 if self.reserved is None else self.reserved


class UnixSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The Unix socket's cap (``[unix]``): its clients are the socket's group, trusted, but a
    runaway script must not take every descriptor the daemon has."""

    #: Connections open at once on the control socket; more are closed as they arrive.
    max_connections: int = 512
