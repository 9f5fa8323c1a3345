"""`orchd bench`: figures a user can reproduce, each a ratio to a baseline from the same run.

Every scenario runs the real Engine on a real SQLite file in a temporary directory, with
``synchronous=FULL``: every step is durable before the next one starts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from orchd import gcpolicy
from orchd._bench import api as bench_api
from orchd._bench import branches as bench_branches
from orchd._bench import ceiling as bench_ceiling
from orchd._bench import children as bench_children
from orchd._bench import limits as bench_limits
from orchd._bench import load as bench_load
from orchd._bench import postgres as bench_pg
from orchd._bench import products as bench_products
from orchd._bench import retention as bench_retention
from orchd._bench import tracing as bench_tracing
from orchd._bench.fresh import in_fresh_interpreter, report
from orchd.dsl import Form, State, children, done, init, inputstep, step, workflow
from orchd.engine import Engine
from orchd.model import Target

PAYLOAD: dict[str, str] = {}


def _trivial(n: int, *, sync: bool = False) -> Any:
    if sync:

        @step(f"sync step {n}")
        def trivial_sync() -> State:
            return {f"k{n}": n}

        return trivial_sync

    @step(f"step {n}")
    async def trivial() -> State:
        return {f"k{n}": n}

    return trivial


_STEPS = [_trivial(n) for n in range(8)]
_SYNC_STEPS = [_trivial(n, sync=True) for n in range(8)]


def _ten(steps: list[Any]) -> Any:
    flow = init
    for s in steps:
        flow = flow >> s
    return flow >> done


@workflow("Benchmark: ten trivial steps, plain functions", target=Target.SYSTEM)
def bench_ten_sync_steps():  # type: ignore[no-untyped-def]
    return _ten(_SYNC_STEPS)


@workflow("Benchmark: a child of three trivial steps", target=Target.SYSTEM)
def bench_child():  # type: ignore[no-untyped-def]
    return init >> _STEPS[0] >> _STEPS[1] >> _STEPS[2] >> done


@workflow("Benchmark: a parent fanning out to bench_child", target=Target.SYSTEM)
def bench_fan_out():  # type: ignore[no-untyped-def]
    fan = children("fan out", workflow="bench_child", inputs="inputs", max_concurrency=500)
    return init >> fan >> done


@workflow("Benchmark: ten trivial steps", target=Target.SYSTEM)
def bench_ten_steps():  # type: ignore[no-untyped-def]
    return _ten(_STEPS)


def _payload_step(n: int) -> Any:
    @step(f"payload {n}")
    async def payload(blob: str) -> State:
        return {"blob": blob[1:] + blob[0], f"k{n}": n}

    return payload


_PAYLOAD_STEPS = [_payload_step(n) for n in range(8)]


@workflow("Benchmark: ten steps over a large State", target=Target.SYSTEM)
def bench_payload():  # type: ignore[no-untyped-def]
    flow = init
    for s in _PAYLOAD_STEPS:
        flow = flow >> s
    return flow >> done


class _Go(Form):
    go: bool = True


@inputstep("wait for a person")
def _wait_for_person() -> type[Form]:
    return _Go


@workflow("Benchmark: suspends at once", target=Target.SYSTEM)
def bench_suspend():  # type: ignore[no-untyped-def]
    return init >> _wait_for_person >> done


@step("poll slowly")
async def _poll_slowly(rounds: int = 100) -> State:
    # Like a step polling a slow OSS every few seconds: the actor waits, it does not spin.
    for _ in range(rounds):
        await asyncio.sleep(5.0)
    return {}


@workflow("Benchmark: an actor busy in a polling step", target=Target.SYSTEM)
def bench_polling():  # type: ignore[no-untyped-def]
    return init >> _poll_slowly >> done


def rss_mb() -> float:
    """Current resident set size (Linux /proc), in MiB."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def raw_commit_rate(directory: str, count: int = 1000) -> float:
    """Single-row durable commits per second: the floor every figure is compared with."""
    conn = _raw_database(directory)
    elapsed = _raw_commits(conn, count)
    conn.close()
    return count / elapsed


def _raw_database(directory: str) -> sqlite3.Connection:
    conn = sqlite3.connect(os.path.join(directory, "raw.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
    return conn


def _raw_commits(conn: sqlite3.Connection, count: int) -> float:
    """Seconds for ``count`` single-row durable commits, one after another."""
    started = time.perf_counter()
    for _ in range(count):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (v) VALUES (?)", (b"x" * 200,))
        conn.execute("COMMIT")
    return time.perf_counter() - started


async def _engine(directory: str, name: str) -> Engine:
    engine = Engine(database=os.path.join(directory, f"{name}.db"), workflows=["orchd._bench.run"])
    await engine.open()
    return engine


async def _run_all(
    engine: Engine, workflow_name: str, count: int, given: Any = None, steps: int = 10
) -> float:
    """Start ``count`` processes of ``steps`` steps at once; seconds until every one has
    finished."""
    target = count * steps
    finished = asyncio.Event()
    started = time.perf_counter()
    after = engine.last_event_id

    async def watch() -> None:
        steps = 0
        async for event in engine.listen(after):
            steps += event.kind == "step"
            if steps >= target:
                finished.set()
                return

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(engine.start(workflow_name, given) for _ in range(count)))
    await finished.wait()
    elapsed = time.perf_counter() - started
    watcher.cancel()
    return elapsed


async def p1_throughput(
    directory: str, processes: int, workflow: str = "bench_ten_steps"
) -> dict[str, float]:
    engine = await _engine(directory, f"p1-{workflow}-{processes}")
    try:
        elapsed = await _run_all(engine, workflow, processes)
        store = engine.stats().store
        return {
            "steps_per_s": processes * 10 / elapsed,
            "rss_mb": rss_mb(),
            "mean_batch": store.committed / max(1, store.batches),
        }
    finally:
        await engine.close()


async def p8_children(directory: str, count: int) -> dict[str, float]:
    """Seconds until one parent with ``count`` children (500 at a time) completes; and the
    same fan-out as ``count`` independent starts (no parent, no crash safety) for scale."""
    engine = await _engine(directory, f"p8-{count}")
    try:
        started = time.perf_counter()
        pid = await engine.start("bench_fan_out", {"inputs": [{} for _ in range(count)]})
        await bench_children.until_completed(engine, pid)
        fan_out = time.perf_counter() - started
        independent = await _run_all(engine, "bench_child", count, steps=5)
        return {"fan_out_s": fan_out, "independent_s": independent}
    finally:
        await engine.close()


async def sequential_starts(directory: str, count: int) -> float:
    """Starts per second from one client in a loop, each waiting for its durable commit, while
    the started processes (ten async steps) run beside them."""
    engine = await _engine(directory, f"seq-{count}")
    try:
        started = time.perf_counter()
        for _ in range(count):
            await engine.start("bench_ten_steps")
        return count / (time.perf_counter() - started)
    finally:
        await engine.close()


async def p2_latency(directory: str, rounds: int = 30) -> dict[str, float]:
    """Seconds for one ten-step process, from start to its last commit, beside ten raw
    commits timed right after each process on the same disk (medians of ``rounds``): a
    disk's speed drifts over a run, so the baseline is taken in the same moments.

    Both databases are warmed first, until each write-ahead log has been filled once and
    is written over again: a log that still grows costs every fsync a change of the file's
    size, which a daemon that has been up a minute no longer pays."""
    engine = await _engine(directory, "p2")
    conn = _raw_database(directory)
    try:
        times, raws = [], []
        for _ in range(_P2_WARM_UP):
            await engine.wait(await engine.start("bench_ten_steps"))
        _raw_commits(conn, 1100)
        for _ in range(rounds):
            pid = await engine.start("bench_ten_steps")
            started = time.perf_counter()
            await engine.wait(pid)
            times.append(time.perf_counter() - started)
            raws.append(_raw_commits(conn, 10))
        return {"process_s": statistics.median(times), "raw10_s": statistics.median(raws)}
    finally:
        conn.close()
        await engine.close()


#: Processes run before P2's timed ones: a checkpoint writes about seven pages, so 20 ten-step
#: processes fill the 1,000-page log SQLite checkpoints at.
_P2_WARM_UP = 20


async def _fill_suspended(db: str, count: int) -> None:
    async with Engine(database=db, workflows=["orchd._bench.run"]) as engine:
        for chunk in range(0, count, 1000):
            n = min(1000, count - chunk)
            await asyncio.gather(*(engine.start("bench_suspend") for _ in range(n)))
        while engine.stats().actors:  # noqa: ASYNC110 - a benchmark may poll its own engine
            await asyncio.sleep(0.05)


async def _probe(db: str, polling: int) -> dict[str, float]:
    """RSS of an engine opened on ``db``; then per actor with ``polling`` actors busy."""
    base = rss_mb()
    async with Engine(database=db, workflows=["orchd._bench.run"], grace_period=0.1) as engine:
        await asyncio.sleep(0.2)
        opened = rss_mb() - base
        before = rss_mb()
        for chunk in range(0, polling, 1000):
            n = min(1000, polling - chunk)
            await asyncio.gather(*(engine.start("bench_polling") for _ in range(n)))
        await asyncio.sleep(0.5)
        per_actor = (rss_mb() - before) * 1024 / max(1, engine.stats().actors)
        alive = engine.stats().actors
    return {"opened_mb": opened, "per_actor_kb": per_actor, "alive": alive}


async def _bare_tasks(count: int) -> dict[str, float]:
    """The baseline of P3's per-actor figure: RSS per plain asyncio task doing what the
    polling step does (sleep, wake, sleep again), with nothing of orchd around it."""

    async def poll_slowly() -> None:
        for _ in range(100):
            await asyncio.sleep(5.0)

    before = rss_mb()
    tasks = [asyncio.create_task(poll_slowly()) for _ in range(count)]
    await asyncio.sleep(0.5)
    per_task = (rss_mb() - before) * 1024 / max(1, count)
    for task in tasks:
        task.cancel()
    return {"per_task_kb": per_task}


def p3_memory(directory: str, count: int) -> dict[str, float]:
    """Each figure comes from a fresh process, so memory freed earlier cannot hide a cost."""
    full, empty = os.path.join(directory, "p3.db"), os.path.join(directory, "p3-empty.db")
    asyncio.run(_fill_suspended(full, count))
    asyncio.run(_fill_suspended(empty, 0))

    def probe(db: str, polling: int, flag: str = "--probe") -> dict[str, float]:
        return in_fresh_interpreter(flag, db, str(polling))

    with_suspended, without = probe(full, 0), probe(empty, 0)
    polling = probe(empty, count)
    bare = probe(empty, count, "--task-probe")
    return {
        "suspended_mb": with_suspended["opened_mb"] - without["opened_mb"],
        "per_actor_kb": polling["per_actor_kb"],
        "alive": polling["alive"],
        "per_task_kb": bare["per_task_kb"],
    }


async def state_size(directory: str, size: int, processes: int) -> float:
    engine = await _engine(directory, f"state-{size}")
    try:
        blob = "x" * size
        return processes * 10 / await _run_all(engine, "bench_payload", processes, {"blob": blob})
    finally:
        await engine.close()


def _median(runs: int, measure: Callable[[], Awaitable[Any]]) -> Any:
    return _median_of([asyncio.run(_with_loop(measure)) for _ in range(runs)])


def _alternating(runs: int, *measures: Callable[[], Awaitable[Any]]) -> list[Any]:
    """The median of each measure, the runs taken in turns (a, b, a, b, ...)."""
    results: list[list[Any]] = [[] for _ in measures]
    for _ in range(runs):
        for measure, into in zip(measures, results, strict=True):
            into.append(asyncio.run(_with_loop(measure)))
    return [_median_of(r) for r in results]


def _median_of(results: list[Any]) -> Any:
    if isinstance(results[0], dict):
        return {k: statistics.median(r[k] for r in results) for k in results[0]}
    return statistics.median(results)


async def _with_loop(measure: Callable[[], Awaitable[Any]]) -> Any:
    return await measure()


class _Table:
    """Prints the header at once and each row as soon as it is measured (flushed), so a
    scenario that fails late never takes the figures measured before it with it."""

    HEADER = ("scenario", "measured", "baseline", "goal")
    WIDTHS = (44, 70, 30, 22)

    def __init__(self) -> None:
        self._line(self.HEADER)
        self._line(tuple("-" * w for w in self.WIDTHS))

    def _line(self, cells: tuple[str, ...]) -> None:
        text = "  ".join(c.ljust(w) for c, w in zip(cells, self.WIDTHS, strict=True))
        print(text.rstrip(), flush=True)

    def row(self, scenario: str, measured: str, baseline: str = "-", goal: str = "-") -> None:
        self._line((scenario, measured, baseline, goal))


def _median_known(values: list[float | None]) -> float | None:
    """The median of the values measured (a run without samples has None)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _ms(value: float | None, digits: int = 1) -> str:
    return "no samples" if value is None else f"{value:.{digits}f} ms"


def _subprocess_role(args: argparse.Namespace) -> int | None:
    """Run as one of the bench's own subprocesses when asked to (their exit status)."""
    if args.pg_node:
        return bench_pg.node_main(args.pg_node)
    if args.p5_child:
        return bench_load.child_main(args.p5_child)
    if args.p8_child:
        return bench_children.child_main(args.p8_child)
    if args.p6_probe:
        return bench_api.probe_main(*args.p6_probe)
    if args.p9_probe:
        return bench_branches.probe_main(*args.p9_probe)
    if args.task_probe:
        return report(asyncio.run(_bare_tasks(int(args.task_probe[1]))))
    if args.probe:
        return report(asyncio.run(_probe(args.probe[0], int(args.probe[1]))))
    return None


#: The rows ``--only`` picks, in the order they are measured, each with its own baseline: P1
#: brings P1s and the storage ceiling, P8 its crash row (P8k), "db" the database after 30 days.
ROWS: tuple[str, ...] = ("P1", "P1t", "P2", "P3", "P4", "P5", "P6", "P7", "P7s", "P8", "P9")
ROWS += ("PR1", "PR2", "P10", "P10r", "db")


def _only(text: str) -> frozenset[str]:
    """``--only``'s rows; an unknown one is refused, naming the known ones. P9 brings P1 and
    P3, whose figures it is compared with."""
    picked = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(picked - set(ROWS))
    if unknown or not picked:
        raise argparse.ArgumentTypeError(
            f"unknown row {', '.join(unknown) or '(none given)'}; the rows: {', '.join(ROWS)}"
        )
    return picked | {"P1", "P3"} if "P9" in picked else picked


class _Rows:
    """The SQLite rows of one run, each group a method named after its row (``ROWS``), each
    printed as soon as it is measured; P9 reads P1's and P3's figures, measured before it."""

    def __init__(
        self, directory: str, table: _Table, *, runs: int, quick: bool, raw: float
    ) -> None:
        self.directory = directory
        self.table = table
        self.runs = runs
        self.quick = quick
        self.raw = raw
        self.p1_count = 200 if quick else 2000
        self.p3_count = 2000 if quick else 100_000
        self.p1_figures: dict[str, float] = {}
        self.p3_figures: dict[str, float] = {}

    def p1(self) -> None:
        directory = self.directory
        runs = self.runs
        table = self.table
        raw = self.raw
        p1_count = self.p1_count
        # P1, P1s and the storage ceiling alternate, so a disk or a neighbour that slows down
        # for a while weighs on both sides of each ratio alike.
        p1, p1s, ceiling = _alternating(
            runs,
            lambda: p1_throughput(directory, p1_count),
            lambda: p1_throughput(directory, p1_count, "bench_ten_sync_steps"),
            lambda: bench_ceiling.storage_ceiling(directory, p1_count),
        )
        table.row(
            f"storage ceiling, {p1_count:,} x 10 steps",
            f"{ceiling:,.0f} steps/s ({ceiling / raw:.1f}x raw)",
            f"{raw:,.0f} commits/s",
            f"(SQLite alone: {bench_ceiling.BATCH} steps a commit)",
        )
        table.row(
            f"P1 {p1_count:,} x 10-step processes",
            f"{p1['steps_per_s']:,.0f} steps/s ({p1['steps_per_s'] / ceiling:.3f}x ceiling, "
            f"{p1['steps_per_s'] / raw:.1f}x raw)",
            f"{ceiling:,.0f} steps/s storage ceiling",
            ">= 0.30x ceiling (stretch 0.5)",
        )
        table.row(
            f"P1s {p1_count:,} x 10 plain-function steps",
            f"{p1s['steps_per_s']:,.0f} steps/s "
            f"({p1s['steps_per_s'] / p1['steps_per_s']:.2f}x async)",
            f"{p1['steps_per_s']:,.0f} async steps/s (P1)",
            ">= 0.85x async",
        )
        self.p1_figures = p1

    def p1t(self) -> None:
        directory, runs, table, p1_count = self.directory, self.runs, self.table, self.p1_count
        if bench_tracing.available():
            # Spans on and off, in turns: what tracing costs the step path (README "Traces").
            on, off = _alternating(
                runs,
                lambda: bench_tracing.p1_traced(directory, p1_count, True),
                lambda: bench_tracing.p1_traced(directory, p1_count, False),
            )
            table.row(
                f"P1t {p1_count:,} x 10-step processes, tracing on",
                f"{on['steps_per_s']:,.0f} steps/s ({on['steps_per_s'] / off['steps_per_s']:.2f}x"
                f" off), {on['spans']:,.0f} spans exported (OTLP-encoded)",
                f"{off['steps_per_s']:,.0f} steps/s tracing off",
                "off: no cost beyond P1",
            )
        else:
            print("(P1t: tracing needs the otel extra, pip install 'orchd[otel]')", flush=True)

    def p2(self) -> None:
        directory, runs, table = self.directory, self.runs, self.table
        p2 = _median(runs, lambda: p2_latency(directory))
        table.row(
            "P2 one 10-step process",
            f"{p2['process_s'] * 1000:.1f} ms ({p2['process_s'] / p2['raw10_s']:.2f}x)",
            f"{p2['raw10_s'] * 1000:.1f} ms (10 raw commits, interleaved)",
            "<= 2.0x",
        )

    def p3(self) -> None:
        directory, table, p3_count = self.directory, self.table, self.p3_count
        p3 = p3_memory(directory, p3_count)
        table.row(
            f"P3 {p3_count:,} suspended",
            f"{p3['suspended_mb']:+.1f} MiB RSS",
            "empty database",
            "~0 beyond the db",
        )
        table.row(
            f"P3 {p3['alive']:,.0f} actors polling",
            f"{p3['per_actor_kb']:.1f} KiB/actor",
            f"{p3['per_task_kb']:.1f} KiB per bare asyncio task",
            "<= 8 KB/actor",
        )
        self.p3_figures = p3

    def p4(self) -> None:
        directory, runs, quick, table = self.directory, self.runs, self.quick, self.table
        p4_count = 1000 if quick else 10_000
        p4_runs = (("every 1 s", 1.0, ">= 0.8x"), ("flat out", 0.0, "(CPU per request)"))
        for how, interval, goal in p4_runs:
            # The plain client and orchd take turns against one fake OSS; the ratio is the
            # median of the runs' own ratios, each taken in one moment of the machine.
            rs = bench_load.p4_polling(directory, p4_count, interval, runs)
            r = _median_of(rs)
            ratio = statistics.median(x["requests_per_s"] / x["baseline_per_s"] for x in rs)
            table.row(
                f"P4 {p4_count:,} processes polling an OSS {how}",
                f"{r['requests_per_s']:,.0f} req/s ({ratio:.2f}x), "
                f"{r['cpu_s']:.1f} s CPU, {r['rss_mb']:.0f} MiB peak",
                f"{r['baseline_per_s']:,.0f} req/s plain aiohttp",
                goal,
            )

    def p5(self) -> None:
        directory, quick, table = self.directory, self.quick, self.table
        p5 = bench_load.p5_recovery(directory, 1000 if quick else 10_000)
        table.row(
            f"P5 SIGKILL, {p5['in_flight']:,.0f} in flight",
            f"all moving again in {p5['resumed_s']:.2f} s, "
            f"{p5['completed']:,.0f}/{p5['total']:,.0f} completed",
            f"{p5['stopped_resumed_s']:.2f} s after SIGTERM, "
            f"{p5['stopped_in_flight']:,.0f} in flight",
            "<= 2 s, none lost",
        )

    def p6(self) -> None:
        directory, runs, table, p1_count = self.directory, self.runs, self.table, self.p1_count
        p6s = [bench_api.p6_latency(directory, p1_count, run) for run in range(runs)]
        p6 = {k: _median_known([r[k] for r in p6s]) for k in p6s[0]}
        table.row(
            f"P6 GET a process during {p1_count:,} starts",
            f"p99 {_ms(p6['p99_ms'])} (median {_ms(p6['median_ms'])}, "
            f"{p6['samples']:,} samples); orchd ps {_ms(p6['ps_ms'], 0)}",
            f"p99 {_ms(p6['idle_p99_ms'])} idle",
            "p99 < 5 ms; ps < 150 ms",
        )

    def p7(self) -> None:
        directory, runs, quick, table = self.directory, self.runs, self.quick, self.table
        p7_count = 2000 if quick else 10_000
        p7 = _median_of([bench_api.p7_starts(directory, p7_count) for _ in range(runs)])
        table.row(
            f"P7 {p7_count:,} starts over the socket ({bench_api.CLIENTS} clients)",
            f"{p7['starts_per_s']:,.0f} starts/s",
            f"{p7['refused_per_s']:,.0f}/s of the same requests refused (404)",
            ">= 5,000/s",
        )

    def p7s(self) -> None:
        directory = self.directory
        runs = self.runs
        quick = self.quick
        table = self.table
        raw = self.raw
        seq_count = 500 if quick else 2000
        seq = _median(runs, lambda: sequential_starts(directory, seq_count))
        table.row(
            f"P7s {seq_count:,} starts one after another",
            f"{seq:,.0f} starts/s",
            f"{raw:,.0f} raw commits/s",
            "as close to raw as durability allows",
        )

    def p8(self) -> None:
        directory, runs, quick, table = self.directory, self.runs, self.quick, self.table
        p8_count = 1000 if quick else 10_000
        # The ratio is the median of the runs' own ratios, each taken in one moment of the
        # machine (a load that comes and goes moves the two medians apart, not a run's ratio).
        p8s = [asyncio.run(p8_children(directory, p8_count)) for _ in range(runs)]
        p8 = _median_of(p8s)
        ratio = statistics.median(r["fan_out_s"] / r["independent_s"] for r in p8s)
        table.row(
            f"P8 one parent, {p8_count:,} children of 3 steps (500 at once)",
            f"{p8['fan_out_s']:.2f} s until the parent completed ({ratio:.2f}x)",
            f"{p8['independent_s']:.2f} s as independent starts",
            "<= 1.0x independent starts",
        )
        p8k = bench_children.fan_out_with_a_kill(directory, p8_count)
        table.row(
            "P8k the same, SIGKILL at half the children, restart",
            f"{p8k['total_s']:.2f} s, {p8k['recovered_s']:.2f} s of it after the restart;"
            f" {p8k['completed']:,.0f} children, each completed once",
            f"{p8['fan_out_s']:.2f} s without the kill",
            f"exactly {p8_count:,}",
        )

    def p9(self) -> None:
        directory = self.directory
        runs = self.runs
        quick = self.quick
        table = self.table
        p3_count = self.p3_count
        p1_rate = self.p1_figures["steps_per_s"]

        p9_count = 1000 if quick else 10_000
        p9 = _median(runs, lambda: bench_branches.p9_throughput(directory, p9_count))
        table.row(
            f"P9 foreach over {p9_count:,}, 2 async steps a branch (1,000 at once)",
            f"{p9['steps_per_s']:,.0f} branch steps/s "
            f"({p9['steps_per_s'] / p1_rate:.2f}x P1), {p9['seconds']:.2f} s",
            f"{p1_rate:,.0f} steps/s (P1)",
            ">= 0.8x P1",
        )
        p9m = bench_branches.p9_memory(directory, p3_count // 10)
        table.row(
            f"P9 {p9m['waiting']:,.0f} branches waiting in a step",
            f"{p9m['per_branch_kb']:.1f} KiB/branch",
            f"{self.p3_figures['per_actor_kb']:.1f} KiB/actor polling (P3)",
            "<= P3's per actor",
        )

    def pr1(self) -> None:
        directory, runs, quick, table = self.directory, self.runs, self.quick, self.table
        m_count = 50 if quick else 400
        m = bench_products.typed_modify(directory, m_count, runs)
        table.row(
            f"PR1 MODIFY of an L2VPN of 8 SAPs, 8 steps, {m_count} at once",
            f"{m['typed']:,.0f} steps/s typed ({m['typed'] / m['untyped']:.2f}x)",
            f"{m['untyped']:,.0f} steps/s untyped, same size",
            ">= 0.8x",
        )

    def pr2(self) -> None:
        directory, quick, table = self.directory, self.quick, self.table
        s_count = 10_000 if quick else 100_000
        q = bench_products.search(directory, s_count, 100 if quick else 400)
        table.row(
            f"PR2 GET /api/subscriptions?q= over {s_count:,} subscriptions",
            f"p99 {q['q_p99_ms']:.1f} ms",
            f"p99 {q['list_p99_ms']:.1f} ms without q",
            "p99 < 50 ms",
        )

    def p10(self) -> None:
        directory, runs, quick, table = self.directory, self.runs, self.quick, self.table
        p10 = bench_limits.p10_overhead(directory, 2000 if quick else 10_000, runs)
        table.row(
            f"P10 {p10['steps']:,.0f} steps naming a limit with room for all",
            f"{p10['limited_per_s']:,.0f} steps/s ({p10['ratio']:.2f}x; "
            f"{p10['cpu_ratio']:.2f}x per CPU second)",
            f"{p10['plain_per_s']:,.0f} steps/s of the same without uses=",
            ">= 0.9x",
        )

    def p10r(self) -> None:
        directory, runs, quick, table = self.directory, self.runs, self.quick, self.table
        routers, changes, hold = (20, 200, 0.05) if quick else (100, 2000, 0.2)
        p10r = bench_limits.p10_routers(directory, routers, changes, hold, runs)
        table.row(
            f"P10r router = 1: {changes:,} changes of {hold:g} s over {routers} routers",
            f"{p10r['seconds']:.2f} s until all completed ({p10r['ratio']:.2f}x ideal)",
            f"{p10r['ideal']:.2f} s ideal schedule ({changes // routers} x {hold:g} s a router)",
            "<= 1.2x ideal",
        )

    def db(self) -> None:
        directory, quick, table = self.directory, self.quick, self.table
        # The quick (smoke) run simulates a schedule ten times slower, and says so.
        days, per_day = (9, 864) if quick else (30, bench_retention.PER_DAY)
        r = bench_retention.database_size(directory, days, per_day)
        table.row(
            f"database after {days} days of a {86400 // per_day} s schedule",
            f"{r['with_mb']:.1f} MiB, {r['with_kept']:,.0f} processes with retention (tasks = 7d)",
            f"{r['without_mb']:.1f} MiB, {r['without_kept']:,.0f} without",
            "bounded",
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="orchd bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (smoke)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--scaling", action="store_true", help="also the growth tables")
    parser.add_argument("--probe", nargs=2, metavar=("DB", "POLLING"), help=argparse.SUPPRESS)
    parser.add_argument("--task-probe", nargs=2, metavar=("DB", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--p5-child", nargs=2, metavar=("DB", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--p8-child", nargs=2, metavar=("DB", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--p6-probe", nargs=2, metavar=("SOCKET", "ID"), help=argparse.SUPPRESS)
    parser.add_argument("--p9-probe", nargs=2, metavar=("DB", "N"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=os.environ.get("ORCHD_BENCH_PG"),
        help="also the PostgreSQL rows, on a database created (and dropped) on this server "
        "(default $ORCHD_BENCH_PG)",
    )
    parser.add_argument(
        "--postgres-only", action="store_true", help="only the PostgreSQL rows (with --postgres)"
    )
    parser.add_argument(
        "--only",
        metavar="ROWS",
        type=_only,
        help=f"only these rows, comma-separated, each with its baseline: {', '.join(ROWS)}",
    )
    parser.add_argument("--pg-node", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # The engine is measured as the daemon runs it, the baselines beside it alike.
    gcpolicy.apply()
    helper = _subprocess_role(args)
    if helper is not None:
        return helper
    runs = 1 if args.quick else args.runs
    try:
        import uvloop

        uvloop.install() if sys.version_info < (3, 12) else None
    except ImportError:
        pass

    print(
        f"orchd bench on {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"median of {runs} run(s), synchronous=FULL, garbage collection as `orchd serve` "
        f"sets it {gcpolicy.THRESHOLDS}",
        flush=True,
    )
    if args.postgres_only:
        if not args.postgres:
            parser.error("--postgres-only needs --postgres URL (or $ORCHD_BENCH_PG)")
        bench_pg.rows(args.postgres, quick=args.quick, row=_Table().row)
        return 0
    with tempfile.TemporaryDirectory(prefix="orchd-bench-") as directory:
        table = _Table()
        raw = statistics.median(
            raw_commit_rate(directory, 300 if args.quick else 1000) for _ in range(runs)
        )
        table.row("raw durable commit (1 row)", f"{raw:,.0f}/s")
        rows = _Rows(directory, table, runs=runs, quick=args.quick, raw=raw)
        for name in ROWS:
            if args.only is None or name in args.only:
                getattr(rows, name.lower())()
        if args.postgres:
            bench_pg.rows(args.postgres, quick=args.quick, row=table.row)
        else:
            print("(PostgreSQL rows: pass --postgres URL or set ORCHD_BENCH_PG)", flush=True)
        if args.scaling:
            print("\nsteps/s and RSS by number of concurrent processes")
            for n in (100, 1000, 10_000, 100_000) if not args.quick else (100, 1000):
                r = _median(1, lambda n=n: p1_throughput(directory, n))  # type: ignore[misc]
                print(
                    f"  {n:>7,}  {r['steps_per_s']:>9,.0f} steps/s  {r['rss_mb']:>7.1f} MiB",
                    flush=True,
                )
            print("\nsteps/s by State size (1,000 processes)")
            for size in (1_000, 10_000, 100_000):
                r = _median(1, lambda size=size: state_size(directory, size, 1000))  # type: ignore[misc]
                print(f"  {size // 1000:>4} KB  {r:>9,.0f} steps/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
