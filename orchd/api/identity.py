"""Who is asking, decided once for the control API, the web console and the TCP guard
(README "Threat model").

- **The Unix socket** is trusted: whoever can connect is in the daemon's group. The peer is
  named by the uid the kernel gives (``SO_PEERCRED``): ``uid:1000``. It never needs the token.
- **TCP** with a token configured: ``Authorization: Bearer TOKEN`` (the scheme in any case,
  spaces around the token ignored), compared in constant time. A request that gives it is
  ``token``; one without it is ``tcp:ADDRESS``. A wrong token counts against its address
  (``orchd.api.logins``), and a throttled address's token is not compared at all.
- **The console's login** trades the token for a session: what such a session does is
  ``token``, with the name given at login.
- **A label** (``X-Orchd-Reporter``, the console's login name) is added in parentheses
  (``uid:1000 (alice)``) and never replaces what the transport says: at most
  ``MAX_LABEL`` printable characters, else 400.

The routes decide which of them need the token (health and callbacks do not); the console
decides how a session is kept. Neither parses a token or names a peer itself.
"""

from __future__ import annotations

import enum
import hmac
import socket
import struct

from aiohttp import web

from orchd.api.logins import FailedLogins
from orchd.errors import BadRequest, Unauthorized

__all__ = [
    "LABEL_PATTERN",
    "MAX_LABEL",
    "TOKEN",
    "Identity",
    "Verdict",
    "bearer",
    "client_key",
    "is_tcp",
    "label",
    "matches",
    "peer_address",
]

#: The longest label (``X-Orchd-Reporter``, a console login's name).
MAX_LABEL = 200
#: A label as ``str.isprintable`` takes it, within the Latin-1 that headers carry (for the
#: OpenAPI document).
LABEL_PATTERN = "^[^\\x00-\\x1f\\x7f-\\xa0\\xad]*$"
#: Who a request that gave the token is.
TOKEN = "token"


class Verdict(enum.Enum):
    """What a token check found."""

    #: No bearer token was given (no header, another scheme, an empty token).
    MISSING = "missing"
    #: The address gave too many wrong tokens lately: the token was not compared.
    THROTTLED = "throttled"
    #: The token is right.
    RIGHT = "right"
    #: The token is wrong: counted and logged as a failed login.
    WRONG = "wrong"


def bearer(authorization: str | None) -> str | None:
    """The token an ``Authorization`` value gives (``Bearer TOKEN``), None without one."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    given = given.strip()
    return given if scheme.lower() == "bearer" and given else None


def label(text: str, field: str) -> str:
    """A label for the audit trail as given in ``field``: stripped, at most ``MAX_LABEL``
    characters, none of them a control character (400 otherwise)."""
    given = text.strip()
    if len(given) > MAX_LABEL:
        raise BadRequest(f"{field}: longer than {MAX_LABEL} characters")
    if not given.isprintable():
        raise BadRequest(f"{field}: control characters are not allowed")
    return given


def is_tcp(request: web.Request) -> bool:
    """Whether the request came over TCP (a Unix socket's sockname is its path: str, or
    bytes for the abstract namespace)."""
    transport = request.transport
    return transport is None or isinstance(transport.get_extra_info("sockname"), tuple)


def peer_address(request: web.Request) -> str:
    """The TCP peer's address, ``?`` when there is none."""
    transport = request.transport
    peer = None if transport is None else transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


def client_key(request: web.Request) -> str:
    """One client, for per-client limits (the rate limit, event streams): ``tcp:ADDRESS``,
    or the socket peer's ``uid:N``."""
    transport = request.transport
    if transport is None:
        return "?"
    if is_tcp(request):
        peer = transport.get_extra_info("peername")
        return f"tcp:{peer[0]}" if isinstance(peer, tuple) and peer else "tcp"
    return _peer_uid(transport.get_extra_info("socket")) or "unix"


def _peer_uid(sock: socket.socket | None) -> str | None:
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return f"uid:{uid}"


def matches(given: str, secret: bytes) -> bool:
    """Whether ``given`` (a header, a form field, a raw request head's bytes decoded) is
    ``secret``, compared in constant time as the bytes the client sent."""
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: this gives them back. A
    # strict encode raised on such a byte (a 500); "replace" took it for a "?".
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret)


class Identity:
    """The token (None: TCP needs none) and the failed logins it is checked against."""

    def __init__(self, token: str | None, logins: FailedLogins) -> None:
        self._token = token.encode() if token else None
        #: Wrong tokens per address (shared by every check of one daemon).
        self.logins = logins

    def token_required(self, request: web.Request) -> bool:
        """Whether this request must show the token: over TCP with one configured."""
        return self._token is not None and is_tcp(request)

    def verdict(self, given: str | None, address: str, route: str) -> Verdict:
        """Check a ``given`` token from ``address`` (None: none given). A wrong one is a
        failed login on ``route``; a throttled address's is not compared."""
        if given is None:
            return Verdict.MISSING
        if self.logins.wait(address) > 0:
            return Verdict.THROTTLED
        if self._token is not None and matches(given, self._token):
            return Verdict.RIGHT
        self.logins.failed(address, route)
        return Verdict.WRONG

    def authorize(self, request: web.Request, route: str) -> None:
        """Let a request for a route that needs the token through, or raise: 429 while its
        address is throttled (before anything is compared), 401 without the right token."""
        if not self.token_required(request):
            return
        address = peer_address(request)
        self.logins.check(address, route)
        match self.verdict(bearer(request.headers.get("Authorization")), address, route):
            case Verdict.RIGHT:
                return
            case Verdict.MISSING:
                raise Unauthorized("a bearer token is required over TCP")
            case _:
                raise Unauthorized("the bearer token is wrong")

    def shows_token(self, request: web.Request, route: str) -> bool:
        """Whether a request for a route open to all (health) may be told more: on the
        socket, without a token configured, or with the right token."""
        if not self.token_required(request):
            return True
        given = bearer(request.headers.get("Authorization"))
        return self.verdict(given, peer_address(request), route) is Verdict.RIGHT

    def login(self, request: web.Request, typed: str, route: str) -> bool:
        """Whether ``typed`` (at the console's login) is the token; raises TooManyRequests
        while the request's address is throttled."""
        address = peer_address(request)
        self.logins.check(address, route)
        return self.verdict(typed.strip(), address, route) is Verdict.RIGHT

    def reporter(self, request: web.Request, *, login: str | None = None) -> str:
        """Who the audit trail names for this request (README "The HTTP API"): ``uid:N`` on
        the socket, ``token`` over TCP with the token (``tcp:ADDRESS`` without), with the
        ``X-Orchd-Reporter`` label in parentheses. ``login``: the request belongs to a
        console session opened with the token, under this name."""
        if login is not None:
            who, given = TOKEN, login
        else:
            given = label(request.headers.get("X-Orchd-Reporter", ""), "X-Orchd-Reporter")
            token = is_tcp(request) and self._gives_token(request)
            who = TOKEN if token else client_key(request)
        return f"{who} ({given})" if given else who

    def _gives_token(self, request: web.Request) -> bool:
        # Compared only: a route that needs the token had it checked (a wrong one counted)
        # before its handler ran; a callback's may carry none.
        given = bearer(request.headers.get("Authorization"))
        return self._token is not None and given is not None and matches(given, self._token)
