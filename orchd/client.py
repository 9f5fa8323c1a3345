"""A small blocking client for the control API, standard library only.

The CLI imports this module on every call, so it must stay cheap: no aiohttp, no msgspec, nothing
from the rest of orchd but its standard-library-only modules (``orchd.status``,
``orchd.configfile``). Errors::

    ClientError                  the request did not produce the answer we wanted
    ├── EndpointError            the options, environment or config name no usable address
    ├── DaemonUnreachable        no daemon answered: socket missing, refused, permission denied
    ├── DaemonRefused            the daemon answered 4xx/5xx (a problem+json, usually)
    └── BadResponse              the daemon answered something we cannot read
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.parse
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchd.configfile import find_config
from orchd.status import IN_PROGRESS as IN_PROGRESS  # the CLI waits on it too

DEFAULT_TIMEOUT = 30.0
DEFAULT_SOCKET = "orchd.sock"
#: Seconds between reads of a process ``wait`` polls (only when the daemon refuses a stream).
POLL_INTERVAL = 0.5
#: How long the event stream may stay silent before ``wait`` reconnects and re-checks: longer
#: than the daemon's heartbeat (15 s), so only a stream that died unnoticed is dropped.
STREAM_IDLE = 40.0
#: Pauses before ``wait`` opens again a stream that ended at once, growing to the last.
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0)


class ClientError(Exception):
    """Raised when a request to the daemon does not succeed."""


class EndpointError(ClientError):
    """Raised when the options, environment or config do not name a usable daemon address."""


class DaemonUnreachable(ClientError):
    """Raised when no daemon answers at the address (the message names it)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot reach the orchd daemon at {address}: {reason}")
        self.address = address
        self.reason = reason


class DaemonRefused(ClientError):
    """Raised when the daemon answers with an error status; ``problem`` is its body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
        super().__init__(str(detail))
        self.detail = str(detail)

    @property
    def errors(self) -> list[str]:
        """The problem's ``errors`` entries as ``loc: msg`` lines."""
        lines = []
        for entry in self.problem.get("errors") or []:
            if not isinstance(entry, dict):
                lines.append(str(entry))
                continue
            loc = entry.get("loc", "")
            if isinstance(loc, list):
                loc = ".".join(str(part) for part in loc)
            lines.append(f"{loc}: {entry.get('msg', '')}" if loc else str(entry.get("msg", "")))
        return lines


class BadResponse(ClientError):
    """Raised when the daemon's answer is not the JSON it should be."""


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix stream socket."""

    def __init__(self, path: str, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        # The host only fills the Host header; the daemon ignores it on the socket.
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Endpoint:
    """Where the daemon listens: a Unix socket path, or a TCP ``http://host:port`` URL."""

    socket_path: str | None = None
    url: str | None = None
    token: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        return f"socket {self.socket_path}" if self.url is None else self.url

    def connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.url is None:
            return UnixHTTPConnection(self.socket_path or "orchd.sock", timeout=timeout)
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme == "https":
            return http.client.HTTPSConnection(parts.netloc, timeout=timeout)
        return http.client.HTTPConnection(parts.netloc, timeout=timeout)

    def prefix(self) -> str:
        """A path prefix from the URL (a daemon behind a reverse proxy), without the slash."""
        if self.url is None:
            return ""
        return urllib.parse.urlsplit(self.url).path.rstrip("/")


def read_config(path: str | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """The config's top-level keys, or {} when no config applies; cheap, no validation.

    The file is found by `orchd.configfile.find_config` as a client finds it: ``path``, else
    ``$ORCHD_CONFIG``, else ``/etc/orchd/orchd.toml`` whenever it exists.
    """
    candidate = find_config(path or None, environ, system_default=True)
    if candidate is None:
        return {}
    import tomllib

    try:
        with open(candidate, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EndpointError(f"cannot read config {candidate}: {exc}") from exc


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise EndpointError(f"cannot read token file {path}: {exc.strerror or exc}") from exc


def resolve_endpoint(
    socket_path: str | None = None,
    url: str | None = None,
    config: str | None = None,
    token_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Endpoint:
    """Where the daemon is; the first of these wins.

    ``url`` (TCP), ``socket_path``, ``$ORCHD_SOCKET``, ``$ORCHD_URL``, the config's ``socket``, the
    config's ``listen`` (TCP), ``./orchd.sock``. The bearer token for TCP comes from ``token_file``,
    ``$ORCHD_TOKEN``, or the config's ``token_file`` when ``listen`` came from the config.
    """
    env = os.environ if environ is None else environ
    if url is None and socket_path is None:
        socket_path = env.get("ORCHD_SOCKET") or None
        url = None if socket_path else env.get("ORCHD_URL") or None
    if url is None and socket_path is None:
        settings = read_config(config, env)
        socket_path = _text(settings, "socket")
        listen = _text(settings, "listen")
        if socket_path is None and listen is not None:
            url = "http://" + listen
            if token_file is None and not env.get("ORCHD_TOKEN"):
                token_file = _text(settings, "token_file")
    if url is None:
        return Endpoint(socket_path=socket_path or DEFAULT_SOCKET)
    if not url.startswith(("http://", "https://")):
        raise EndpointError(f"the daemon's URL must look like http://host:port, not {url!r}")
    token = _read_token(token_file) if token_file else env.get("ORCHD_TOKEN")
    return Endpoint(url=url.rstrip("/"), token=token or None)


def _text(settings: dict[str, Any], key: str) -> str | None:
    value = settings.get(key)
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Event:
    """One server-sent event."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        """The data parsed as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.data)
        except ValueError:
            return None


def parse_sse(lines: Iterable[bytes]) -> Iterator[Event]:
    """Yield the events of a ``text/event-stream`` given as raw lines."""
    event_type = ""
    data: list[str] = []
    last_id: str | None = None
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield Event(event=event_type or "message", data="\n".join(data), id=last_id)
            event_type, data = "", []
            continue
        if line.startswith(":"):
            continue  # a comment: keep-alive
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            last_id = value
    # An event without its closing blank line is incomplete: drop it, as browsers do.


class Client:
    """Blocking JSON requests to the control API; one connection per request."""

    def __init__(
        self, endpoint: Endpoint, timeout: float = DEFAULT_TIMEOUT, reporter: str | None = None
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        #: A label the daemon adds to who asks, in the audit trail (``X-Orchd-Reporter``).
        self.reporter = reporter

    def _headers(self, has_body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.reporter:
            headers["X-Orchd-Reporter"] = self.reporter
        if has_body:
            headers["Content-Type"] = "application/json"
        if self.endpoint.token:
            headers["Authorization"] = f"Bearer {self.endpoint.token}"
        return headers

    def _url(self, path: str, query: dict[str, Any] | None) -> str:
        url = self.endpoint.prefix() + path
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        return url

    def _open(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self.endpoint.connection(self.timeout if timeout is None else timeout)
        payload = None if body is None else json.dumps(body).encode()
        all_headers = self._headers(payload is not None) | (headers or {})
        try:
            conn.request(method, self._url(path, query), body=payload, headers=all_headers)
            return conn, conn.getresponse()
        except TimeoutError as exc:
            conn.close()
            raise DaemonUnreachable(
                self.endpoint.describe(), f"no answer within {conn.timeout:g} s"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise DaemonUnreachable(self.endpoint.describe(), _reason(exc)) from exc

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON answer (None when the body is empty)."""
        conn, resp = self._open(method, path, body, query, headers)
        try:
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise DaemonUnreachable(self.endpoint.describe(), _reason(exc)) from exc
        finally:
            resp.close()
            conn.close()
        if resp.status >= 400:
            raise DaemonRefused(resp.status, _problem(resp.status, resp.reason, raw))
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise BadResponse(
                f"the daemon answered {method} {path} with something that is not JSON: "
                f"{raw[:200]!r}"
            ) from exc

    def get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        return self.request("POST", path, body={} if body is None else body, headers=headers)

    def events(
        self,
        read_timeout: float | None = None,
        until: float | None = None,
        *,
        last_event_id: str | None = None,
        process: str | None = None,
    ) -> Generator[Event, None, None]:
        """Follow ``GET /api/events``.

        The generator yields once, right after the daemon sent its headers, with a ``subscribed``
        event of our own, so a caller can re-check state without missing a change. A read that
        waits longer than ``read_timeout``, or any read after ``until`` (a ``time.monotonic()``
        value), raises ``TimeoutError``.
        """
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        conn, resp = self._open(
            "GET",
            "/api/events",
            query={"process": process},
            headers=headers,
            timeout=read_timeout,
        )

        def lines() -> Iterator[bytes]:
            # Keep-alive comments reset the socket's timeout, so the clock is checked here too.
            while line := resp.readline():
                if until is not None and time.monotonic() >= until:
                    raise TimeoutError("the event stream's time is up")
                yield line

        try:
            if resp.status >= 400:
                raise DaemonRefused(resp.status, _problem(resp.status, resp.reason, resp.read()))
            yield Event(event="subscribed", data="")
            yield from parse_sse(lines())
        finally:
            resp.close()
            conn.close()

    def process(self, pid: str) -> dict[str, Any]:
        """``GET /api/processes/{pid}``."""
        proc = self.get(f"/api/processes/{quoted(pid)}")
        if not isinstance(proc, dict):
            raise BadResponse(f"the daemon's answer for process {pid} is not an object: {proc!r}")
        return proc

    def wait(self, pid: str, timeout: float | None = None) -> dict[str, Any]:
        """The process once it has stopped where only a person can move it on: ``completed``,
        ``failed``, ``aborted`` or ``suspended``; or, when ``timeout`` seconds pass first, as
        it is then (still in a status of ``IN_PROGRESS``). ``pid`` may be a prefix.

        Follows the process's events (``GET /api/events?process=ID``) and reads the process
        again after subscribing, so a change between the first read and the stream is not
        missed, and whenever an event says it may have stopped. A stream the daemon closes is
        opened again; a daemon that went away raises DaemonUnreachable. Polls only when the
        daemon refuses a stream (too many open).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        proc = self.process(pid)
        pid = str(proc.get("id") or pid)  # a prefix resolved: the stream takes a whole id
        reconnects = 0
        while proc.get("status") in IN_PROGRESS:
            remaining = _remaining(deadline)
            if remaining == 0:
                break
            idle = STREAM_IDLE if remaining is None else min(STREAM_IDLE, remaining + 0.05)
            opened = time.monotonic()
            stream = self.events(read_timeout=idle, until=deadline, process=pid)
            subscribed = False
            try:
                for event in stream:
                    subscribed = True
                    if _may_have_stopped(event, pid):
                        proc = self.process(pid)
                        if proc.get("status") not in IN_PROGRESS:
                            return proc
            except TimeoutError:
                # Silent for STREAM_IDLE (heartbeats stopped), or the time is up: read again.
                proc = self.process(pid)
                continue
            except DaemonRefused:
                if subscribed:
                    raise  # a read of the process refused, not the stream
                return self._wait_polling(pid, deadline)
            except (OSError, http.client.HTTPException):
                pass  # the connection broke mid-stream: open another (or find the daemon gone)
            finally:
                stream.close()
            # The stream ended. Streams that end at once (a daemon shutting down) are not
            # reopened in a tight loop; the next attempt to reach a daemon that went away fails.
            reconnects = reconnects + 1 if time.monotonic() - opened < 1.0 else 0
            if reconnects:
                pause = RECONNECT_DELAYS[min(reconnects, len(RECONNECT_DELAYS)) - 1]
                left = _remaining(deadline)
                time.sleep(pause if left is None else min(pause, left))
        return proc

    def _wait_polling(self, pid: str, deadline: float | None) -> dict[str, Any]:
        while True:
            proc = self.process(pid)
            remaining = _remaining(deadline)
            if proc.get("status") not in IN_PROGRESS or remaining == 0:
                return proc
            time.sleep(POLL_INTERVAL if remaining is None else min(POLL_INTERVAL, remaining))


def _may_have_stopped(event: Event, pid: str) -> bool:
    # Right after subscribing, read again: the change may have come before the stream. Then
    # every event of the process, unless it says the process is still in progress (the change
    # to a stopping status is an event of its own, so reading the whole process once per step
    # of a long run would only cost).
    if event.event in ("subscribed", "reset"):
        return True
    data = event.json()
    if not isinstance(data, dict):
        return pid in event.data
    return data.get("process_id") == pid and data.get("status") not in IN_PROGRESS


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def quoted(value: str) -> str:
    """``value`` as one URL path segment."""
    return urllib.parse.quote(value, safe="")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such socket (is the daemon running?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the daemon running?)"
    if isinstance(exc, PermissionError):
        return "permission denied (are you in the daemon's group?)"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the daemon closed the connection without answering"
    return (
        os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc) or repr(exc)
    )


def _problem(status: int, reason: str, raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    text = raw.decode("utf-8", "replace").strip()
    return {"status": status, "title": reason, "detail": text or f"HTTP {status} {reason}"}
