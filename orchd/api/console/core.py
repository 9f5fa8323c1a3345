"""What every console request goes through: who is asking, whether a post is genuine, how the
answer is rendered.

The console is an aiohttp sub-application under ``/ui``. The control API's middleware runs
first (rate limit, errors of the framework) but leaves authorisation to this one, which takes
the session cookie where the API takes the bearer token:

- over TCP (a token is configured) a request without a live session is sent to the login
  page (a post, or the event stream, is refused with 401);
- on the Unix socket a session is opened on the first request, so that forms have a CSRF
  token to carry; the actor is the peer's uid, as on the API (``orchd.api.identity`` names
  both);
- every ``POST`` but the login must carry the session's CSRF token (form field ``csrf`` or
  header ``X-CSRF-Token``), or it is refused with 403 before its handler runs: a forged post
  changes nothing.

Errors the engine raises (404, 409, ...) become an HTML page with the problem's detail.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from orchd import __version__
from orchd.api.console.render import environment, html, secure
from orchd.api.console.session import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    Session,
    Sessions,
    set_cookie,
)
from orchd.api.service import Service
from orchd.errors import BadRequest, OrchdError

log = logging.getLogger("orchd.api.console")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Starts remembered by the form that made them (see ``Console.started``).
MAX_STARTS = 4096

#: Paths that need no session: the login page and the files it uses.
OPEN_PATHS = ("/ui/login", "/ui/static/")
#: Where the request's session is kept while it is handled, and whether it is new.
SESSION = web.RequestKey("orchd.console.session", Session)
NEW_SESSION = web.RequestKey("orchd.console.new_session", bool)
#: The newest event id when the request came in, before anything was read: a page's script
#: follows the stream from there, so no change between the read and the render is missed.
EVENTS_AFTER = web.RequestKey("orchd.console.events_after", int)


class Console:
    """The console's shared parts: the API it drives, its sessions, its templates."""

    def __init__(self, api: Service, session_timeout: float) -> None:
        self.api = api
        self.engine = api.engine
        self.sessions = Sessions(session_timeout)
        self.templates = environment()
        self._starts: OrderedDict[tuple[str, str], str] = OrderedDict()

    # -- starts of forms of several pages -------------------------------------------------

    def started(self, request: web.Request, key: str | None) -> str | None:
        """The process this session's form (its idempotency key) started already, if any.

        A form of several pages is replayed before its start, and the start itself may take
        its choices (the ports it picked): a second post of its last page (a double click,
        the browser's back button) would be refused for choices its own process holds, so the
        key is looked up first. The engine's idempotency still makes one process per key."""
        if key is None:
            return None
        return self._starts.get((session_of(request).id, key))

    def remember_start(self, request: web.Request, key: str | None, pid: str) -> None:
        if key is None:
            return
        self._starts[(session_of(request).id, key)] = pid
        while len(self._starts) > MAX_STARTS:
            self._starts.popitem(last=False)

    # -- who asks -------------------------------------------------------------------------

    def login_required(self, request: web.Request) -> bool:
        return self.api.identity.token_required(request)

    def actor(self, request: web.Request) -> str:
        """Who the audit trail names (README "The HTTP API"): ``token`` (with the name given at
        login) for a TCP session; on the socket what the API would record, ``uid:N``."""
        session = session_of(request)
        return self.api.identity.reporter(request, login=session.label if session.tcp else None)

    def _footer_actor(self, request: web.Request) -> str:
        try:
            return self.actor(request)
        except BadRequest:  # a bad X-Orchd-Reporter: the page still renders (the action won't)
            return ""

    # -- answers --------------------------------------------------------------------------

    def render(
        self, request: web.Request, template: str, status: int = 200, **context: Any
    ) -> web.Response:
        session = request.get(SESSION)
        context.setdefault("notice", None)
        context.setdefault("problem", None)
        context.setdefault("nav", "")
        page = self.templates.get_template(template).render(
            session=session,
            version=__version__,
            last_event_id=request.get(EVENTS_AFTER, self.engine.last_event_id),
            actor=self._footer_actor(request) if session is not None else "",
            **context,
        )
        return html(page, status)

    def problem_page(self, request: web.Request, exc: OrchdError) -> web.Response:
        problem = exc.problem()
        page = self.render(
            request,
            "problem.html",
            status=int(problem["status"]),
            title=str(problem["title"]),
            problem=problem,
        )
        page.headers.update(exc.headers)  # Retry-After with a 429
        return page

    # -- the middleware -------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request[EVENTS_AFTER] = self.engine.last_event_id
        try:
            response = await self._guarded(request, handler)
        except OrchdError as exc:
            response = self.problem_page(request, exc)
        except web.HTTPException as exc:
            if exc.status >= 400:
                raise
            response = web.Response(status=exc.status, headers=exc.headers)
        if response.prepared:
            return response  # the event stream: its headers went out when it started
        if request.get(NEW_SESSION):
            set_cookie(request, response, request[SESSION])
        static = request.path.startswith("/ui/static/")
        return secure(response, cache=static)

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(OPEN_PATHS):
            return await handler(request)
        tcp = self.login_required(request)
        session = self.sessions.find(request.cookies.get(COOKIE), tcp=tcp)
        if session is None:
            if tcp:
                return self._login_first(request)
            session = self.sessions.open(tcp=False)
            request[NEW_SESSION] = True
        request[SESSION] = session
        if request.method == "POST" and not await _csrf_ok(request, session):
            log.warning("console: refused a post without its CSRF token path=%s", request.path)
            return self.render(
                request,
                "problem.html",
                status=403,
                title="Forbidden",
                problem={
                    "title": "Forbidden",
                    "detail": "this form did not carry the console's CSRF token (it may have "
                    "come from another site, or the page is too old): nothing was done. "
                    "Reload the page and try again.",
                },
            )
        return await handler(request)

    def _login_first(self, request: web.Request) -> web.StreamResponse:
        if request.method in ("GET", "HEAD") and request.path != "/ui/events":
            return see_other(f"/ui/login?next={_quote(request.path_qs)}")
        return secure(
            web.Response(
                status=401,
                text="log in first: /ui/login",
                headers={"WWW-Authenticate": 'Cookie realm="orchd console"'},
            )
        )


def see_other(location: str) -> web.Response:
    """303: after a post, the browser gets the page that shows the outcome."""
    return web.Response(status=303, headers={"Location": location})


def session_of(request: web.Request) -> Session:
    session: Session = request[SESSION]
    return session


async def _csrf_ok(request: web.Request, session: Session) -> bool:
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        posted = await request.post()
        value = posted.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    return session.csrf_ok(given)


async def posted_text(request: web.Request) -> dict[str, str]:
    """The posted form's text fields (the CSRF token left out)."""
    posted = await request.post()
    return {k: v for k, v in posted.items() if isinstance(v, str) and k != CSRF_FIELD}


async def posted_values(request: web.Request) -> dict[str, str | list[str]]:
    """As ``posted_text``, but a field posted more than once (the check boxes of one list)
    gives the list of its values, in the page's order."""
    posted = await request.post()
    values: dict[str, str | list[str]] = {}
    for key in dict.fromkeys(posted.keys()):
        if key == CSRF_FIELD:
            continue
        texts = [v for v in posted.getall(key) if isinstance(v, str)]
        if texts:
            values[key] = texts[0] if len(texts) == 1 else texts
    return values


def safe_next(target: str | None) -> str:
    """Only a console path: a login must not be a way to send the browser elsewhere."""
    if not target or not target.startswith("/ui/") or target.startswith("//"):
        return "/ui/"
    if "\\" in target or any(ord(c) < 32 for c in target):
        return "/ui/"
    return target


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")
