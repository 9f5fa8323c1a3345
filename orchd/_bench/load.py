"""`orchd bench` scenarios that need another process: P4 (OSS polling) and P5 (recovery).

The fake OSS runs as its own process so that neither the engine nor the baseline client shares
its event loop; the recovery scenario SIGKILLs a real engine process with work in flight.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import aiohttp

from orchd.dsl import State, done, init, step, workflow
from orchd.engine import Engine
from orchd.http import HttpClient, poll
from orchd.model import Target

#: Requests each polling process makes, the pause between them (0: flat out), and the
#: connection limits both sides share.
POLL_ROUNDS = 5
LIMIT = 500


@step("poll the oss")
async def _poll_the_oss(oss: str, http: HttpClient, interval: float = 0.0) -> State:
    polls = 0

    async def check() -> int | None:
        nonlocal polls
        await http.get_json(f"{oss}/ping")
        polls += 1
        return polls if polls == POLL_ROUNDS else None

    if interval:
        await poll(check, interval=interval, backoff=1.0)
    else:
        while await check() is None:
            pass
    return {"polled": polls}


@workflow("Benchmark: polls the fake OSS", target=Target.SYSTEM)
def bench_oss_poll():  # type: ignore[no-untyped-def]
    return init >> _poll_the_oss >> done


def _slow_step(n: int) -> Any:
    @step(f"slow {n}")
    async def slow() -> State:
        await asyncio.sleep(0.2)
        return {f"s{n}": n}

    return slow


_SLOW = [_slow_step(n) for n in range(4)]


@workflow("Benchmark: four slow steps", target=Target.SYSTEM)
def bench_slow_steps():  # type: ignore[no-untyped-def]
    return init >> _SLOW[0] >> _SLOW[1] >> _SLOW[2] >> _SLOW[3] >> done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _FakeOssProcess:
    def __init__(self, latency: str) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchd.testing.fakeoss", "--port", str(self.port),
             "--latency", latency],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"fake OSS did not start: {line!r}")
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=10)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _baseline(url: str, processes: int, interval: float) -> float:
    """A plain aiohttp loop doing the same requests: requests per second."""
    connector = aiohttp.TCPConnector(limit=LIMIT, limit_per_host=LIMIT)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            for n in range(POLL_ROUNDS):
                if n and interval:
                    await asyncio.sleep(interval)
                async with session.get(f"{url}/ping") as resp:
                    await resp.json()  # a poller reads the answer, as the orchd step does

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(processes)))
        return processes * POLL_ROUNDS / (time.perf_counter() - started)


async def _through_orchd(
    directory: str, url: str, processes: int, interval: float
) -> dict[str, float]:
    http = HttpClient(limit=LIMIT, limit_per_host=LIMIT)
    await http.open()
    engine = Engine(
        database=os.path.join(directory, f"p4-{time.time_ns()}.db"),
        workflows=["orchd._bench.load"],
        resources={HttpClient: http},
    )
    await engine.open()
    try:
        finished = 0
        everyone = asyncio.Event()

        async def watch() -> None:
            nonlocal finished
            async for event in engine.listen():
                if event.kind == "process" and event.status not in ("created", "running"):
                    finished += 1
                    if finished == processes:
                        everyone.set()
                        return

        watcher = asyncio.create_task(watch())
        cpu, started = _cpu(), time.perf_counter()
        for chunk in range(0, processes, 1000):
            n = min(1000, processes - chunk)
            await asyncio.gather(
                *(
                    engine.start("bench_oss_poll", {"oss": url, "interval": interval})
                    for _ in range(n)
                )
            )
        peak_actors = engine.stats().actors
        await everyone.wait()
        elapsed = time.perf_counter() - started
        cpu_s = _cpu() - cpu
        await watcher
        counts = await engine.counts()
        if counts["completed"] != processes:
            raise RuntimeError(f"P4: not every process completed: {counts}")
        return {
            "requests_per_s": processes * POLL_ROUNDS / elapsed,
            "cpu_s": cpu_s,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_actors": peak_actors,
        }
    finally:
        await engine.close()
        await http.close()


def p4_polling(
    directory: str, processes: int, interval: float, runs: int = 1, latency: str = "20ms"
) -> list[dict[str, float]]:
    """orchd processes polling the fake OSS against a plain client loop, same server: ``runs``
    pairs, each the plain loop and then orchd, in turns.

    With an ``interval`` each process polls as a real one does (check, wait, check again);
    with 0 both sides send flat out, which measures CPU per request instead. A first pass of
    the plain loop is thrown away: the first 10,000 clients in a fresh interpreter ran at about
    two thirds of the rate of the next (its heap grows to their size once), which had made the
    baseline look slow beside orchd.
    """
    oss = _FakeOssProcess(latency)
    try:
        asyncio.run(_baseline(oss.url, processes, 0.0))
        results = []
        for _ in range(runs):
            baseline = asyncio.run(_baseline(oss.url, processes, interval))
            result = asyncio.run(_through_orchd(directory, oss.url, processes, interval))
            results.append({**result, "baseline_per_s": baseline})
        return results
    finally:
        oss.close()


async def _p5_child(db: str, processes: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Engine(database=db, workflows=["orchd._bench.load"]) as engine:
        for chunk in range(0, processes, 1000):
            n = min(1000, processes - chunk)
            await asyncio.gather(*(engine.start("bench_slow_steps") for _ in range(n)))
        print("started", flush=True)
        await stop.wait()


async def _p5_restart(db: str, processes: int) -> dict[str, float]:
    started = time.perf_counter()
    engine = Engine(database=db, workflows=["orchd._bench.load"])
    resumed: set[str] = set()
    everyone = asyncio.Event()

    async def watch() -> None:
        async for event in engine.listen():
            if event.kind == "step":
                resumed.add(event.process_id)
                if len(resumed) >= in_flight:
                    everyone.set()
                    return

    await engine.open()
    try:
        in_flight = engine.stats().actors
        watcher = asyncio.create_task(watch())
        await everyone.wait()
        resumed_after = time.perf_counter() - started
        watcher.cancel()
        pids, cursor = [], None
        while True:
            page = await engine.list_processes(limit=500, cursor=cursor)
            pids += [p.id for p in page.items]
            if (cursor := page.next_cursor) is None:
                break
        statuses = [(await engine.wait(pid)).status for pid in pids]
        return {
            "in_flight": in_flight,
            "resumed_s": resumed_after,
            "completed": sum(s == "completed" for s in statuses),
            "total": len(pids),
        }
    finally:
        await engine.close()


def p5_recovery(directory: str, processes: int) -> dict[str, float]:
    """SIGKILL an engine with ``processes`` in flight; restart; time until all move again.

    The baseline is the same restart after an orderly stop (SIGTERM: the steps running finish
    and commit, the rest wait in the database), so the figure beside it is what the crash costs.
    """
    killed = _p5_restart_after(directory, "p5-kill.db", processes, signal.SIGKILL)
    stopped = _p5_restart_after(directory, "p5-stop.db", processes, signal.SIGTERM)
    return {
        **killed,
        "stopped_in_flight": stopped["in_flight"],
        "stopped_resumed_s": stopped["resumed_s"],
    }


def _p5_restart_after(
    directory: str, name: str, processes: int, how: signal.Signals
) -> dict[str, float]:
    db = os.path.join(directory, name)
    child = subprocess.Popen(
        [sys.executable, "-m", "orchd._bench.run", "--p5-child", db, str(processes)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    if child.stdout.readline().strip() != "started":
        raise RuntimeError("P5: the engine process did not start its processes")
    time.sleep(0.3)
    child.send_signal(how)
    child.communicate()
    result = asyncio.run(_p5_restart(db, processes))
    if result["completed"] != processes:
        raise RuntimeError(f"P5: {result['completed']} of {processes} processes completed")
    return result


def child_main(argv: list[str]) -> int:
    asyncio.run(_p5_child(argv[0], int(argv[1])))
    return 0
