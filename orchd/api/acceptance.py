"""Which requests the daemon takes at all (README "The HTTP API"), checked once for the JSON API and
the console before any route reads them.

- **Host.** Over TCP the ``Host`` header must name this daemon: the address the connection
  came to, ``localhost``, ``127.0.0.1`` or ``[::1]`` (each with the listener's port), the host
  of ``listen`` as written, or a name in ``allowed_hosts``; else 421 (400 without a Host). A
  page on a DNS-rebinding name reaches the port under its own name, so it is refused. On the
  Unix socket scripts may send any Host (``curl --unix-socket ... http://x/``), but a request
  a browser made (it carries ``Origin`` or ``Sec-Fetch-Site``) must name ``localhost``,
  ``127.0.0.1``, ``[::1]`` (any port: the tunnel's own) or an allowed name: that is how a
  browser reaches the socket through ``ssh -L`` or ``socat``, and a rebinding page cannot.
- **Origin.** A request that may change something (any method but GET, HEAD and OPTIONS)
  whose ``Origin`` is another origin than its ``Host`` (``null`` included), or whose
  ``Sec-Fetch-Site`` is ``cross-site`` or ``same-site``, is refused with 403. A request with
  neither header (the CLI, scripts, OSS callbacks) is not a browser's and goes on.
- **Media type.** A body sent to the JSON API (``/api/...``) must be ``application/json``
  (a ``charset=utf-8`` parameter allowed); any other body, or one without a type, is 415.
  A browser can send ``text/plain`` and form bodies to another site without asking it
  first; it cannot send ``application/json`` that way.
"""

from __future__ import annotations

import functools
import ipaddress
import urllib.parse
from collections.abc import Iterable

from aiohttp import web

from orchd.config import canonical_name, parse_host
from orchd.errors import BadRequest, CrossSiteRequest, MisdirectedRequest, UnsupportedMediaType

#: Methods that change nothing: a browser sends them across sites freely, and they are
#: answered like any other (CORS keeps the answer from the other site's script).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The names of the loopback interface, as ``canonical_name`` writes them.
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
#: Where the JSON API lives; the console's forms (``/ui/``) post HTML forms.
JSON_API = "/api/"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_json(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` is ``application/json``, with at most a UTF-8 charset."""
    if content_type is None:
        return False
    media, *params = content_type.split(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() != "charset":
            return False
        if value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


class Acceptance:
    """The rules above for one daemon: ``allowed_hosts`` (``name`` for any port, or
    ``name:port``) and the host of its ``listen`` setting, if any."""

    def __init__(self, allowed_hosts: Iterable[str] = (), listen_host: str | None = None):
        self.any_port: set[str] = set()
        self.with_port: set[tuple[str, int]] = set()
        for entry in allowed_hosts:
            parsed = parse_host(entry)
            if parsed is None:
                raise ValueError(f"not a host name or address: {entry!r}")
            name, port = parsed
            if port is None:
                self.any_port.add(name)
            else:
                self.with_port.add((name, port))
        listen = None if listen_host is None else canonical_name(listen_host)
        # A wildcard address (0.0.0.0, ::) is where the listener binds, never what a client
        # asks for; a browser that sends it as the Host was led there by a page.
        self.listen_host = None if listen is None or _unspecified(listen) else listen

    def check(self, request: web.Request, *, tcp: bool) -> None:
        """Raise the refusal of ``request`` (400, 403, 415 or 421), or return."""
        browser = "Origin" in request.headers or "Sec-Fetch-Site" in request.headers
        if tcp:
            self._tcp_host(request)
        elif browser:
            self._socket_host(request)
        if request.method not in SAFE_METHODS:
            _same_origin(request)
        if request.path.startswith(JSON_API) and request.body_exists:
            content_type = request.headers.get("Content-Type")
            if not is_json(content_type):
                given = "no Content-Type" if content_type is None else repr(content_type)
                raise UnsupportedMediaType(
                    f"the JSON API takes bodies as application/json, got {given}"
                )

    def _allowed(self, name: str, port: int | None) -> bool:
        return name in self.any_port or (port is not None and (name, port) in self.with_port)

    def _tcp_host(self, request: web.Request) -> None:
        name, port = _host_of(request)
        if self._allowed(name, port):
            return
        transport = request.transport
        local = None if transport is None else transport.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) >= 2:
            own = {*LOOPBACK, canonical_name(str(local[0])), self.listen_host}
            if name in own and (80 if port is None else port) == local[1]:
                return
        raise MisdirectedRequest(
            f"Host {request.headers['Host']!r} does not name this daemon (its listener's address, "
            "localhost, or a name in allowed_hosts)"
        )

    def _socket_host(self, request: web.Request) -> None:
        name, port = _host_of(request)
        if name in LOOPBACK or self._allowed(name, port):
            return
        raise MisdirectedRequest(
            f"Host {request.headers['Host']!r}: a browser reaches the socket as localhost "
            "(a tunnel) or by a name in allowed_hosts"
        )


def _unspecified(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_unspecified
    except ValueError:
        return False


def _host_of(request: web.Request) -> tuple[str, int | None]:
    raw = request.headers.get("Host")
    if not raw:
        raise BadRequest("a Host header is required")
    parsed = parse_host(raw)
    if parsed is None:
        raise BadRequest(f"Host: {raw!r} is not a host name or address")
    return parsed


def _same_origin(request: web.Request) -> None:
    site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    if site in ("cross-site", "same-site"):
        raise CrossSiteRequest(f"a {site} request may not change anything here")
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if not _origin_is_host(origin, request.headers.get("Host")):
        raise CrossSiteRequest(
            f"Origin {origin!r} is another site than this daemon's: nothing was done"
        )


@functools.lru_cache(maxsize=1024)
def _origin_is_host(origin: str, host: str | None) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``) names the same host and port as the
    request's ``Host`` (whose port, when left out, is the origin scheme's default)."""
    if host is None:
        return False
    try:
        parts = urllib.parse.urlsplit(origin.strip())
        origin_port = parts.port
    except ValueError:
        return False
    default = _DEFAULT_PORTS.get(parts.scheme.lower())
    if default is None or parts.hostname is None or parts.path or parts.query:
        return False
    origin_name = canonical_name(parts.hostname)
    parsed = parse_host(host)
    if origin_name is None or parsed is None:
        return False
    name, port = parsed
    return name == origin_name and (port or default) == (origin_port or default)
