"""The daemon's TOML configuration.

A config error must stop start-up with one line a person can act on, so every check here
reports ``<file>: <key>: <problem>`` through `ConfigError`. The settings themselves (key,
type, default, whether a reload applies them) are declared once, in ``orchd.settings``; this
module reads the file into them. Decoding is done by msgspec (types, unknown keys, durations and
limits through `orchd.settings.decode_setting`); the checks msgspec cannot express (cron,
listen address, cross-field rules) run afterwards on the decoded structs.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from cronsim import CronSim, CronSimError

from orchd.configfile import find_config
from orchd.dburl import anchored, database_file, driver_missing, is_postgres
from orchd.errors import ConfigError
from orchd.settings import (
    RELOADS,
    ConsoleSettings,
    EngineSettings,
    EventSettings,
    HttpSettings,
    LimitSpec,
    ScheduleSpec,
    TcpSettings,
    TracingSettings,
    UnixSettings,
    decode_setting,
    parse_duration,
    reloadable,
)
from orchd.systemd import under_systemd

__all__ = [
    "EXAMPLE_WORKFLOWS",
    "RELOADABLE",
    "Config",
    "LoadedConfig",
    "ScheduleConfig",
    "check_database_path",
    "load_config",
    "parse_duration",
    "parse_host",
    "parse_listen",
    "schedule_specs",
    "validate_config",
]

#: How errors name the config when no file was read.
DEFAULT_SOURCE = "<default config>"

#: What the embedded default (no config file at all) imports, so ``make run`` has a demo;
#: a config file loads only the workflows it names.
EXAMPLE_WORKFLOWS = ("orchd.examples",)
#: And the one schedule it runs, so that ``make run`` shows the scheduler at work: the built-in
#: task validating the example network's nodes (README, Products: Validation).
EXAMPLE_SCHEDULE: Mapping[str, Any] = {
    "workflow": "validate_subscriptions",
    "name": "validate_nodes",
    "every": "10m",
    "input": {"product": "node"},
}


#: A ``[[schedules]]`` entry as the file's tables name it (one declaration: `ScheduleSpec`).
ScheduleConfig = ScheduleSpec


class Config(EngineSettings, frozen=True, kw_only=True):
    """The whole config file; every key is optional (see config/orchd.toml). The engine's
    keys (``grace_period``, ``[retention]``, ``[limits]``, ...) are `EngineSettings`'s, and
    the config itself is what the engine is given."""

    database: str = "./orchd.db"
    socket: str = "./orchd.sock"
    #: A file that does not set it loads none (README "Operations"); see `EXAMPLE_WORKFLOWS`.
    workflows: list[str] = []
    #: ``"module:callable"`` entries, each returning an async context manager that yields
    #: ``{Type: instance}`` for steps to receive by annotation (see the README).
    resources: list[str] = []
    listen: str | None = None
    token_file: str | None = None
    #: Names besides the listener's own address and localhost that a request's ``Host`` may
    #: give (``name`` for any port, ``name:port``): a reverse proxy's or a tunnel's name.
    allowed_hosts: list[str] = []
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    #: Requests per second one client (socket uid, TCP address) may send; 0: no limit.
    rate_limit: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    max_body: Annotated[int, msgspec.Meta(ge=1)] = 1048576
    log_level: Annotated[Literal["debug", "info", "warning", "error"], RELOADS] = "info"
    #: Every log line valid logfmt (default) or one JSON object; "text" for people.
    log_format: Literal["logfmt", "json", "text"] = "logfmt"
    socket_mode: str = "0660"
    socket_group: str | None = None
    watchdog: bool = True
    schedules: Annotated[list[ScheduleConfig], RELOADS] = []
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    tcp: TcpSettings = msgspec.field(default_factory=TcpSettings)
    unix: UnixSettings = msgspec.field(default_factory=UnixSettings)
    events: EventSettings = msgspec.field(default_factory=EventSettings)
    console: ConsoleSettings = msgspec.field(default_factory=ConsoleSettings)
    tracing: TracingSettings = msgspec.field(default_factory=TracingSettings)

    @property
    def socket_mode_bits(self) -> int:
        return _parse_mode(self.socket_mode)

    @property
    def listen_address(self) -> tuple[str, int] | None:
        """``(host, port)`` with IPv6 brackets removed, ready for ``loop.create_server``."""
        return None if self.listen is None else parse_listen(self.listen)


#: Config keys applied by SIGHUP (marked `RELOADS` where they are declared); a change to any
#: other key needs a restart.
RELOADABLE = reloadable(Config)


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and where it came from.

    ``path`` is None for the embedded default. ``token_path`` is the bearer-token file the TCP
    listener must use: ``token_file`` or the systemd credential ``$CREDENTIALS_DIRECTORY/token``.
    """

    config: Config
    path: Path | None
    token_path: Path | None = None
    systemd: bool = False

    @property
    def source(self) -> str:
        return DEFAULT_SOURCE if self.path is None else str(self.path)

    def read_token(self) -> str | None:
        """The token (surrounding whitespace stripped); None when no file is configured.

        The file must not be readable by group or others (a config error): whoever reads it can
        drive the TCP API. A token of fewer than 128 bits gets a warning; the rule counts 4 bits
        per character for a token of hex digits only (so 32 characters) and 6 for any other,
        as base64 (so 22 characters).
        """
        import logging
        import stat

        min_hex, min_other = 32, 22
        if self.token_path is None:
            return None
        try:
            # One open: the mode checked is that of the file read, not of a name swapped later.
            with open(self.token_path, encoding="utf-8") as f:
                mode = os.fstat(f.fileno()).st_mode
                if mode & (stat.S_IRGRP | stat.S_IROTH):
                    detail = (
                        f"{self.token_path} is readable by its group or others (mode "
                        f"{stat.S_IMODE(mode):04o}); make it 0600, owned by the daemon's user"
                    )
                    raise ConfigError(f"{self.source}: token_file: {detail}")
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            detail = f"cannot read {self.token_path}: {exc}"
            raise ConfigError(f"{self.source}: token_file: {detail}") from None
        if not token:
            raise ConfigError(f"{self.source}: token_file: {self.token_path} is empty")
        hex_only = all(c in "0123456789abcdefABCDEF" for c in token)
        if len(token) < (min_hex if hex_only else min_other):
            logging.getLogger("orchd.config").warning(
                "token_file %s holds a token of fewer than 128 bits (%d characters); "
                "use at least %d hex or %d base64 characters, e.g. `openssl rand -base64 32`",
                self.token_path, len(token), min_hex, min_other,
            )  # fmt: skip
        return token

    def check_database(self) -> None:
        check_database_path(self.config.database, source=self.source)


def _check_postgres_url(text: str) -> None:
    """A ``postgresql://user@host:port/dbname`` URL names its host and database."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"invalid PostgreSQL URL: {exc}") from None
    if not parts.path.strip("/"):
        raise ValueError("a PostgreSQL URL names its database: postgresql://user@host:5432/dbname")


def parse_listen(text: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6addr]:port"`` as ``(host, port)``; ValueError when malformed."""
    expected = "expected host:port, e.g. 127.0.0.1:8470 or [::1]:8470"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address in {text!r} ({expected})") from None
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            raise ValueError(f"IPv6 address needs brackets in {text!r} ({expected})")
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?", host):
            raise ValueError(f"invalid host in {text!r} ({expected})")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid port in {text!r} ({expected})")
    return host, int(port)


_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?")
_HOST_PORT = re.compile(r"[0-9]{1,5}")


# Cached: every TCP request's Host (a handful of distinct values) goes through these.
@functools.lru_cache(maxsize=1024)
def canonical_name(name: str) -> str | None:
    """A host name or address as compared: lower case without a trailing dot, an address in
    its one written form (an IPv4-mapped IPv6 address as IPv4); None when it is neither."""
    name = name.lower().removesuffix(".")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name if _HOST_NAME.fullmatch(name) else None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


@functools.lru_cache(maxsize=1024)
def parse_host(text: str) -> tuple[str, int | None] | None:
    """``name``, ``name:port``, ``[v6]`` or ``[v6]:port`` as ``(canonical name, port or
    None)``; None when it is none of these (a ``Host`` header or an ``allowed_hosts`` entry)."""
    text = text.strip()
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        if not bracket or ":" not in inner:
            return None
        port_text = rest.removeprefix(":") if rest.startswith(":") else None
        if rest and port_text is None:
            return None
        name = inner
    else:
        name, colon, port_text_or_empty = text.partition(":")
        port_text = port_text_or_empty if colon else None
    if port_text is not None and not _HOST_PORT.fullmatch(port_text):
        return None
    port = None if port_text is None else int(port_text)
    if port is not None and port > 65535:
        return None
    canonical = canonical_name(name) if name else None
    if canonical is None or (":" in canonical and not text.startswith("[")):
        return None
    return canonical, port


def _parse_mode(text: str) -> int:
    if not re.fullmatch(r"(0o|0)?[0-7]{3}", text):
        raise ValueError(f"invalid file mode {text!r} (expected octal, e.g. 0660)")
    return int(text.removeprefix("0o"), 8)


def check_database_path(path: str | os.PathLike[str], *, source: str = DEFAULT_SOURCE) -> None:
    """Raise ConfigError unless SQLite can create and write ``path`` and its journal files."""
    file = database_file(os.fspath(path))
    if file is None:
        return
    target = Path(file)
    parent = target.parent
    problem = None
    if not parent.is_dir():
        problem = f"directory {str(parent)!r} does not exist"
    elif not os.access(parent, os.W_OK | os.X_OK):
        # SQLite creates -wal/-journal files next to the database, so the directory
        # must be writable even when the database file already exists.
        problem = f"directory {str(parent)!r} is not writable"
    elif target.exists() and not target.is_file():
        problem = f"{str(target)!r} is not a regular file"
    elif target.exists() and not os.access(target, os.R_OK | os.W_OK):
        problem = f"{str(target)!r} is not writable"
    if problem is not None:
        raise ConfigError(f"{source}: database: {problem}")


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    check_token: bool = True,
) -> LoadedConfig:
    """Find, read, validate and resolve the config.

    The file is found by `orchd.configfile.find_config`: ``path``, else ``$ORCHD_CONFIG``, else
    ``/etc/orchd/orchd.toml`` only when systemd started us, else none (the embedded defaults).
    ``check_token=False`` skips the token-file checks.
    """
    systemd = under_systemd(env)
    found = find_config(path, env, system_default=systemd)
    file = None if found is None else Path(found)
    source = DEFAULT_SOURCE if file is None else str(file)
    raw: dict[str, Any]
    if file is None:
        raw = {"workflows": list(EXAMPLE_WORKFLOWS), "schedules": [dict(EXAMPLE_SCHEDULE)]}
    else:
        raw = _read_toml(file)
    unknown = _unknown_keys(raw, Config)
    if unknown:  # every one at once, not the first of them
        raise ConfigError(f"{source}: {'; '.join(unknown)}")
    try:
        config = msgspec.convert(raw, Config, dec_hook=decode_setting)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_describe_validation_error(str(exc))}") from None
    except ConfigError as exc:  # a [limits] entry, which names its own key
        raise ConfigError(f"{source}: {exc.detail}") from None
    validate_config(config, source=source)
    token_path = _token_path(config, env, source) if check_token else None
    if systemd:
        config = _resolve_systemd_dirs(config, env)
    return LoadedConfig(config=config, path=file, token_path=token_path, systemd=systemd)


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        what, _, where = str(exc).rpartition(" (at ")
        what = what or str(exc)
        found = re.fullmatch(r"line (\d+), column (\d+)\)", where)
        if found is not None:
            line, detail = found.group(1), f"{what} (column {found.group(2)})"
        else:
            # "(at end of document)": an unterminated value; the last line is where it is.
            line, detail = str(text.count("\n") + 1), f"{what} (at end of file)"
        raise ConfigError(f"{file}: line {line}: TOML syntax error: {detail}") from None


def _unknown_keys(raw: Any, struct: type[msgspec.Struct], where: str = "") -> list[str]:
    """``KEY: unknown key`` for every key of the table ``raw`` (and of the tables in it) that
    ``struct`` does not have, in file order, each with the key it is closest to when one is
    close: ``workflow: unknown key (did you mean 'workflows'?)``."""
    if not isinstance(raw, dict):
        return []  # not a table: msgspec names the wrong type
    fields = {f.encode_name: _bare(f.type) for f in msgspec.structs.fields(struct)}
    found = []
    for key, value in raw.items():
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            found.append(f"{where}{key}: unknown key{hint}")
        elif struct is Config and key == "limits" and isinstance(value, dict):
            for name, entry in value.items():
                found += _unknown_keys(entry, LimitSpec, f"limits.{name}.")
        elif isinstance(fields[key], type) and issubclass(fields[key], msgspec.Struct):
            found += _unknown_keys(value, fields[key], f"{where}{key}.")
        elif typing.get_origin(fields[key]) is list and isinstance(value, list):
            [item] = typing.get_args(fields[key])
            if isinstance(item, type) and issubclass(item, msgspec.Struct):
                for i, entry in enumerate(value):
                    found += _unknown_keys(entry, item, f"{where}{key}[{i}].")
    return found


def _bare(annotation: Any) -> Any:
    """A field's type without its ``Annotated`` marks (``RELOADS``): what its table holds."""
    if typing.get_origin(annotation) is typing.Annotated:
        return typing.get_args(annotation)[0]
    return annotation


def _describe_validation_error(message: str) -> str:
    """Turn msgspec's ``Expected `int`, got `str` - at `$.http.limit``` into ``key: problem``."""
    what, _, where = message.partition(" - at `$")
    key = where.rstrip("`").lstrip(".")
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", what)
    missing = re.fullmatch(r"Object missing required field `(.+)`", what)
    if unknown or missing:
        field = (unknown or missing).group(1)  # type: ignore[union-attr]
        key = f"{key}.{field}" if key else field
        return f"{key}: {'unknown key' if unknown else 'missing required key'}"
    got = re.fullmatch(r"Expected `(.+)`, got `(.+)`", what)
    last = re.sub(r"\[\d+\]$", "", key.rpartition(".")[2])
    if got and last == "socket_mode":
        problem = f'expected an octal string such as "0660", got {got.group(2)}'
    elif what.startswith("Invalid enum value") and last in typing.get_type_hints(Config):
        allowed = ", ".join(typing.get_args(typing.get_type_hints(Config)[last]))
        problem = f"{what[0].lower()}{what[1:]} (one of: {allowed})"
    else:
        problem = what.replace("`", "")
        problem = problem[0].lower() + problem[1:]
    return f"{key or 'top level'}: {problem}"


def validate_config(config: Config, *, source: str = DEFAULT_SOURCE) -> None:
    """Run the checks msgspec's types cannot express; raise ConfigError on the first failure."""
    check = _Checker(source)
    for key in ("database", "socket"):
        if not getattr(config, key):
            check.fail(key, "must not be empty")
    for i, module in enumerate(config.workflows):
        if not all(part.isidentifier() for part in module.split(".")):
            check.fail(f"workflows[{i}]", f"invalid module name {module!r}")
    for i, spec in enumerate(config.resources):
        module, sep, name = spec.partition(":")
        dotted = [*module.split("."), *name.split(".")]
        if not sep or not all(part.isidentifier() for part in dotted):
            check.fail(f"resources[{i}]", f"expected 'module:callable', got {spec!r}")
    if config.listen is not None:
        check.parsed("listen", parse_listen, config.listen)
    check.hosts("allowed_hosts", config.allowed_hosts)
    check.parsed("socket_mode", _parse_mode, config.socket_mode)
    if config.node_id is not None and not config.node_id.strip():
        check.fail("node_id", "must not be empty")
    if is_postgres(config.database):
        check.parsed("database", _check_postgres_url, config.database)
        if (missing := driver_missing()) is not None:
            check.fail("database", missing)
    if config.retry_max_delay < config.retry_delay:
        check.fail(
            "retry_max_delay",
            f"{str(config.retry_max_delay)!r} is shorter than retry_delay",
        )
    _check_tcp(check, config.tcp)
    if config.events.max_per_peer > config.events.max_streams:
        check.fail(
            "events.max_per_peer",
            f"{config.events.max_per_peer} is more than events.max_streams"
            f" ({config.events.max_streams})",
        )
    schedule_specs(config, source=source)


def _check_tcp(check: _Checker, tcp: TcpSettings) -> None:
    if tcp.max_per_peer > tcp.max_connections:
        check.fail(
            "tcp.max_per_peer",
            f"{tcp.max_per_peer} is more than tcp.max_connections ({tcp.max_connections})",
        )
    if tcp.reserved is not None and tcp.reserved >= tcp.max_connections:
        check.fail(
            "tcp.reserved",
            f"{tcp.reserved} leaves none of tcp.max_connections ({tcp.max_connections})"
            " for other requests",
        )


def schedule_specs(config: Config, *, source: str = DEFAULT_SOURCE) -> tuple[ScheduleSpec, ...]:
    """The ``[[schedules]]`` entries, checked for the scheduler, in file order.

    Raises ConfigError (``<file>: schedules[N].key: problem``) on the first bad entry.
    """
    check = _Checker(source)
    seen: dict[str, int] = {}
    for i, entry in enumerate(config.schedules):
        check.schedule(entry, f"schedules[{i}]")
        if entry.name in seen:
            check.fail(
                f"schedules[{i}].name",
                f"duplicate schedule name {entry.name!r} (also schedules[{seen[entry.name]}];"
                " set a distinct name)",
            )
        seen[entry.name] = i
    return tuple(config.schedules)


class _Checker:
    """Formats every failure the same way: ``<file>: <key>: <problem>``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> typing.NoReturn:
        raise ConfigError(f"{self.source}: {key}: {problem}")

    def parsed(self, key: str, parse: typing.Callable[[str], object], text: str) -> None:
        try:
            parse(text)
        except ValueError as exc:
            self.fail(key, str(exc))

    def hosts(self, key: str, hosts: list[str]) -> None:
        for i, host in enumerate(hosts):
            if parse_host(host) is None:
                self.fail(
                    f"{key}[{i}]",
                    f"{host!r} is not a host name or address with an optional port "
                    '(e.g. "orchd.example.net", "orchd.example.net:8443", "[::1]:8470")',
                )

    def schedule(self, entry: ScheduleSpec, at: str) -> None:
        if not entry.workflow:
            self.fail(f"{at}.workflow", "must not be empty")
        if (entry.every is None) == (entry.cron is None):
            which = "both" if entry.every is not None else "neither"
            self.fail(at, f"set exactly one of 'every' or 'cron' ({which} given)")
        if entry.cron is not None:
            try:
                CronSim(entry.cron, datetime.now(UTC).astimezone(entry.timezone))
            except CronSimError as exc:
                self.fail(f"{at}.cron", f"invalid cron expression {entry.cron!r}: {exc}")


def _token_path(config: Config, env: Mapping[str, str], source: str) -> Path | None:
    if config.token_file is not None:
        token = Path(config.token_file)
        if not token.is_file():
            raise ConfigError(f"{source}: token_file: file not found: {token}")
        return token
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / "token").is_file():
        return Path(credentials) / "token"
    if config.listen is not None:
        raise ConfigError(
            f"{source}: token_file: required when listen is set"
            " (or pass a 'token' credential with LoadCredential=)"
        )
    return None


def _resolve_systemd_dirs(config: Config, env: Mapping[str, str]) -> Config:
    """Anchor relative paths in the directories systemd made for us.

    The unit's cwd is /, which is read-only under ProtectSystem=strict; the state and
    runtime directories are the only places this service can write.
    """

    def first(variable: str) -> str:
        return env.get(variable, "").split(":")[0]

    socket = config.socket
    if first("RUNTIME_DIRECTORY") and not os.path.isabs(socket):
        socket = os.path.normpath(os.path.join(first("RUNTIME_DIRECTORY"), socket))
    return msgspec.structs.replace(
        config, database=anchored(config.database, first("STATE_DIRECTORY")), socket=socket
    )
