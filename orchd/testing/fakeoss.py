"""A fake OSS (inventory and provisioning system) for demos, tests and benchmarks.

``orchd fake-oss --port 8471 --latency 200ms --error-rate 0.05`` (or ``python -m
orchd.testing.fakeoss``) serves a small JSON API that behaves like a slow, sometimes overloaded
provisioning system, so the example workflows have something real to poll:

- ``POST /nodes`` ``{name, customer_id, ...}`` -> 201, status ``provisioning``; it becomes
  ``active`` after ``--provision-time``. An ``Idempotency-Key`` header makes a repeated POST
  answer the node the first one created (200), so a client may safely retry it.
- ``GET /nodes``, ``GET /nodes/{id}``, ``PUT /nodes/{id}`` (fields, and ``status`` to simulate
  a fault), ``DELETE /nodes/{id}`` -> 202, ``deleting``, then 404 after ``--provision-time``.
- ``POST /jobs`` ``{callback_url, ...}`` -> 202; after ``--job-time`` the fake OSS POSTs
  ``{"result": "ok", "job_id": ...}`` to ``callback_url`` (with a bearer token when
  ``--callback-token-file`` is given); ``GET /jobs/{id}`` shows how that went, and a callback
  it could not deliver is logged as a warning. With ``--callback-socket PATH`` callbacks go
  over that Unix socket (the daemon's control socket, for a daemon without a TCP listener):
  the URL's path is posted to, its host and port are not used.
- ``GET /ping`` (cheap, for benchmarks), ``GET /stats`` and ``GET /health``.

Every request but ``/health`` and ``/stats`` is delayed by ``--latency`` (with +-10 % jitter)
and answered ``503`` with ``Retry-After: 0`` on a seeded random fraction (``--error-rate``),
before it changes anything. State lives in memory only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from orchd import logs

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_QUIET = frozenset({"/health", "/stats"})
#: Node fields a client may not set: the OSS owns them.
_OWNED = frozenset({"id", "created_at", "updated_at"})
STATUSES = frozenset({"provisioning", "active", "updating", "error", "deleting"})

log = logging.getLogger("orchd.fakeoss")


def parse_duration(text: str) -> float:
    """Seconds from ``"200ms"``, ``"1.5s"`` or a bare number of seconds."""
    value = text.strip().lower()
    scale = 1.0
    if value.endswith("ms"):
        value, scale = value[:-2], 0.001
    elif value.endswith("s"):
        value = value[:-1]
    try:
        seconds = float(value) * scale
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 200ms or 1.5s)") from None
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"not a duration: {text!r} (must be >= 0)")
    return seconds


@dataclass
class FakeStats:
    requests: int = 0
    injected_errors: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    callbacks_sent: int = 0
    callbacks_failed: int = 0


class FakeOss:
    """The fake OSS server. ``async with FakeOss(port=0) as oss:`` then use ``oss.url``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        error_rate: float = 0.0,
        seed: int | None = None,
        provision_time: float = 1.0,
        job_time: float = 0.5,
        callback_token: str | None = None,
        callback_socket: str | None = None,
    ) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        self.host = host
        self.port = port
        self.latency = latency
        self.error_rate = error_rate
        self.provision_time = provision_time
        self.job_time = job_time
        self.callback_token = callback_token
        #: Post callbacks over this Unix socket instead of to the URL's host.
        self.callback_socket = callback_socket
        self.stats = FakeStats()
        #: Nodes by id, as the API shows them (statuses are brought up to date on access).
        self.nodes: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self._due: dict[str, float] = {}  # node id -> when its pending transition happens
        self._keys: dict[str, str] = {}  # idempotency key -> node or job id
        self._fail_next: list[int] = []
        # Two generators, so latency jitter does not shift which requests get errors.
        self._errors = random.Random(seed)
        self._jitter = random.Random(None if seed is None else seed + 1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        """Answer the next ``count`` requests (but /health, /stats) with ``status``."""
        self._fail_next.extend([status] * count)

    def set_status(self, node_id: str, status: str) -> None:
        """Force a node's status (e.g. ``error``), as a fault in the network would."""
        self.nodes[node_id]["status"] = status
        self._due.pop(node_id, None)

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> FakeOss:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.add_routes(
            [
                web.get("/health", self._health),
                web.get("/stats", self._stats),
                web.get("/ping", self._ping),
                web.get("/nodes", self._list_nodes),
                web.post("/nodes", self._create_node),
                web.get("/nodes/{id}", self._get_node),
                web.put("/nodes/{id}", self._update_node),
                web.delete("/nodes/{id}", self._delete_node),
                web.post("/jobs", self._create_job),
                web.get("/jobs/{id}", self._get_job),
            ]
        )
        return app

    async def start(self) -> None:
        """Bind and serve; with ``port=0`` the chosen port is in ``self.port`` afterwards."""
        connector = None
        if self.callback_socket is not None:
            connector = aiohttp.UnixConnector(path=self.callback_socket)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=10)
        )
        # Short: a request still sleeping in the injected latency need not delay the exit.
        runner = web.AppRunner(
            self.app(), handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            await self._session.close()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- behaviour shared by every route --------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _QUIET:
            return await handler(request)
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency * self._jitter.uniform(0.9, 1.1))
            status = self._injected()
            if status is not None:
                stats.injected_errors += 1
                return web.json_response(
                    {"error": "injected failure, try again"},
                    status=status,
                    headers={"Retry-After": "0"},
                )
            return await handler(request)
        finally:
            stats.in_flight -= 1

    def _injected(self) -> int | None:
        if self._fail_next:
            return self._fail_next.pop(0)
        if self.error_rate > 0 and self._errors.random() < self.error_rate:
            return 503
        return None

    # -- routes ---------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "nodes": len(self.nodes)})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(vars(self.stats))

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({"pong": True})

    async def _list_nodes(self, request: web.Request) -> web.Response:
        wanted = request.query.get("status")
        items = [self._current(node_id) for node_id in list(self.nodes)]
        nodes = [n for n in items if n is not None and (wanted is None or n["status"] == wanted)]
        return web.json_response({"items": nodes, "count": len(nodes)})

    async def _create_node(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        for name in ("name", "customer_id"):
            if not isinstance(body.get(name), str) or not body[name]:
                return _error(400, f"{name!r} is required (a non-empty string)")
        key = request.headers.get("Idempotency-Key")
        if key is not None and key in self._keys:
            node = self._current(self._keys[key])
            if node is not None:
                return web.json_response(node, status=200)
        now = _now()
        node_id = str(uuid.uuid4())
        node = {k: v for k, v in body.items() if k not in _OWNED}
        node.update(id=node_id, status="provisioning", created_at=now, updated_at=now)
        self.nodes[node_id] = node
        self._due[node_id] = time.monotonic() + self.provision_time
        if key is not None:
            self._keys[key] = node_id
        return web.json_response(node, status=201, headers={"Location": f"/nodes/{node_id}"})

    async def _get_node(self, request: web.Request) -> web.Response:
        node = self._current(request.match_info["id"])
        if node is None:
            return _error(404, "no such node")
        return web.json_response(node)

    async def _update_node(self, request: web.Request) -> web.Response:
        node_id = request.match_info["id"]
        node = self._current(node_id)
        if node is None or node["status"] == "deleting":
            return _error(404, "no such node")
        body = await _json_object(request)
        status = body.get("status")
        if status is not None and status not in STATUSES:
            return _error(400, f"status must be one of {', '.join(sorted(STATUSES))}")
        node.update({k: v for k, v in body.items() if k not in _OWNED})
        node["updated_at"] = _now()
        if status is not None:
            self._due.pop(node_id, None)
        return web.json_response(node)

    async def _delete_node(self, request: web.Request) -> web.Response:
        node_id = request.match_info["id"]
        node = self._current(node_id)
        if node is None:
            return _error(404, "no such node")
        if node["status"] != "deleting":  # a repeated DELETE does not restart the clock
            node.update(status="deleting", updated_at=_now())
            self._due[node_id] = time.monotonic() + self.provision_time
        return web.json_response(node, status=202)

    def _current(self, node_id: str) -> dict[str, Any] | None:
        """The node with its due transition applied; None once it is gone."""
        node = self.nodes.get(node_id)
        if node is None:
            return None
        due = self._due.get(node_id)
        if due is not None and time.monotonic() >= due:
            del self._due[node_id]
            if node["status"] == "deleting":
                del self.nodes[node_id]
                return None
            node.update(status="active", updated_at=_now())
        return node

    async def _create_job(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        callback_url = body.get("callback_url")
        if not isinstance(callback_url, str) or not callback_url.startswith(
            ("http://", "https://")
        ):
            return _error(400, "'callback_url' is required (an http(s) URL)")
        key = request.headers.get("Idempotency-Key")
        if key is not None and key in self._keys and self._keys[key] in self.jobs:
            return web.json_response(self.jobs[self._keys[key]], status=200)
        job_id = str(uuid.uuid4())
        job = {"id": job_id, "status": "accepted", "request": body}
        self.jobs[job_id] = job
        if key is not None:
            self._keys[key] = job_id
        task = asyncio.get_running_loop().create_task(self._call_back(job, callback_url))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(job, status=202)

    async def _get_job(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return _error(404, "no such job")
        return web.json_response(job)

    async def _call_back(self, job: dict[str, Any], url: str) -> None:
        """Post the job's result to its callback URL, a few times if the receiver fails."""
        await asyncio.sleep(self.job_time)
        headers = {"Authorization": f"Bearer {self.callback_token}"} if self.callback_token else {}
        payload = {"result": "ok", "job_id": job["id"]}
        last = ""
        session = self._session
        assert session is not None  # set by start(), which every route runs after
        for attempt in range(3):
            if attempt:
                await asyncio.sleep(0.5 * attempt)
            try:
                async with session.post(url, json=payload, headers=headers) as resp:
                    if resp.status < 300:
                        job["status"] = "called_back"
                        self.stats.callbacks_sent += 1
                        return
                    last = f"callback answered {resp.status}: {(await resp.text())[:200]}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"callback failed: {type(exc).__name__}: {exc}"
        job.update(status="callback_failed", error=last)
        self.stats.callbacks_failed += 1
        # The host, not the URL: its path holds the callback token, a capability.
        to = self.callback_socket if self.callback_socket is not None else urlsplit(url).netloc
        log.warning("callback not delivered job=%s to=%s: %s", job["id"], to, last)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        error = '{"error": "the body must be a JSON object"}'
        raise web.HTTPBadRequest(text=error, content_type="application/json")
    return body


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# -- the command line -------------------------------------------------------------------------


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    with contextlib.suppress(ValueError):
        value = float(text)
        if 0.0 <= value <= 1.0:
            return value
    raise argparse.ArgumentTypeError(f"not a rate between 0 and 1: {text!r}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchd fake-oss",
        description="Serve a fake OSS/inventory/provisioning API (for demos, tests, benchmarks).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8471, help="port (8471; 0 picks one)")
    parser.add_argument("--latency", type=_duration, default=0.0, help="per request, e.g. 200ms")
    parser.add_argument("--error-rate", type=_rate, default=0.0, help="fraction answered 503")
    parser.add_argument("--seed", type=int, default=None, help="seed for injected errors")
    parser.add_argument(
        "--provision-time", type=_duration, default=1.0, help="until active / gone (1s)"
    )
    parser.add_argument("--job-time", type=_duration, default=0.5, help="until a job calls back")
    parser.add_argument("--callback-token-file", type=Path, help="bearer token for callbacks")
    parser.add_argument(
        "--callback-socket",
        metavar="PATH",
        help="post callbacks over this Unix socket (e.g. the daemon's orchd.sock)",
    )
    return parser


async def _serve(oss: FakeOss) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await oss.start()
        print(f"fake-oss listening on {oss.url}", flush=True)
        await stop.wait()
    finally:
        await oss.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    """``orchd fake-oss [options]``: serve until SIGINT or SIGTERM, then exit 0."""
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    token = None
    if args.callback_token_file is not None:
        try:
            token = args.callback_token_file.read_text().strip()
        except OSError as exc:
            print(f"orchd fake-oss: --callback-token-file: {exc}", file=sys.stderr)
            return 2
    options = {k: v for k, v in vars(args).items() if k != "callback_token_file"}
    oss = FakeOss(**options, callback_token=token)
    logs.setup("info")
    try:
        asyncio.run(_serve(oss))
    except OSError as exc:
        print(f"orchd fake-oss: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
