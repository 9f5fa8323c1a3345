"""The daemon's aiohttp application, composed in one place: the JSON routes (``routes``) and,
when enabled, the web console (``console``) beside them, over one engine and one identity
check (``identity``). Neither part imports the other: the console gets the API's public
parts (``service.Service``).
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from orchd.api.acceptance import Acceptance
from orchd.api.console import PREFIX, setup_console
from orchd.api.logins import FailedLogins
from orchd.api.routes import ControlApi
from orchd.api.service import SchedulerLike
from orchd.api.sse import HEARTBEAT
from orchd.engine import Engine
from orchd.settings import ConsoleSettings, EventSettings

__all__ = ["API", "create_app"]

API = web.AppKey("orchd.api", ControlApi)


def create_app(
    engine: Engine,
    *,
    scheduler: SchedulerLike | None = None,
    max_body: int = 1 << 20,
    token: str | None = None,
    heartbeat: float = HEARTBEAT,
    rate_limit: float = 0.0,
    events: EventSettings | None = None,
    console: ConsoleSettings | None = None,
    allowed_hosts: Iterable[str] = (),
    listen_host: str | None = None,
    logins: FailedLogins | None = None,
) -> web.Application:
    """The control API over ``engine``.

    ``token``, when set, is required (``Authorization: Bearer``) from TCP clients on every route
    but ``GET /api/health`` (which then tells only the status) and the callback route (whose
    token is the credential); Unix socket clients are trusted, and recorded by their uid.
    ``rate_limit`` (requests per second per client, bursts of up to
    twice that; 0 for none) answers 429 to a client that goes over it. ``console`` configures
    the web console under ``/ui/`` (``orchd.api.console``). ``allowed_hosts`` are the names
    besides its own addresses (``listen_host``, the address a connection came to, localhost)
    that a request's ``Host`` may give (``orchd.api.acceptance``). ``logins`` throttles
    wrong tokens per address (``orchd.api.logins``; by default as ``[tcp]``'s defaults say).
    """
    api = ControlApi(
        engine,
        scheduler,
        max_body=max_body,
        token=token,
        heartbeat=heartbeat,
        events=events or EventSettings(),
        acceptance=Acceptance(allowed_hosts, listen_host),
        logins=logins,
        rate_limit=rate_limit,
    )
    # Our own limit applies to bodies; aiohttp's is set alike for anything reading them itself.
    app = web.Application(middlewares=[api.middleware], client_max_size=max_body)
    app[API] = api
    for route in api.routes:
        if route.method == "GET":
            app.router.add_get(route.path, route.handler, allow_head=True)  # RFC 9110
        else:
            app.router.add_route(route.method, route.path, route.handler)
    console = console or ConsoleSettings()
    if console.enabled:
        setup_console(app, api, session_timeout=console.session_timeout)
        api.authorises_itself(PREFIX)
    return app
