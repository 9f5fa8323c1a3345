"""Pages out: the templates, the filters they use, and the headers every console answer has.

Jinja2 with autoescaping on for every template: State, step errors and tracebacks are text
that workflow code and external systems wrote, and all of it reaches the page escaped. The
templates ship inside the package (``templates/``) and are loaded through the package, so an
installed wheel serves them as a checkout does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import jinja2
import msgspec
from aiohttp import web

#: No script but our own files, no inline script or handler, no style but our own file, no
#: framing, forms post only here: a value that slipped through escaping still could not run.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Process ids and filters in the address must not travel to another site in a Referer.
    # Not "no-referrer": under it a browser sends ``Origin: null`` with the console's own
    # form posts, and those are refused as another site's (api/acceptance.py).
    "Referrer-Policy": "same-origin",
}


def duration(started: datetime | None, finished: datetime | None) -> str:
    if started is None or finished is None:
        return ""
    seconds = (finished - started).total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def _pretty(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def _short(pid: str | None) -> str:
    return "" if not pid else pid[:8]


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("orchd.api.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = duration
    env.filters["when"] = _when
    env.filters["pretty"] = _pretty
    env.filters["short"] = _short
    return env


def secure(response: web.StreamResponse, *, cache: bool = False) -> web.StreamResponse:
    """Add the console's security headers; pages carry a CSRF token, so none is cached."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not cache:
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
