"""Every setting, declared once: its key, type, default and whether SIGHUP applies it.

The structs here are both what the config file decodes into (``orchd.config`` reads the file)
and what the running code reads: there is no second copy to map onto. A duration is a
`Duration`: written ``"30s"``, ``"5m"``, ``"1h30m"`` in the file, given as a number of
seconds in code, read as a float of seconds, and printed as it was written (so a reload
names ``grace_period 10s -> 5s``). A setting that SIGHUP applies to the running daemon is
marked ``Annotated[..., RELOADS]`` beside its type; `reloadable` lists them. Checks that
span several settings (``retry_max_delay`` not below ``retry_delay``) are the config's.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from typing import Annotated, Any, ClassVar, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from orchd.errors import ConfigError

__all__ = [
    "RELOADS",
    "ConsoleSettings",
    "Duration",
    "EngineSettings",
    "EventSettings",
    "HttpSettings",
    "LimitSpec",
    "Limits",
    "PositiveDuration",
    "Rate",
    "RetentionSettings",
    "ScheduleSpec",
    "Settings",
    "TcpSettings",
    "TracingSettings",
    "UnixSettings",
    "decode_setting",
    "parse_duration",
    "parse_rate",
    "reloadable",
    "time_zone",
]

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]

# Longest units first so that "ms" is not read as "m" followed by garbage.
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_DURATION_HINT = "use e.g. 30s, 5m, 1h"


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h30m"``, ``"1d"`` or ``"30"``.

    Raises ValueError (with a message fit for a user) for anything else, negatives included.
    """
    stripped = text.strip()
    if _NUMBER.fullmatch(stripped):
        return float(stripped)
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(stripped):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(stripped):
        raise ValueError(f"invalid duration {text!r} ({_DURATION_HINT})")
    return total


class _AsWritten(float):
    """A number from the config file that prints as the file wrote it (reload messages and
    the API show ``5m``, not ``300.0``)."""

    __slots__ = ("text",)
    text: str

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.text!r})"


class Duration(_AsWritten):
    """Seconds (a float) that print as written: ``Duration("5m") == 300.0``, ``str()`` "5m".

    From a string as `parse_duration` reads it, or from a number of seconds (code's way);
    never negative. ValueError, in words fit for the config's messages, otherwise."""

    __slots__ = ()
    #: Whether zero is refused (`PositiveDuration`): a timeout of nothing means nothing.
    positive: ClassVar[bool] = False

    def __new__(cls, value: str | float) -> Self:
        if isinstance(value, str):
            seconds, text = parse_duration(value), value.strip()
        else:
            seconds = float(value)
            text = value.text if isinstance(value, Duration) else f"{seconds:g}s"
            if seconds < 0:
                raise ValueError(f"invalid duration {value!r} (a duration is not negative)")
        if cls.positive and seconds <= 0:
            raise ValueError(f"duration must be greater than zero, got {text!r}")
        made = super().__new__(cls, seconds)
        made.text = text
        return made


class PositiveDuration(Duration):
    """A `Duration` greater than zero."""

    __slots__ = ()
    positive = True


class Rate(_AsWritten):
    """Starts per second, written ``"10/s"``, ``"600/m"`` or ``"100/h"`` (in code, a number
    per second); a float that prints as written. ValueError otherwise, zero included."""

    __slots__ = ()

    def __new__(cls, value: str | float) -> Self:
        if isinstance(value, str):
            per_second, text = parse_rate(value), value.strip()
        else:
            per_second = float(value)
            text = value.text if isinstance(value, Rate) else f"{per_second:g}/s"
            if per_second <= 0:
                raise ValueError(f"rate must be greater than zero, got {value!r}")
        made = super().__new__(cls, per_second)
        made.text = text
        return made


class Reloads:
    """The mark of a setting SIGHUP applies: ``Annotated[Duration, RELOADS]``."""

    def __repr__(self) -> str:
        return "RELOADS"


RELOADS = Reloads()


def reloadable(struct: type[msgspec.Struct]) -> frozenset[str]:
    """The keys of ``struct`` (its fields, inherited ones too) marked `RELOADS`."""
    hints = typing.get_type_hints(struct, include_extras=True)
    return frozenset(
        name
        for name in struct.__struct_fields__
        if typing.get_origin(hints[name]) is Annotated and RELOADS in hints[name].__metadata__
    )


# msgspec's names for what a TOML value decoded to, as its own messages name them.
_KIND = {bool: "bool", int: "int", float: "float", str: "str", list: "array", dict: "object"}


def _kind(value: object) -> str:
    return _KIND.get(type(value), type(value).__name__)


def decode_setting(kind: type, value: Any) -> Any:
    """msgspec's ``dec_hook`` for the types declared here (a file's durations, rates, limits
    and time zones).

    A ValueError becomes msgspec's ValidationError, which names the key; `Limits` raise
    ConfigError naming their own key (``limits.NAME.rate``)."""
    if isinstance(kind, type) and issubclass(kind, Duration):
        if not isinstance(value, str):
            # A TOML number is refused, as the file always asked for a string: `tasks = 7`
            # reads as days to one operator and as seconds to the next.
            raise ValueError(f'expected a duration string such as "30s", got {_kind(value)}')
        return kind(value)
    if kind is Rate:
        if not isinstance(value, str):
            raise ValueError(f'expected a rate such as "10/s", got {_kind(value)}')
        return Rate(value)
    if kind is Limits:
        return Limits.decode(value)
    if kind is ZoneInfo:
        if not isinstance(value, str):
            raise ValueError(f'expected a time zone name such as "UTC", got {_kind(value)}')
        return time_zone(value)
    raise NotImplementedError


@functools.cache
def _written(struct: type) -> tuple[tuple[str, type[Duration | Rate]], ...]:
    """The fields of ``struct`` that hold a duration or a rate (or None), with its type."""
    found = []
    for name, hint in typing.get_type_hints(struct).items():
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        for option in options:
            if isinstance(option, type) and issubclass(option, Duration | Rate):
                found.append((name, option))
    return tuple(found)


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A table of the config file: durations and rates given in code (``HttpSettings(
    timeout=3.0)``, ``"5m"``) become `Duration` and `Rate` objects as the file's do, checked
    the same way."""

    def __post_init__(self) -> None:
        for name, kind in _written(type(self)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                msgspec.structs.force_setattr(self, name, kind(value))


# --- [limits] ----------------------------------------------------------------------------------

_RATE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*/\s*(s|m|h)\s*")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: A limit's name, as a step's ``uses=`` names it (``orchd.dsl.LIMIT_NAME``).
_LIMIT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def parse_rate(text: str) -> float:
    """Starts per second in ``"10/s"``, ``"600/m"`` or ``"100/h"``; ValueError otherwise."""
    found = _RATE.fullmatch(text)
    if found is None:
        raise ValueError(f'invalid rate {text!r} (use e.g. "10/s", "600/m" or "100/h")')
    per_second = float(found.group(1)) / _RATE_UNITS[found.group(2)]
    if per_second <= 0:
        raise ValueError(f"rate must be greater than zero, got {text!r}")
    return per_second


class LimitSpec(Settings, frozen=True, kw_only=True):
    """One limit on a shared resource (``[limits]``, README "Limits on shared resources"), per
    key: at most ``concurrency`` steps at once, and at most ``rate`` starts a second, spaced
    evenly. A ``[limits.NAME]`` table, or a bare number (``router = 1``): the concurrency."""

    #: Steps holding a key at once (None: no bound, only the rate).
    concurrency: Positive | None = None
    #: Starts per second per key (None: no rate), one every ``1 / rate`` seconds.
    rate: Rate | None = None

    @property
    def rate_text(self) -> str | None:
        """The rate as written ("10/s"), for the API and reload messages."""
        return None if self.rate is None else self.rate.text


class Limits(dict[str, LimitSpec]):
    """The ``[limits]`` table by limit name; a step's ``uses=`` names them. Whether every
    limit a step names is set is the engine's check, once the workflows are loaded."""

    @classmethod
    def decode(cls, raw: Any) -> Limits:
        """The table as the file gives it, checked; ConfigError names the entry's key."""
        if not isinstance(raw, dict):
            raise ConfigError(f"limits: expected a table, got {_kind(raw)}")
        found = cls()
        for name, entry in raw.items():
            found[name] = _limit(name, entry)
        return found


def _limit(name: str, entry: Any) -> LimitSpec:
    where = f"limits.{name}"
    if not _LIMIT_NAME.fullmatch(name):
        raise ConfigError(f"{where}: a limit's name has only letters, digits, '_', '.' and '-'")
    try:
        spec: int | LimitSpec = msgspec.convert(
            entry, Positive | LimitSpec, dec_hook=decode_setting
        )
    except msgspec.ValidationError as exc:
        what, _, at = str(exc).partition(" - at `$")
        what = what.replace("`", "")
        what = what[0].lower() + what[1:]
        at = at.rstrip("`").lstrip(".")
        if not at and "got object" not in what:
            what = f"{what} (a number: at most so many at once; or a table)"
        raise ConfigError(f"{where}{'.' + at if at else ''}: {what}") from None
    if isinstance(spec, int):
        return LimitSpec(concurrency=spec)
    if spec.concurrency is None and spec.rate is None:
        raise ConfigError(f"{where}: set concurrency, rate or both")
    return spec


# --- the tables ----------------------------------------------------------------------------------


class RetentionSettings(Settings, frozen=True, kw_only=True):
    """``[retention]``: how long completed and aborted processes are kept after their last
    change ("0": for ever), and how many events are kept for clients that resume."""

    #: Processes of SYSTEM workflows (tasks), and of every other workflow; see ``Engine.gc``.
    tasks: Duration = Duration("7d")
    workflows: Duration = Duration("365d")
    #: Events kept in the database for clients that resume (``Last-Event-ID``).
    events: Positive = 100_000


class EngineSettings(Settings, frozen=True, kw_only=True):
    """How the engine runs steps: the config file's top-level engine keys (``Config`` extends
    this, so the file keeps them at the top level); a reload may replace the whole object."""

    #: Seconds running steps get to finish when the engine stops.
    grace_period: Annotated[Duration, RELOADS] = Duration("10s")
    #: Default per-step timeout (None: no limit); a step's own ``timeout`` wins.
    step_timeout: Annotated[PositiveDuration | None, RELOADS] = None
    #: Automatic retries of a retrystep: first delay, the cap, and attempts before ``failed``.
    retry_delay: Annotated[Duration, RELOADS] = Duration("5s")
    retry_max_delay: Annotated[PositiveDuration, RELOADS] = PositiveDuration("10m")
    retry_max_attempts: Annotated[NonNegative, RELOADS] = 10
    #: Warn when workflow code blocks the event loop longer than this ("0": off).
    block_warning: Duration = Duration("1s")
    #: Threads for sync steps (calls abandoned after a timeout give their place back).
    step_threads: Positive = 64
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)
    #: Limits on shared resources by name (README "Limits on shared resources"); a step's
    #: ``uses=`` names them. A reload applies changed ones to the next acquisitions.
    limits: Annotated[Limits, RELOADS] = msgspec.field(default_factory=Limits)
    #: A cluster (``database`` on PostgreSQL): this daemon's name (None: ``hostname:pid``)
    #: and how long its lease on its processes lasts unrenewed (how long its processes wait
    #: after it dies).
    node_id: str | None = None
    lease_timeout: PositiveDuration = PositiveDuration("10s")


class HttpSettings(Settings, frozen=True, kw_only=True):
    """``[http]``: the HTTP client pool that workflow steps share to reach OSS/BSS systems."""

    #: Connections open at once, in total and per host (a queued request waits, costing no socket).
    limit: Positive = 1000
    limit_per_host: Positive = 100
    #: The whole request, and connecting alone.
    timeout: PositiveDuration = PositiveDuration("30s")
    connect_timeout: PositiveDuration = PositiveDuration("10s")
    #: Retries of an idempotent request on a connection error, a timeout or 502/503/504.
    retries: NonNegative = 3


class EventSettings(Settings, frozen=True, kw_only=True):
    """``[events]``: limits on ``GET /api/events`` streams; each holds the events its client
    has not read yet."""

    #: Streams open at once, in all and per client (uid on the socket, address on TCP).
    max_streams: Positive = 128
    max_per_peer: Positive = 16
    #: A client that takes no write for this long is disconnected (it reconnects and resumes).
    write_timeout: PositiveDuration = PositiveDuration("10s")


class ConsoleSettings(Settings, frozen=True, kw_only=True):
    """``[console]``: whether the web console is served at ``/ui/``, and how long a TCP login
    lasts before the token is asked again."""

    enabled: bool = True
    session_timeout: PositiveDuration = PositiveDuration("8h")


class TcpSettings(Settings, frozen=True, kw_only=True):
    """``[tcp]``: limits on the TCP listener's (``listen``) connections, and on guessing its
    token.

    Anyone who can reach the port can open connections before any token is checked, so
    these bound what an unauthenticated peer can hold: descriptors, and the daemon's
    room to answer on the Unix socket.
    """

    #: Connections open at once on one TCP listener; more are closed as they arrive.
    max_connections: Positive = 512
    #: Connections open at once from one peer address, over every TCP listener.
    max_per_peer: Positive = 64
    #: Connections open at once from one network (an IPv4 /24, an IPv6 /64).
    max_per_prefix: Positive = 128
    #: Of ``max_connections``, slots kept for connections whose first request carries the
    #: token or posts to a callback (None: an eighth of ``max_connections``).
    reserved: NonNegative | None = None
    #: How long a new connection has to send its first complete request head.
    header_timeout: PositiveDuration = PositiveDuration("5s")
    #: Wrong tokens one address (an IPv6 /64) may send in ``failed_login_window``; past them
    #: its token checks are answered 429 until the window lets one more (0: no limit).
    failed_logins: NonNegative = 10
    failed_login_window: PositiveDuration = PositiveDuration("1m")

    @property
    def reserve(self) -> int:
        """The slots kept for requests with the token or a callback."""
        return self.max_connections // 8 if self.reserved is None else self.reserved


class UnixSettings(Settings, frozen=True, kw_only=True):
    """``[unix]``: the control socket's cap. Its clients are the socket's group, trusted, but
    a runaway script must not take every descriptor the daemon has."""

    #: Connections open at once on the control socket; more are closed as they arrive.
    max_connections: Positive = 512


class TracingSettings(Settings, frozen=True, kw_only=True):
    """``[tracing]``: spans exported through OpenTelemetry's SDK (the ``orchd[otel]`` extra),
    configured by its standard ``OTEL_*`` environment variables; off by default. Trace ids,
    and the ``traceparent`` of steps' requests, do not depend on it."""

    enabled: bool = False


def time_zone(name: str) -> ZoneInfo:
    """The zone ``name`` names; ValueError, in the config's words, for anything else."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # a path, or "": refused as unknown too
        raise ValueError(f"unknown time zone {name!r} (e.g. UTC, Europe/Amsterdam)") from None


class ScheduleSpec(Settings, frozen=True, kw_only=True):
    """One ``[[schedules]]`` entry: a SYSTEM workflow run by the internal scheduler.

    The config checks at load that exactly one of ``every`` and ``cron`` is set and that the
    cron expression is valid in ``timezone`` (``orchd.config.schedule_specs``). Only what the
    config cannot know (does the workflow exist, is it a SYSTEM task) is left for the
    scheduler to check.
    """

    workflow: str
    #: The entry's unique name (the workflow's unless the entry names one).
    name: str = ""
    #: Time between runs, or None for a cron entry.
    every: PositiveDuration | None = None
    cron: str | None = None
    #: The initial State of each run.
    input: dict[str, Any] = {}
    #: Up to this much is added at random to each fire time.
    jitter: Duration = Duration("0s")
    #: The zone cron expressions are read in.
    timezone: ZoneInfo = ZoneInfo("UTC")
    enabled: bool = True
    #: A fire time missed while the daemon was down runs at start when at most this old.
    misfire_grace: Duration = Duration("5m")

    def __post_init__(self) -> None:
        super().__post_init__()
        # The scheduler and the API key entries by name; most configs never set one.
        if not self.name:
            msgspec.structs.force_setattr(self, "name", self.workflow)
        given: object = self.timezone
        if isinstance(given, str):  # given in code, as the file gives it
            msgspec.structs.force_setattr(self, "timezone", time_zone(given))

    @property
    def every_text(self) -> str | None:
        """``every`` as written ("5m"), for the API and reload messages."""
        return None if self.every is None else self.every.text
