"""``orchd serve``: the Engine behind the control API and the scheduler, run as a service.

Start-up checks everything it can before touching the database (config, workflow modules,
schedules, the database lock, then the socket), so a mistake exits with status 2 and one line.
Then, in order: open the engine, start the scheduler, start serving on every listener, and
only then tell systemd READY=1. A stop undoes it in reverse: stop accepting connections, stop
the scheduler, close the engine (its grace period), the API, the HTTP client, the sockets, the
socket file and last the lock. Signals go to one task of our own: SIGTERM/SIGINT stop
gracefully (a second one skips the grace period), SIGHUP reloads the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import grp
import importlib
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from orchd import gcpolicy, logs, systemd
from orchd.api.app import create_app
from orchd.api.guard import GUARD_KEY, TcpGuard, UnixGuard, raise_open_files_limit
from orchd.api.logins import FailedLogins
from orchd.api.protocol import answer_malformed_requests_with_problems
from orchd.config import RELOADABLE, Config, LoadedConfig, load_config, schedule_specs
from orchd.configfile import find_config
from orchd.dburl import database_file
from orchd.engine import Engine
from orchd.engine.limits import check_uses
from orchd.engine.loading import import_failure, module_file, search_path
from orchd.engine.scheduler import Scheduler
from orchd.errors import ConfigError
from orchd.http import HttpClient
from orchd.store.sqlite.schema import DATABASE_MODE
from orchd.tracing import otel, otel_available

__all__ = ["serve"]

log = logging.getLogger("orchd.daemon")

EXIT_OK, EXIT_CRASH, EXIT_CONFIG = 0, 1, 2
#: How often STATUS= is refreshed for ``systemctl status``.
STATUS_EVERY = 5.0
#: After the engine has stopped, how long open HTTP requests get to finish.
HTTP_SHUTDOWN_TIMEOUT = 2.0
#: Seconds an idle keep-alive connection stays open after a response (aiohttp's default is an
#: hour: on TCP, time enough for idle connections to pile up to the caps and stay there).
KEEPALIVE_TIMEOUT = 75.0


def serve(config_path: str | None) -> int:
    """Run the daemon in the foreground until SIGTERM; return the exit status."""
    try:
        loaded = load_config(config_path)
    except ConfigError as exc:
        return _config_failure(exc, _declared_log_format(config_path))
    log_format = loaded.config.log_format
    logs.setup(loaded.config.log_level, log_format=log_format)
    try:
        token = startup_checks(loaded)
        engine, scheduler, http, resources = prepare(loaded)
    except ConfigError as exc:
        return _config_failure(exc, log_format)
    try:
        daemon = Daemon(loaded, engine, scheduler, http, resources, token=token)
        code = _run(daemon.run())
    except ConfigError as exc:
        code = _config_failure(exc, log_format)
    except Exception:
        log.critical("crashed", exc_info=True)
        code = EXIT_CRASH
    _exit_despite_stuck_threads(code)
    return code


def check(config_path: str | None) -> int:
    """``orchd serve --check``: every check ``serve`` makes before it binds (`startup_checks`,
    then the workflows and resources imported), then exit 0, or 2 with the problem; nothing is
    started, bound or opened. What a running daemon holds (the database lock, the socket it
    answers on) is not a problem here: the check is made beside the daemon it will replace."""
    try:
        loaded = load_config(config_path)
        startup_checks(loaded)
        engine, _, _, factories = prepare(loaded)
    except ConfigError as exc:
        return _config_failure(exc)
    print(
        f"orchd: {loaded.source}: ok ({len(engine.workflows)} workflows, "
        f"{len(loaded.config.schedules)} schedules, {len(factories)} resources)"
    )
    for module in loaded.config.workflows:  # where each came from, and where Python looks
        print(f"  workflows {module}: {module_file(module)}")
    print(f"  {sys.executable} looks for modules in: {', '.join(search_path())}")
    return EXIT_OK


def startup_checks(loaded: LoadedConfig) -> str | None:
    """What ``serve`` checks before it opens or binds anything, and ``serve --check`` with it
    (issue 26 item 12): the database's directory and file, the token file when TCP is
    configured (its mode, its content) and the socket's group. Returns the token."""
    loaded.check_database()
    token = loaded.read_token() if loaded.config.listen is not None else None
    if loaded.config.socket_group is not None:
        group_id(loaded.config.socket_group, loaded.source)
    return token


def _exit_despite_stuck_threads(code: int) -> None:
    """Exit now if a step interrupted after the grace period still runs in a worker thread.

    A thread cannot be cancelled, and the interpreter would wait for it at exit; the state is
    committed and the database closed by now, and the step runs again at the next start.
    """
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if not any(t.is_alive() for t in stuck):
        return
    log.warning("exiting with %d step thread(s) still running", len(stuck))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _config_failure(exc: ConfigError, log_format: str = "text") -> int:
    logs.startup_error(exc.detail, log_format)
    return EXIT_CONFIG


def _declared_log_format(config_path: str | None) -> str:
    """The ``log_format`` a config that failed to load asks for, when it says so plainly: its
    start-up error is then written in that format too."""
    found = find_config(config_path, os.environ, system_default=systemd.under_systemd())
    try:
        with open(found or "", "rb") as f:
            declared = tomllib.load(f).get("log_format")
    except (OSError, ValueError):
        return "text"
    return declared if declared in logs.FORMATS else "text"


def _run(main: Coroutine[Any, Any, int]) -> int:
    # Everything imported so far lives as long as the daemon: keep it out of the cyclic
    # collector's sight, and collect less often, so a collection never stalls the API.
    gcpolicy.apply()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def prepare(
    loaded: LoadedConfig,
) -> tuple[Engine, Scheduler, HttpClient, list[ResourceFactory]]:
    """Import the workflows, make the (unopened) Engine, Scheduler and HTTP client.

    Raises ConfigError for anything the config got wrong, before anything is opened.
    """
    config, source = loaded.config, loaded.source
    try:
        http = HttpClient(config.http)
    except ValueError as exc:
        raise ConfigError(f"{source}: http: {exc}") from None
    for i, module in enumerate(config.workflows):
        try:
            importlib.import_module(module)
        except Exception as exc:
            # Workflow code can fail in any way on import; it is still the config that named it.
            near = [Path.cwd()] if loaded.path is None else [loaded.path.parent, Path.cwd()]
            detail = import_failure(module, exc, near)
            raise ConfigError(
                f"{source}: workflows[{i}]: cannot import module {module!r}: {detail}"
            ) from None
    factories = [resource_factory(source, i, entry) for i, entry in enumerate(config.resources)]
    if config.tracing.enabled and not otel_available():
        raise ConfigError(
            f"{source}: tracing.enabled: OpenTelemetry's SDK is not installed "
            "(pip install 'orchd[otel]')"
        )
    try:
        engine = Engine(
            config.database,
            config.workflows,
            synchronous=config.synchronous,
            settings=config,
            resources={HttpClient: http},
            # README "Traces": spans through OpenTelemetry's SDK and its OTEL_* variables.
            tracing=otel() if config.tracing.enabled else None,
        )
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.detail}") from None
    try:
        scheduler = Scheduler(engine, schedule_specs(config, source=source))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.detail}") from None
    return engine, scheduler, http, factories


ResourceFactory = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


def resource_factory(source: str, index: int, entry: str) -> ResourceFactory:
    """Import a ``resources`` entry (``module:callable``); ConfigError unless it is callable."""
    module_name, _, attr = entry.partition(":")
    where = f"{source}: resources[{index}]"
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except Exception as exc:
        # Like workflow modules, resource code can fail on import in any way.
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise ConfigError(f"{where}: cannot import {entry!r}: {detail}") from None
    if not callable(target):
        raise ConfigError(f"{where}: {entry!r} is not callable")
    factory: ResourceFactory = target
    return factory


async def enter_resources(
    stack: contextlib.AsyncExitStack, factories: list[ResourceFactory], source: str
) -> dict[Any, Any]:
    """Enter each factory's context manager into ``stack``; merge the mappings they yield."""
    merged: dict[Any, Any] = {}
    for i, factory in enumerate(factories):
        where = f"{source}: resources[{i}]"
        manager = factory()
        if not isinstance(manager, contextlib.AbstractAsyncContextManager):
            raise ConfigError(f"{where}: does not return an async context manager")
        provided = await stack.enter_async_context(manager)
        if not isinstance(provided, Mapping) or not all(isinstance(k, type) for k in provided):
            raise ConfigError(f"{where}: does not yield a mapping of types to instances")
        merged.update(provided)
    return merged


class Daemon:
    """One run of the service: listeners, engine, scheduler and the daemon's own tasks.

    What a run holds is entered into exit stacks as it is acquired, so a failed start undoes
    exactly what was done and a stop undoes everything in reverse. Two stacks: ``claim``
    holds what a second daemon would collide with (the database lock, the listeners, the
    socket file) and is released last; ``services`` holds the HTTP client, the API runner,
    the engine, the scheduler and the sites, and is closed while the signal task still runs,
    so a second SIGTERM can cut the engine's grace period short.
    """

    def __init__(
        self,
        loaded: LoadedConfig,
        engine: Engine,
        scheduler: Scheduler,
        http: HttpClient,
        resources: list[ResourceFactory] | None = None,
        *,
        token: str | None = None,
    ) -> None:
        self.resources = list(resources or [])
        self.loaded = loaded
        self.config = loaded.config
        self.engine = engine
        self.scheduler = scheduler
        self.http = http
        tcp = loaded.config.tcp
        self.guard = TcpGuard(tcp, FailedLogins.of(tcp), UnixGuard(loaded.config.unix))
        #: The TCP token, when `startup_checks` read it (else read when a listener needs it).
        self.token: str | None = token
        self.sockets: list[tuple[socket.socket, bool]] = []  # (socket, needs the token)
        self.signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
        self.stop_requested = asyncio.Event()
        self.stopping = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self.signals.put_nowait, signum)
        try:
            with contextlib.ExitStack() as claim:
                self.claim(claim)
                async with contextlib.AsyncExitStack() as services:
                    await self.start(services)
                    async with asyncio.TaskGroup() as tasks:
                        daemon_tasks = self.start_tasks(tasks)
                        await self.stop_requested.wait()
                        await services.aclose()
                        for task in daemon_tasks:
                            task.cancel()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        log.info("stopped")
        return EXIT_OK

    # -- start ----------------------------------------------------------------------------

    def claim(self, stack: contextlib.ExitStack) -> None:
        """Take the database lock, then the listeners, before the database is opened.

        The lock comes first: a second daemon on the same database must refuse before it
        touches the socket path, or it could unlink the first one's socket.
        """
        lock = lock_database(self.config.database, self.loaded.source)
        if lock is not None:
            stack.callback(os.close, lock)
        self.bind_listeners(stack)

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        """Open the services in order, each entered into ``stack``; READY=1 at the end."""
        await self.http.open()
        stack.push_async_callback(_quietly, "closing the HTTP client", self.http.close)
        # The runner is set up (nothing listens yet) before the engine opens so that it is
        # cleaned up after the engine closes: open requests get answers until then.
        runner = web.AppRunner(
            self.make_app(),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=HTTP_SHUTDOWN_TIMEOUT,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
        )
        await runner.setup()
        answer_malformed_requests_with_problems(runner.server)
        stack.push_async_callback(_quietly, "closing the API", runner.cleanup)
        # Entered before the engine opens and exited after it closes: steps may use them
        # until the last one has stopped.
        provided = await enter_resources(stack, self.resources, self.loaded.source)
        self.engine.resources.update(provided)
        log.info(
            "starting pid=%d config=%s database=%s workflows=%d open_files=%d",
            os.getpid(),
            self.loaded.source,
            self.engine.store.path,
            len(self.engine.workflows),
            raise_open_files_limit(),
        )
        if not self.engine.workflows:
            log.warning(
                'no workflows loaded: set workflows = ["module", ...] in %s', self.loaded.source
            )
        partial = partial_uid_map()
        if partial is not None:
            log.warning(
                "this user namespace maps only some uids (%s): the socket's other clients "
                "read as uid 65534 and are recorded as uid:65534 in the audit trail "
                "(systemd's PrivateUsers=yes does this; the shipped unit sets it to no)",
                partial,
            )
        if self.config.tracing.enabled:
            # The last spans are flushed once the engine has stopped.
            tracing = self.engine.tracing
            stack.push_async_callback(
                _quietly, "flushing spans", lambda: asyncio.to_thread(tracing.shutdown)
            )
        await self.engine.open()
        stack.push_async_callback(_quietly, "stopping the engine", self.engine.close)
        await stack.enter_async_context(self.scheduler)
        # TCP first, the Unix socket last: clients (and tests) poll the Unix socket's health.
        for sock, tcp in sorted(self.sockets, key=lambda item: not item[1]):
            if tcp:
                server = await self.guard.serve(runner, sock)
                # Like a site's stop: open connections are the runner's to close.
                stack.push_async_callback(_quietly, "closing a listener", _closer(server))
                continue
            # Through the Unix guard's cap; closing it stops accepting, as a site's stop
            # would: requests on open connections still get answers (a new process is
            # refused with 503 once the engine closes).
            assert self.guard.unix is not None
            server = await self.guard.unix.serve(runner, sock)
            stack.push_async_callback(_quietly, "closing a listener", _closer(server))
        names = ", ".join(_describe(sock) for sock, _ in self.sockets)
        log.info("ready listening=%s", names)
        systemd.notify_ready(f"ready; listening on {names}")

    def start_tasks(self, tasks: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        """The daemon's own tasks, started once everything serves."""
        started = [tasks.create_task(self.handle_signals(), name="signals")]
        interval = systemd.watchdog_interval()
        if interval is not None and self.config.watchdog:
            started.append(tasks.create_task(self.watchdog(interval), name="watchdog"))
        if os.environ.get("NOTIFY_SOCKET"):
            started.append(tasks.create_task(self.report_status(), name="status"))
        started.append(tasks.create_task(self.prune(), name="retention"))
        return started

    async def prune(self) -> None:
        """Retention (``[retention]``): delete old finished processes now, then hourly."""
        while True:
            try:
                await self.engine.gc()
            except Exception as exc:  # the database's trouble is reported elsewhere too
                log.warning("pruning failed, will try again: %s", exc)
            await asyncio.sleep(PRUNE_EVERY)

    def bind_listeners(self, stack: contextlib.ExitStack) -> None:
        source = self.loaded.source
        passed = systemd.listen_fds()
        for sock in passed:
            stack.callback(sock.close)
            tcp = sock.family != socket.AF_UNIX
            if tcp and self.read_token() is None:
                raise ConfigError(
                    f"{source}: token_file: required for the TCP socket systemd passed"
                )
            sock.setblocking(False)
            self.sockets.append((sock, tcp))
        if passed:
            log.info("socket activation sockets=%d", len(passed))
        if not any(s.family == socket.AF_UNIX for s, _ in self.sockets):
            self.sockets.append((self.bind_unix(stack), False))
        address = self.config.listen_address
        if address is not None and not any(tcp for _, tcp in self.sockets):
            self.read_token()  # load_config made sure there is a token file
            sock = self.bind_tcp(address)
            stack.callback(sock.close)
            self.sockets.append((sock, True))

    def read_token(self) -> str | None:
        if self.token is None and self.loaded.token_path is not None:
            self.token = self.loaded.read_token()
        return self.token

    def bind_unix(self, stack: contextlib.ExitStack) -> socket.socket:
        path, source = self.config.socket, self.loaded.source
        remove_stale_socket(path, source)
        mode = self.config.socket_mode_bits
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Entered before the socket file exists, so the file is removed after the socket closes.
        # bind() creates the file with 0777 & ~umask: narrow the umask so it never exists
        # with more permissions than configured, not even for a moment.
        old = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"{source}: socket: cannot bind {path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        stack.callback(remove_own_socket, path, os.stat(path).st_ino)
        stack.callback(sock.close)
        try:
            os.chmod(path, mode)
            if self.config.socket_group is not None:
                gid = group_id(self.config.socket_group, source)
                if os.stat(path).st_gid != gid:
                    os.chown(path, -1, gid)
        except OSError as exc:
            raise ConfigError(f"{source}: socket_group: {path}: {exc.strerror}") from None
        sock.setblocking(False)
        return sock

    def bind_tcp(self, address: tuple[str, int]) -> socket.socket:
        host, port = address
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(info[0], socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(info[4])
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            detail = exc.strerror or str(exc)
            where = f"{self.loaded.source}: listen"
            raise ConfigError(f"{where}: cannot bind {host}:{port}: {detail}") from None
        sock.setblocking(False)
        return sock

    def make_app(self) -> web.Application:
        # One app for every listener: it asks for the token on TCP connections only.
        address = self.config.listen_address
        self.guard.set_token(self.token)
        app = create_app(
            self.engine,
            scheduler=self.scheduler,
            max_body=self.config.max_body,
            token=self.token,
            rate_limit=self.config.rate_limit,
            events=self.config.events,
            console=self.config.console,
            allowed_hosts=self.config.allowed_hosts,
            listen_host=None if address is None else address[0],
            logins=self.guard.logins,
        )
        app[GUARD_KEY] = self.guard
        return app

    # -- signals, reload, watchdog ---------------------------------------------------------

    async def handle_signals(self) -> None:
        while True:
            signum = await self.signals.get()
            if signum is signal.SIGHUP:
                if self.stopping:
                    continue
                try:
                    await self.reload()
                except Exception:
                    # This task must outlive a failed reload: it is the one that handles SIGTERM.
                    log.exception("reload failed, keeping the running config")
                    systemd.notify_ready("reload failed; running with the previous config")
            elif not self.stopping:
                self.stopping = True
                log.info(
                    "stopping signal=%s grace=%gs", signum.name, self.engine.settings.grace_period
                )
                systemd.notify_stopping()
                self.stop_requested.set()
            else:
                log.warning("stopping now signal=%s: interrupting running steps", signum.name)
                self.hurry()

    def hurry(self) -> None:
        """Cut the grace period short: running steps are interrupted and run again next start."""
        self.engine.interrupt()

    async def reload(self) -> None:
        """Re-read the config file; apply what can change live, name what needs a restart."""
        systemd.notify_reloading()
        source, old = self.loaded.source, self.config
        try:
            new = load_config(self.loaded.path).config
            # README "Limits on shared resources": a limit a loaded step names may not go (refused
            # like an unknown
            # one at start-up); changed ones apply to the next acquisitions.
            check_uses(self.engine.workflows, new.limits)
            # First, since the scheduler may still refuse the list: then nothing has changed.
            scheduled = await self.scheduler.reload(schedule_specs(new, source=source))
        except ConfigError as exc:
            detail = exc.detail if exc.detail.startswith(source) else f"{source}: {exc.detail}"
            log.error("reload failed, keeping the running config: %s", detail)
            systemd.notify_ready("reload failed; running with the previous config")
            return
        changes = [
            f"{key} {getattr(old, key)} -> {getattr(new, key)}"
            for key in RELOADABLE
            if key != "schedules" and getattr(old, key) != getattr(new, key)
        ]
        if scheduled:
            changes.append("schedules: " + ", ".join(scheduled))
        logs.set_level(new.log_level)
        restart = restart_keys(old, new)
        # Keys that need a restart keep their running values, so the next reload names them again.
        self.config = msgspec.structs.replace(old, **{k: getattr(new, k) for k in RELOADABLE})
        self.engine.settings = self.config
        self.engine.limits.reconfigured()
        message = "; ".join(changes) or "no changes"
        if restart:
            log.warning("reload: %s; restart needed for: %s", message, ", ".join(restart))
        else:
            log.info("reload: %s", message)
        systemd.notify_ready("ready; config reloaded")

    async def watchdog(self, interval: float) -> None:
        """Ping systemd only while the engine can work (its actors run, its database answers),
        so a wedged daemon gets restarted."""
        period = interval / 2
        while True:
            try:
                await asyncio.wait_for(self.engine.ping(), timeout=period)
            except Exception as exc:
                log.warning("watchdog: not pinged: %r", exc)
            else:
                systemd.notify_watchdog()
            await asyncio.sleep(period)

    async def report_status(self) -> None:
        last_total, last_at = self.engine.stats().steps_total, time.monotonic()
        while True:
            await asyncio.sleep(STATUS_EVERY)
            try:
                counts = await asyncio.wait_for(self.engine.counts(), timeout=STATUS_EVERY)
            except Exception:
                continue
            now, total = time.monotonic(), self.engine.stats().steps_total
            rate = (total - last_total) / max(now - last_at, 1e-6)
            last_total, last_at = total, now
            systemd.notify_status(
                f"{counts.get('running', 0)} running, {counts.get('waiting', 0)} waiting, "
                f"{counts.get('failed', 0)} failed; {rate:.0f} steps/s"
            )


#: Seconds between retention runs.
PRUNE_EVERY = 3600.0


def _closer(server: asyncio.AbstractServer) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        server.close()

    return close


async def _quietly(what: str, close: Callable[[], Awaitable[Any]]) -> None:
    """Run one step of the stop, log its failure, and let the rest of the stop go on."""
    try:
        await close()
    except Exception:
        log.exception("error while %s", what)


def partial_uid_map(path: str = "/proc/self/uid_map") -> str | None:
    """This process's user namespace's uid map (``inside outside count``, ``;`` between
    ranges) when it does not map every uid to itself, else None. The kernel gives a socket
    peer's uid as this namespace sees it: an unmapped one as the overflow uid, 65534."""
    try:
        with open(path, encoding="ascii") as f:
            ranges = [line.split() for line in f.read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return None  # not Linux, or no /proc: nothing to say
    if ranges == [["0", "0", "4294967295"]]:
        return None
    return "; ".join(" ".join(r) for r in ranges)


def lock_database(database: str, source: str) -> int | None:
    """Lock the database file against a second daemon; the open descriptor holds the lock.

    The lock is ``flock`` on the database file itself, opened (created if need be) with its own
    open file description. ``open`` follows symlinks and a hard link is the same inode, so every
    name of the file meets the same lock. ``flock`` locks are separate from the POSIX record locks
    SQLite takes on the same file, and they are tied to this descriptor alone: SQLite closing
    its own descriptors never drops it, and closing it never drops SQLite's. (A ``fcntl`` lock
    would be dropped by any close of any descriptor on the file in this process.) An empty new
    file is an empty database to SQLite; it is created with ``DATABASE_MODE`` (0640, less the
    umask), never readable by others, and SQLite gives its -wal and -shm the same bits.
    """
    # Several daemons share a PostgreSQL database by design: each is a node, and leases (not a
    # file lock) keep any process from running on two of them at once. SQLite's in-memory
    # database and URIs name no file to lock.
    file = database_file(database)
    if file is None:
        return None
    database = file
    try:
        fd = os.open(database, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, DATABASE_MODE)
    except OSError as exc:
        raise ConfigError(f"{source}: database: cannot open {database}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise ConfigError(
                f"{source}: database: {database} is in use by another orchd"
            ) from None
        raise
    return fd


def restart_keys(old: Config, new: Config) -> list[str]:
    """Config keys that differ and are not applied by a reload."""
    return [
        field
        for field in old.__struct_fields__
        if field not in RELOADABLE and getattr(old, field) != getattr(new, field)
    ]


def remove_stale_socket(path: str, source: str) -> None:
    """Remove a socket file nobody listens on; refuse when another daemon answers on it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{source}: socket: cannot inspect {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{source}: socket: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: left over from a crash
    except OSError as exc:
        raise ConfigError(f"{source}: socket: cannot check {path}: {exc.strerror}") from None
    else:
        raise ConfigError(f"{source}: socket: another orchd is already listening on {path}")
    finally:
        probe.close()
    log.info("removing stale socket path=%s", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def remove_own_socket(path: str, inode: int) -> None:
    """Remove the socket file, unless it has been replaced by someone else's meanwhile."""
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove socket path=%s: %s", path, exc.strerror)


def _describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name.decode(errors='replace') if isinstance(name, bytes) else name}"
    return f"tcp:{name[0]}:{name[1]}"


def group_id(group: str, source: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"{source}: socket_group: no group named {group!r}") from None
