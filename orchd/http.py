"""Talking to OSS/BSS systems from steps: one shared HTTP client and a polling helper.

A daemon runs thousands of processes, and many of them are waiting on a slow inventory or
provisioning system at any moment. Two rules keep that cheap:

- one ``aiohttp.ClientSession`` (one connection pool) per daemon, handed to steps as the
  engine resource ``HttpClient``; its connector's per-host limit makes a queued request
  cost a small waiter, never a socket, and keeps one busy OSS from starving the others;
- waiting is ``await asyncio.sleep``: a process polling for "active" is one small task on the
  event loop, never a thread and never a blocked worker.

The errors raised here are raised inside steps (the process fails or, in a ``retrystep``,
waits), not by the control API::

    HttpError
    ├── OssError          the OSS answered with a status the step did not expect
    ├── OssUnavailable    no usable answer: connection error, timeout, or 502/503/504
    │                     still after the retries
    └── PollTimeout       poll() reached its deadline without a result

``PollTimeout`` is deliberately not a ``TimeoutError``: the engine reports a ``TimeoutError``
as the step's own time limit, which would hide the deadline it names.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import msgspec

from orchd.settings import HttpSettings
from orchd.tracing import CURRENT, TRACEPARENT

log = logging.getLogger("orchd.http")
T = TypeVar("T")

#: Methods whose repetition has the same effect as one call (RFC 9110, 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: Statuses that mean "try again later" from a gateway or an overloaded server.
RETRY_STATUSES = frozenset({502, 503, 504})
SUCCESS = range(200, 300)
_EXCERPT = 200

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class HttpError(Exception):
    """Raised when a step's HTTP conversation with an OSS did not give a usable answer."""


class OssError(HttpError):
    """Raised when the OSS answers with a status the caller did not expect."""

    def __init__(self, method: str, url: str, status: int, body: bytes) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.body = body[:_EXCERPT].decode("utf-8", "replace")
        super().__init__(f"{method} {url} answered {status}: {self.body}")


class OssUnavailable(HttpError):
    """Raised when the OSS cannot be reached, times out, or stays 502/503/504 after retries."""

    def __init__(self, method: str, url: str, reason: str, status: int | None = None) -> None:
        self.method = method
        self.url = url
        self.reason = reason
        self.status = status
        super().__init__(f"{method} {url}: {reason}")


class PollTimeout(HttpError):
    """Raised when ``poll`` reaches its deadline and the check still has no result."""

    def __init__(self, deadline: float, attempts: int, what: str = "") -> None:
        self.deadline = deadline
        self.attempts = attempts
        subject = f" for {what}" if what else ""
        super().__init__(
            f"gave up waiting{subject} after the {deadline:g} s deadline ({attempts} checks)"
        )


class HttpResponse(msgspec.Struct, frozen=True):
    """An answer read in full (the connection is back in the pool already)."""

    method: str
    url: str
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON (``None`` for an empty body)."""
        return _decode(self.body) if self.body else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def header(self, name: str) -> str | None:
        """A header's value, whatever the case the server wrote its name in."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


@dataclass
class HttpStats:
    """Counters for metrics: attempts sent, retries among them, calls that raised, in flight."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    in_flight: int = 0


class HttpClient:
    """One pooled HTTP client per daemon, with retries and per-host limits.

    Use ``async with HttpClient() as http:`` (or ``open``/``close``) and hand it to the engine as
    ``resources={HttpClient: http}``; a step asks for it with a parameter annotated
    ``HttpClient``. Idempotent methods are retried with exponential backoff and jitter on
    connection errors, timeouts and 502/503/504 (``Retry-After`` is honoured); POST only when
    the caller passes ``idempotent=True`` (for example with an idempotency key). A request
    made by a step carries a W3C ``traceparent`` header naming its process's trace and the
    step's span (unless the caller passed one).
    """

    def __init__(
        self,
        settings: HttpSettings | None = None,
        *,
        limit: int | None = None,
        limit_per_host: int | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        retries: int | None = None,
        backoff: float = 0.2,
        max_retry_after: float = 30.0,
    ) -> None:
        # The daemon passes one settings object built from the config; workflow authors and
        # tests may name single limits instead, which then win over ``settings``.
        given = {
            "limit": limit,
            "limit_per_host": limit_per_host,
            "timeout": timeout,
            "connect_timeout": connect_timeout,
            "retries": retries,
        }
        chosen = msgspec.structs.replace(
            settings or HttpSettings(), **{k: v for k, v in given.items() if v is not None}
        )
        if chosen.limit < 1 or chosen.limit_per_host < 1:
            raise ValueError("limit and limit_per_host must be at least 1")
        if chosen.retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must not be negative")
        self.settings = chosen
        self.limit = chosen.limit
        self.limit_per_host = chosen.limit_per_host
        self.timeout = chosen.timeout
        self.connect_timeout = chosen.connect_timeout
        self.retries = chosen.retries
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self.stats = HttpStats()
        self._session: aiohttp.ClientSession | None = None
        self._random = random.Random()

    async def __aenter__(self) -> HttpClient:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the session and its connection pool (inside the running event loop)."""
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(limit=self.limit, limit_per_host=self.limit_per_host)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.connect_timeout),
            raise_for_status=False,
        )

    async def close(self) -> None:
        """Close the pool; requests still running fail with ``OssUnavailable``."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def closed(self) -> bool:
        return self._session is None

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        expect: Container[int] = SUCCESS,
        idempotent: bool | None = None,
        # Per attempt, which a caller's asyncio.timeout around the whole call cannot express.
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> HttpResponse:
        """Send one request (retrying when that is safe) and read the whole answer.

        ``timeout`` (seconds) replaces the client's total timeout for each attempt. Raises
        ``OssError`` when the final status is not in ``expect`` (any 2xx by default) and
        ``OssUnavailable`` when no answer came, or 502/503/504 came every time.
        """
        session = self._session
        if session is None:
            raise RuntimeError("HttpClient is not open: use `async with HttpClient()` or open()")
        method = method.upper()
        retry = method in IDEMPOTENT if idempotent is None else idempotent
        send_headers = dict(headers or {})
        step = CURRENT.get()
        if step is not None and not any(k.lower() == TRACEPARENT for k in send_headers):
            # README "Traces": the OSS sees the process's trace, under the calling step's span.
            send_headers[TRACEPARENT] = step.traceparent()
        data = None
        if json is not None:
            data = _encode(json)
            send_headers.setdefault("Content-Type", "application/json")
        options: dict[str, Any] = {"data": data, "params": params, "headers": send_headers}
        if timeout is not None:
            options["timeout"] = aiohttp.ClientTimeout(total=timeout)
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                self.stats.retries += 1
            self.stats.requests += 1
            delay: float | None = None
            try:
                answer = await self._send(session, method, url, options)
            except OssUnavailable as exc:
                failure = exc
            else:
                if answer.status in RETRY_STATUSES:
                    reason = f"answered {answer.status}: {answer.text[:_EXCERPT]}"
                    failure = OssUnavailable(method, url, reason, answer.status)
                    delay = self._retry_after(answer.header("Retry-After"))
                elif answer.status in expect:
                    return answer
                else:
                    self.stats.failures += 1
                    raise OssError(method, url, answer.status, answer.body)
            if attempt == attempts:
                break
            if delay is None:
                # Exponential backoff with "equal jitter": spreads the retries of many
                # processes that failed together, never sooner than half the step.
                step = self.backoff * 2 ** (attempt - 1)
                delay = step / 2 + self._random.uniform(0, step / 2)
            # At info: a retry is the first sign of a struggling OSS, and an operator should
            # see it without turning on debug logging.
            log.info(
                "retrying %s %s in %.3f s: attempt %d of %d failed status=%s (%s)",
                method,
                url,
                delay,
                attempt,
                attempts,
                failure.status if failure.status is not None else "none",
                failure.reason,
            )
            await asyncio.sleep(delay)
        self.stats.failures += 1
        raise failure

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        options: dict[str, Any],
    ) -> HttpResponse:
        """One attempt. A request over the host's limit waits inside the connector's queue (a
        small future, no socket) until a connection to that host is free."""
        self.stats.in_flight += 1
        try:
            async with session.request(method, url, **options) as resp:
                body = await resp.read()
                return HttpResponse(method, url, resp.status, dict(resp.headers), body)
        except TimeoutError:  # aiohttp's ServerTimeoutError is one too
            raise OssUnavailable(method, url, "timed out") from None
        except aiohttp.ClientError as exc:
            raise OssUnavailable(method, url, f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.stats.in_flight -= 1

    def _retry_after(self, value: str | None) -> float | None:
        """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
        if value is None:
            return None
        value = value.strip()
        seconds: float
        if value.isdigit():
            seconds = float(value)
        else:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
        return min(max(0.0, seconds), self.max_retry_after)

    async def get_json(self, url: str, **options: Any) -> Any:
        """GET and decode the JSON answer."""
        return (await self.request("GET", url, **options)).json()

    async def post_json(self, url: str, json: Any, **options: Any) -> Any:
        """POST a JSON body and decode the JSON answer (not retried unless idempotent=True)."""
        return (await self.request("POST", url, json=json, **options)).json()

    async def put_json(self, url: str, json: Any, **options: Any) -> Any:
        """PUT a JSON body and decode the JSON answer."""
        return (await self.request("PUT", url, json=json, **options)).json()

    async def delete(self, url: str, **options: Any) -> HttpResponse:
        """DELETE; the whole response, since its body is often empty."""
        return await self.request("DELETE", url, **options)


async def poll(
    check: Callable[[], Awaitable[T | None]],
    *,
    interval: float = 1.0,
    deadline: float = 300.0,
    backoff: float = 1.5,
    max_interval: float = 30.0,
    what: str = "",
) -> T:
    """Call ``check()`` until it returns something other than ``None``, and return that.

    Between checks it sleeps (``asyncio.sleep``: a waiting process is one small task, no
    thread), starting at ``interval`` seconds and growing by ``backoff`` up to
    ``max_interval``. The last check happens at the deadline; then ``PollTimeout`` is raised,
    naming it (and ``what``). Exceptions from ``check`` propagate at once.
    """
    if interval <= 0 or deadline < 0 or backoff < 1 or max_interval <= 0:
        raise ValueError("poll: interval and max_interval > 0, deadline >= 0, backoff >= 1")
    end = time.monotonic() + deadline
    wait = interval
    attempts = 0
    while True:
        result = await check()
        attempts += 1
        if result is not None:
            return result
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise PollTimeout(deadline, attempts, what)
        await asyncio.sleep(min(wait, remaining))
        wait = min(wait * backoff, max_interval)


__all__ = [
    "HttpClient",
    "HttpError",
    "HttpResponse",
    "HttpStats",
    "IDEMPOTENT",
    "OssError",
    "OssUnavailable",
    "PollTimeout",
    "poll",
]
