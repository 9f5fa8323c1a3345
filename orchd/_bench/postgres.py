"""`orchd bench --postgres URL`: the P1 figure on PostgreSQL and throughput with 1, 2, 3 nodes.

Every figure is measured against the same server in the same run: P1 against the raw rate of
single-row commits (each its own durable transaction, as a naive writer would do per step), and
several nodes against one. The run uses a database of its own, created on the server the URL
names and dropped at the end. Nodes are separate processes (``--pg-node``), as daemons are.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import asyncpg

from orchd.engine import Engine

#: The table of the raw single-row commits every PostgreSQL figure is compared with.
RAW_TABLE = "CREATE TABLE IF NOT EXISTS raw_t (id BIGSERIAL PRIMARY KEY, v BYTEA)"


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class Database:
    """A throw-away database on the server of ``url`` (created on enter, dropped on exit)."""

    def __init__(self, url: str) -> None:
        self.server = url
        self.name = f"orchd_bench_{secrets.token_hex(4)}"
        base = url.split("?", 1)[0].rsplit("/", 1)[0]
        self.url = f"{base}/{self.name}"

    def __enter__(self) -> Database:
        asyncio.run(_admin(self.server, f'CREATE DATABASE "{self.name}"'))
        # Named, so a run can tell its own database from other runs' on a shared server.
        print(f"PostgreSQL rows in database {self.name} (dropped at the end)", file=sys.stderr)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run(_admin(self.server, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))

    def schema(self, name: str) -> str:
        asyncio.run(_admin(self.url, f"CREATE SCHEMA {name}"))
        return f"{self.url}?search_path={name}"


async def raw_commit_rate(url: str, count: int) -> float:
    """Single-row commits per second, each its own transaction (synchronous_commit on)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(RAW_TABLE)
        payload = b"x" * 200
        started = time.perf_counter()
        for _ in range(count):
            await conn.execute("INSERT INTO raw_t (v) VALUES ($1)", payload)
        return count / (time.perf_counter() - started)
    finally:
        await conn.close()


async def _run(engine: Engine, count: int) -> float:
    """Start ``count`` ten-step processes at once; seconds until every one completed (seen on
    the event stream, which on a node shows every node's events: only ours are counted)."""
    started = time.perf_counter()
    after = engine.last_event_id
    ours: set[str] = set()
    completed: set[str] = set()
    finished = asyncio.Event()

    async def watch() -> None:
        async for event in engine.listen(after, buffer=10**7):
            if event.kind == "process" and event.status == "completed":
                completed.add(event.process_id)
                if len(ours) == count and ours <= completed:
                    finished.set()
                    return

    watcher = asyncio.create_task(watch())
    ours.update(await asyncio.gather(*(engine.start("bench_ten_steps") for _ in range(count))))
    if not ours <= completed:
        await finished.wait()
    elapsed = time.perf_counter() - started
    watcher.cancel()
    return elapsed


async def p1(url: str, count: int) -> dict[str, float]:
    engine = Engine(database=url, workflows=["orchd._bench.run"])
    await engine.open()
    try:
        elapsed = await _run(engine, count)
        store = engine.stats().store
        return {
            "steps_per_s": count * 10 / elapsed,
            "mean_batch": store.committed / max(1, store.batches),
        }
    finally:
        await engine.close()


async def sequential(database: str, rounds: int, raw_url: str | None = None) -> dict[str, float]:
    """One ten-step process after another on ``database`` (medians of ``rounds``): seconds
    from its start's commit to its last one, and the CPU this process spent on it, start
    included; with ``raw_url``, ten single-row commits on that server timed right after each
    process (a server's speed drifts over a run, so the baseline is taken in the same moments).
    A few processes run first, so connections and caches are warm."""
    engine = Engine(database=database, workflows=["orchd._bench.run"])
    await engine.open()
    conn = await asyncpg.connect(raw_url) if raw_url else None
    try:
        if conn is not None:
            await conn.execute(RAW_TABLE)
        for _ in range(5):
            await engine.wait(await engine.start("bench_ten_steps"))
        times, cpus, raws = [], [], []
        for _ in range(rounds):
            cpu = time.process_time()
            pid = await engine.start("bench_ten_steps")
            started = time.perf_counter()
            await engine.wait(pid)
            times.append(time.perf_counter() - started)
            cpus.append(time.process_time() - cpu)
            if conn is not None:
                began = time.perf_counter()
                for _ in range(10):
                    await conn.execute("INSERT INTO raw_t (v) VALUES ($1)", b"x" * 200)
                raws.append(time.perf_counter() - began)
        result = {"process_s": statistics.median(times), "cpu_s": statistics.median(cpus)}
        if raws:
            result["raw10_s"] = statistics.median(raws)
        return result
    finally:
        if conn is not None:
            await conn.close()
        await engine.close()


async def _node(url: str, node: str, count: int, go: float) -> dict[str, float]:
    engine = Engine(database=url, workflows=["orchd._bench.run"], node_id=node)
    await engine.open()
    try:
        await asyncio.sleep(max(0.0, go - time.time()))
        began = time.time()
        await _run(engine, count)
        return {"began": began, "ended": time.time()}
    finally:
        await engine.close()


def node_main(argv: list[str]) -> int:
    """``--pg-node URL NODE COUNT GO``: one node of the multi-node figure (a subprocess)."""
    url, node, count, go = argv
    result = asyncio.run(_node(url, node, int(count), float(go)))
    print(json.dumps(result), flush=True)
    return 0


def nodes_throughput(url: str, nodes: int, per_node: int) -> float:
    """Steps per second of ``nodes`` node processes, each running ``per_node`` processes."""
    go = time.time() + 3.0  # every node has opened by then
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchd",
                "bench",
                "--pg-node",
                url,
                f"n{i}",
                str(per_node),
                str(go),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(nodes)
    ]
    results: list[dict[str, Any]] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"a bench node exited with {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    elapsed = float(max(r["ended"] for r in results) - min(r["began"] for r in results))
    return nodes * per_node * 10 / elapsed


def rows(url: str, *, quick: bool, row: Any) -> None:
    """Add the PostgreSQL rows to the bench table (``row(scenario, measured, baseline, goal)``)."""
    count = 200 if quick else 2000
    with Database(url) as db:
        raw = asyncio.run(raw_commit_rate(db.url, 300 if quick else 2000))
        row("PG raw commit (1 row, own transaction)", f"{raw:,.0f}/s")
        p1_result = asyncio.run(p1(db.schema("p1"), count))
        rate = p1_result["steps_per_s"]
        row(
            f"PG P1 {count:,} x 10-step processes",
            f"{rate:,.0f} steps/s ({rate / raw:.1f}x raw, {p1_result['mean_batch']:.0f}/commit)",
            f"{raw:,.0f} commits/s",
            ">= 3x raw, on a new database",
        )
        rounds = 10 if quick else 30
        pg = asyncio.run(sequential(db.schema("p2"), rounds, raw_url=db.url))
        row(
            "PG P2 one 10-step process",
            f"{pg['process_s'] * 1000:.1f} ms ({pg['process_s'] / pg['raw10_s']:.2f}x)",
            f"{pg['raw10_s'] * 1000:.1f} ms (10 raw commits, interleaved)",
            "<= 2.0x",
        )
        with tempfile.TemporaryDirectory(prefix="orchd-bench-") as directory:
            lite = asyncio.run(sequential(os.path.join(directory, "p2.db"), rounds))
        row(
            "PG CPU per 10-step process",
            f"{pg['cpu_s'] * 1000:.1f} ms ({pg['cpu_s'] / lite['cpu_s']:.2f}x SQLite)",
            f"{lite['cpu_s'] * 1000:.1f} ms on SQLite",
            "<= 1.5x SQLite",
        )
        one = 0.0
        for n in (1, 2, 3):
            rate = nodes_throughput(db.schema(f"nodes{n}"), n, count // n)
            one = one or rate
            row(
                f"PG {n} node{'s' if n > 1 else ''}, {count:,} x 10 steps",
                f"{rate:,.0f} steps/s ({rate / one:.2f}x one node)",
                f"{one:,.0f} steps/s (one node)",
                f"on {os.cpu_count()} cores",
            )
