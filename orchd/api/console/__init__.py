"""The web console (README "Web console"): an operator's pages at ``/ui/``, on every listener.

Server-rendered HTML (Jinja2 templates in ``templates/``) with one small script of our own
(``static/console.js``) for live updates; both ship in the package, nothing is built at install
or fetched at run time. The console is a sub-application that ``orchd.api.app`` mounts beside
the JSON routes; it reads and acts through the same ``Engine`` calls and uses the API's public
parts (``orchd.api.service.Service``: who asks, the event streams, health) and its parsing and
checks (``inputs``), never the routes themselves, so the two never disagree. See ``core`` for
sessions, CSRF and the actor, ``pages`` for what is shown, ``actions`` for what is done,
``forms`` for forms from JSON Schema.
"""

from __future__ import annotations

from aiohttp import web

from orchd.api.console.actions import Actions
from orchd.api.console.core import Console
from orchd.api.console.pages import Pages
from orchd.api.service import Service

__all__ = ["CONSOLE", "PREFIX", "Console", "setup_console"]

CONSOLE = web.AppKey("orchd.console", Console)

#: Where the console lives.
PREFIX = "/ui"


def setup_console(app: web.Application, api: Service, *, session_timeout: float) -> Console:
    """Mount the console under ``/ui`` in the control API's ``app``; the API's middleware must
    leave the requests under ``PREFIX`` to the console's own (``ControlApi.authorises_itself``)."""
    console = Console(api, session_timeout)
    pages = Pages(console)
    actions = Actions(console, pages)
    sub = web.Application(middlewares=[console.middleware], client_max_size=api.max_body)
    sub[CONSOLE] = console
    gets = {
        "/": pages.processes,
        "/processes": pages.processes,
        "/processes/{id}": pages.process,
        "/processes/{id}/row": pages.process_row,
        "/workflows": pages.workflows,
        "/workflows/{name}": pages.workflow,
        "/subscriptions": pages.subscriptions,
        "/subscriptions/{id}": pages.subscription,
        "/products": pages.products,
        "/schedules": pages.schedules,
        "/health": pages.health,
        "/events": pages.events,
        "/login": pages.login,
        "/static/{name}": pages.static_file,
    }
    for path, handler in gets.items():
        sub.router.add_get(path, handler, allow_head=True)
    posts = {
        "/login": pages.login_post,
        "/logout": pages.logout,
        "/processes/{id}/resume": actions.resume,
        "/processes/{id}/retry": actions.retry,
        "/processes/{id}/skip": actions.skip,
        "/processes/{id}/abort": actions.abort,
        "/processes/{id}/callback": actions.callback,
        "/workflows/{name}": actions.start,
        "/schedules/{name}/run": actions.run_schedule,
        "/subscriptions/{id}/note": actions.note,
    }
    for path, handler in posts.items():
        sub.router.add_post(path, handler)

    async def to_console(request: web.Request) -> web.StreamResponse:
        raise web.HTTPPermanentRedirect(f"{PREFIX}/")

    # Before the sub-application, which would otherwise answer its bare prefix with 404.
    app.router.add_get(PREFIX, to_console, allow_head=True)
    app.add_subapp(PREFIX, sub)
    app[CONSOLE] = console
    return console
