"""Answers to requests aiohttp refuses before any handler runs (malformed HTTP, a handler
timeout): problem+json like every other error, and nothing of the request echoed back.

aiohttp answers these in plain text with the parser's message, which quotes the offending line:
a bearer token in a malformed header went back to the sender, and into any log or proxy that
kept the answer. The server's connection handler is replaced by one that says only what kind of
error it was.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = logging.getLogger("orchd.api")

_encode = msgspec.json.Encoder().encode

#: What each status says, without a word of the request.
_DETAIL = {
    400: "the request is not valid HTTP",
    413: "the request is too large",
    431: "the request's headers are too large",
    500: "an unexpected error occurred; the daemon's log has the details",
    504: "the request took too long",
}


class _ProblemRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("request failed before its handler: status=%d", status, exc_info=exc)
        else:
            # The exception's text may quote the request (a token in a header): not logged.
            log.warning("malformed request refused: status=%d %s", status, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had begun; the connection is closed instead")
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        body = {
            "type": f"urn:orchd:problem:http-{status}",
            "title": phrase or "Error",
            "status": status,
            "detail": _DETAIL.get(status, "the request was refused"),
        }
        response = web.Response(
            status=status, body=_encode(body), content_type="application/problem+json"
        )
        response.force_close()
        return response


class _ProblemServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


def answer_malformed_requests_with_problems(server: Any) -> None:
    """Make a set-up runner's server answer protocol errors as problem+json (see above)."""
    if not isinstance(server, web.Server):
        raise TypeError(f"expected an aiohttp Server, got {type(server).__name__}")
    # The runner built the server; only how it makes connection handlers changes.
    server.__class__ = _ProblemServer
