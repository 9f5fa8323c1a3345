"""`orchd bench` scenarios through a real daemon: P6 (API latency under load), P7 (starts/s).

The daemon is ``orchd serve`` in its own process, on a temporary database and socket, with the
benchmark workflows; the load comes from an aiohttp client over the Unix socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable
from typing import Any

import aiohttp

#: Concurrent API clients of the load generator.
CLIENTS = 100

#: Requests the P6 prober sends even when the load ends before it got going: on a loaded
#: 2-core machine its first request can come after the load is over (issue #26).
MIN_PROBES = 50


class _Daemon:
    def __init__(self, directory: str, name: str) -> None:
        home = os.path.join(directory, name)
        os.makedirs(home, exist_ok=True)
        self.socket = os.path.join(home, "orchd.sock")
        config = os.path.join(home, "orchd.toml")
        with open(config, "w") as f:
            f.write(
                f'database = "{os.path.join(home, "orchd.db")}"\n'
                f'socket = "{self.socket}"\n'
                'workflows = ["orchd._bench.run"]\nlog_level = "warning"\n'
            )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchd", "serve", "--config", config],
            stderr=subprocess.DEVNULL,
        )

    async def __aenter__(self) -> aiohttp.ClientSession:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.socket, limit=CLIENTS),
            base_url="http://orchd",
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                async with self.session.get("/api/health") as resp:
                    if resp.status == 200:
                        return self.session
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the benchmark daemon did not start")
            await asyncio.sleep(0.1)

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


async def _start_many(
    session: aiohttp.ClientSession, workflow: str, count: int, expect: int = 201
) -> list[str]:
    """``count`` starts from CLIENTS clients at once; the new ids (none when ``expect`` is
    not 201: a refusal's answer is read whole all the same)."""
    queue = iter(range(count))
    ids: list[str] = []

    async def worker() -> None:
        for _ in queue:
            async with session.post(f"/api/processes/{workflow}", json={}) as resp:
                if resp.status != expect:
                    raise RuntimeError(f"start answered {resp.status}: {await resp.text()}")
                answer = await resp.json(content_type=None)
                if expect == 201:
                    ids.append(answer["id"])

    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return ids


async def _p7(directory: str, count: int) -> dict[str, float]:
    async with _Daemon(directory, "p7") as session:
        await _start_many(session, "bench_suspend", 200)  # warm up
        started = time.perf_counter()
        await _start_many(session, "bench_suspend", count)
        starts = count / (time.perf_counter() - started)
        # The baseline: the same requests, refused (404) before the engine does anything.
        started = time.perf_counter()
        await _start_many(session, "no_such_workflow", count, expect=404)
        refused = count / (time.perf_counter() - started)
        return {"starts_per_s": starts, "refused_per_s": refused}


def p7_starts(directory: str, count: int) -> dict[str, float]:
    """Processes started per second through the API over the Unix socket, beside the rate of
    the same requests refused for an unknown workflow (the API's own cost)."""
    return asyncio.run(_p7(directory, count))


async def _probe(socket_path: str, pid: str, during: Awaitable[Any]) -> list[float]:
    """GET latencies of ``pid`` while ``during`` runs. The prober is a process of its own: in
    this one, the load generator's own event loop would delay its requests and blame the
    daemon for it."""
    prober = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchd._bench.run", "--p6-probe", socket_path, pid,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(0.2)
    await during
    out, _ = await prober.communicate(b"")
    latencies: list[float] = json.loads(out) if out.strip() else []
    return latencies


async def _p6(directory: str, processes: int, run: int) -> dict[str, Any]:
    async with _Daemon(directory, f"p6-{run}") as session:
        probe = (await _start_many(session, "bench_suspend", 1))[0]
        socket_path = session.connector.path  # type: ignore[union-attr]
        # The baseline: the same request to the same daemon with nothing else to do.
        idle = await _probe(socket_path, probe, asyncio.sleep(1.0))
        latencies = await _probe(
            socket_path, probe, _start_many(session, "bench_ten_steps", processes)
        )
        walls = []
        for _ in range(5):
            t = time.perf_counter()
            await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "orchd", "ps", "--socket", socket_path],
                check=True,
                capture_output=True,
            )
            walls.append(time.perf_counter() - t)
        return {
            "p99_ms": quantile_ms(latencies, 0.99),
            "median_ms": quantile_ms(latencies, 0.5),
            "samples": len(latencies),
            "idle_p99_ms": quantile_ms(idle, 0.99),
            "ps_ms": quantile_ms(walls, 0.5),
        }


def quantile_ms(seconds: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``seconds`` in milliseconds; None when there is no sample."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    if q == 0.5:
        return statistics.median(ordered) * 1000
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def probe_main(socket_path: str, pid: str) -> int:
    """GET one process until stdin closes (at least MIN_PROBES times); print the latencies."""
    from orchd.client import UnixHTTPConnection

    latencies: list[float] = []
    while len(latencies) < MIN_PROBES or not select.select([sys.stdin], [], [], 0)[0]:
        conn = UnixHTTPConnection(socket_path, timeout=10)
        started = time.perf_counter()
        conn.request("GET", f"/api/processes/{pid}")
        conn.getresponse().read()
        latencies.append(time.perf_counter() - started)
        conn.close()
    print(json.dumps(latencies))
    return 0


def p6_latency(directory: str, processes: int, run: int = 0) -> dict[str, Any]:
    """GET latency of one process while ``processes`` ten-step processes start and run (a
    daemon and database of its own for each ``run``)."""
    return asyncio.run(_p6(directory, processes, run))
