"""Console sessions: who a browser is, and the CSRF token its forms must carry.

Over TCP the operator gives the bearer token once, on the login page; the browser then holds
only a random session id in an ``HttpOnly``, ``SameSite=Strict`` cookie, never the token. On
the Unix socket (reached through an SSH tunnel or a local reverse proxy) the kernel already
says who the peer is, so no login is asked, but a session is still made on the first page: its
CSRF token is what keeps another web site from making the operator's browser post to the
console through the tunnel.

Sessions live in the daemon's memory: a restart logs everyone out, which for a token login
costs one more paste and leaves nothing to leak from the database. Their number is capped so
that a client cannot grow the table without bound.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from orchd.api.identity import matches

#: The cookie that holds the session id.
COOKIE = "orchd_session"
#: The form field (or ``X-CSRF-Token`` header) that carries the session's CSRF token.
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
#: Sessions held at once; the oldest goes first beyond this.
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Session:
    """One browser's session. ``tcp`` sessions were opened with the token on the login page
    and are valid on TCP only; socket sessions are valid on the socket only."""

    id: str
    csrf: str
    expires: float
    tcp: bool
    #: What the operator typed as their name at login, recorded beside ``token``.
    label: str = ""

    def csrf_ok(self, given: str | None) -> bool:
        return given is not None and matches(given, self.csrf.encode())


class Sessions:
    """The daemon's console sessions, each valid for ``timeout`` seconds from its start."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.time) -> None:
        self.timeout = timeout
        self._clock = clock
        self._held: OrderedDict[str, Session] = OrderedDict()

    def open(self, *, tcp: bool, label: str = "") -> Session:
        """A new session (and its CSRF token), expiring ``timeout`` seconds from now."""
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            expires=self._clock() + self.timeout,
            tcp=tcp,
            label=label,
        )
        self._held[session.id] = session
        while len(self._held) > MAX_SESSIONS:
            self._held.popitem(last=False)
        return session

    def find(self, session_id: str | None, *, tcp: bool) -> Session | None:
        """The live session of this id for this kind of listener, or None."""
        if not session_id:
            return None
        session = self._held.get(session_id)
        if session is None or session.tcp != tcp:
            return None
        if session.expires <= self._clock():
            del self._held[session_id]
            return None
        return session

    def close(self, session_id: str) -> None:
        self._held.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._held)


def set_cookie(request: web.Request, response: web.StreamResponse, session: Session) -> None:
    """The session cookie: script-proof, never sent cross-site, for the whole daemon (the
    console's stream and pages share it), ``Secure`` when the page came over HTTPS (a proxy)."""
    response.set_cookie(
        COOKIE,
        session.id,
        max_age=max(1, int(session.expires - time.time())),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure or request.headers.get("X-Forwarded-Proto") == "https",
    )


def clear_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/")
