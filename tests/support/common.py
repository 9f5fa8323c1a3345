"""Paths and small helpers shared by test modules."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchd.client import Event, parse_sse

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestClient

    from orchd.engine import Engine
    from orchd.model import Process

TESTS_DIR = Path(__file__).resolve().parent.parent
WF_DIR = TESTS_DIR / "wf"
ROOT = TESTS_DIR.parent

#: The ``engine_factory`` fixture (tests/conftest.py): ``await engine_factory(workflows, ...)``.
EngineFactory = Callable[..., Awaitable["Engine"]]
#: The ``database_factory`` fixture: ``await database_factory(name)`` -> a ``database`` setting.
DatabaseFactory = Callable[..., Awaitable[str]]
#: The ``open_engine`` fixture: ``await open_engine(module)`` -> an Engine with that code.
Open = Callable[..., Awaitable["Engine"]]


def engine_fixture(*workflows: str, **settings: Any) -> Any:
    """A test module's ``engine`` fixture in one line: ``engine = engine_fixture("engine_flows",
    retry_delay=0.05)`` gives each test an open Engine (``engine_factory``'s) with those
    workflow modules and EngineSettings, its steps steered by ``step_resources`` (the test's
    ``gate``, ``failures`` and ``calls``)."""
    import pytest

    @pytest.fixture
    async def engine(engine_factory: EngineFactory, step_resources: dict[type, object]) -> Engine:
        return await engine_factory(list(workflows), resources=step_resources, **settings)

    return engine


async def settle(engine: Engine, pid: str, *statuses: str) -> Process:
    """Wait (10 s at most) until the process is in one of ``statuses``, as committed."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        process = await engine.get(pid)
        if process.status in statuses:
            return process
        assert asyncio.get_running_loop().time() < deadline, (process.status, process.error)
        await asyncio.sleep(0.01)


async def wait_until(
    check: Callable[[], Any], what: str, within: float = 10.0, every: float = 0.01
) -> Any:
    """Poll ``check()`` (a function or a coroutine function) every ``every`` seconds (0: at
    each turn of the loop, to see a state that lasts a turn or two) until it answers
    something true, and return that: a test waits for the event, not for a time. Fails
    naming ``what`` after ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {within} s"
        await asyncio.sleep(every)


def block_until(
    check: Callable[[], Any], what: str, within: float = 10.0, every: float = 0.01
) -> Any:
    """``wait_until`` for a test that blocks its thread (daemons, sockets, files): poll
    ``check()`` every ``every`` seconds until it answers something true, and return that.
    Fails naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        time.sleep(every)


def parse_logfmt(line: str) -> dict[str, str]:
    """A strict logfmt reader: ``key=value`` pairs split by single spaces, a value bare (no
    space, quote, ``=`` or backslash) or double-quoted with the escapes logfmt parsers take,
    JSON's (``\\n``, ``\\uXXXX``, surrogate pairs; never ``\\xNN``). Raises ValueError on
    anything else, so a test fails on a line a log shipper would choke on."""
    fields: dict[str, str] = {}
    i, n = 0, len(line)
    escapes = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "\\": "\\"}
    escapes["/"] = "/"
    while i < n:
        eq = line.find("=", i)
        key = line[i:eq]
        if eq < 0 or not key or not all(c.isalnum() or c in "_.-" for c in key):
            raise ValueError(f"no key at {i}: {line!r}")
        i = eq + 1
        if i < n and line[i] == '"':
            i += 1
            value = []
            while True:
                if i >= n:
                    raise ValueError(f"unterminated quote: {line!r}")
                c = line[i]
                if c == "\\":
                    nxt = line[i + 1 : i + 2]
                    if nxt == "u":
                        digits = line[i + 2 : i + 6]
                        if len(digits) != 4 or not all(
                            d in "0123456789abcdefABCDEF" for d in digits
                        ):
                            raise ValueError(f"bad \\u escape at {i}: {line!r}")
                        value.append(chr(int(digits, 16)))
                        i += 6
                        continue
                    if nxt not in escapes:
                        raise ValueError(f"bad escape at {i}: {line!r}")
                    value.append(escapes[nxt])
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                if not c.isprintable():
                    raise ValueError(f"unescaped {c!r} at {i}: {line!r}")
                value.append(c)
                i += 1
            # A surrogate pair (\ud83d\ude00) is one character, as in JSON; a lone one fails.
            fields[key] = "".join(value).encode("utf-16", "surrogatepass").decode("utf-16")
        else:
            end = line.find(" ", i)
            end = n if end < 0 else end
            bare = line[i:end]
            if any(c in bare for c in '"=\\') or not bare or not bare.isprintable():
                raise ValueError(f"bad bare value at {i}: {line!r}")
            fields[key] = bare
            i = end
        if i < n:
            if line[i] != " ":
                raise ValueError(f"no space after a value at {i}: {line!r}")
            i += 1
    return fields


class SseReader:
    """Server-sent events of an aiohttp response (a test client's ``GET /api/events``), read
    with the CLI's own parser, ``orchd.client.parse_sse``, one event at a time."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self, within: float = 5.0) -> Event | None:
        """The next event (``within`` seconds at most), or None once the stream ended."""
        lines: list[bytes] = []
        async with asyncio.timeout(within):
            while line := await self.resp.content.readline():
                lines.append(line)
                if line.strip(b"\r\n"):
                    continue
                # A blank line ends an event (or a comment, which gives none).
                for event in parse_sse(lines):
                    return event
                lines.clear()
        return None

    async def until(self, pid: str, status: str) -> list[Event]:
        """The events read up to the first that says process ``pid`` is ``status``."""
        seen = []
        while (event := await self.next()) is not None:
            seen.append(event)
            data = event.json()
            if event.event == "process" and (data["process_id"], data["status"]) == (pid, status):
                return seen
        raise AssertionError(f"the stream ended before {pid} became {status}: {seen}")


@contextlib.asynccontextmanager
async def console_client(
    engine: Engine, token: str, label: str = "alice"
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """An aiohttp test client of the control API and console over TCP with ``token``, logged
    in to the console as ``label``."""
    from aiohttp.test_utils import TestClient, TestServer

    from orchd.api.app import create_app

    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_app(engine, token=token))
    )
    await client.start_server()
    try:
        resp = await client.post(
            "/ui/login",
            data={"token": token, "label": label, "next": "/ui/"},
            allow_redirects=False,
        )
        assert resp.status == 303
        yield client
    finally:
        await client.close()
