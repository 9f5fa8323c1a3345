"""The products rows of ``orchd bench``.

- A MODIFY of an L2VPN with eight service access points, eight steps that each take the
  subscription typed and give it back changed, against the same workflow on an untyped
  subscription of the same size (the same attributes, no product class), in turns.
- ``q`` over 100,000 subscriptions: the time of a search page, p99 over searches for terms
  that are rare, common and absent, against a page of the same list without ``q``.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import statistics
import time
import uuid
from typing import Any

from orchd.dsl import State, done, init, step, workflow
from orchd.engine import Engine
from orchd.model import Target
from orchd.products import Block, Product, Ref, product
from orchd.store.sqlreads import UPSERT_SUBSCRIPTION, subscription_values

SAPS = 8
STEPS = 8


@product("bench_port", description="A port, for the products benchmark")
class BenchPort(Product):
    name: str


class BenchSap(Block):
    port: Ref[BenchPort]
    vlan: int


@product("bench_vpn", description="An L2VPN of eight SAPs, for the products benchmark")
class BenchVpn(Product):
    saps: list[BenchSap]
    speed: int = 1000


def _typed_step(n: int) -> Any:
    @step(f"typed change {n}")
    def change(subscription: BenchVpn) -> State:
        subscription.speed += 1
        subscription.saps[n % SAPS].vlan += 1
        return {"subscription": subscription}

    return change


def _untyped_step(n: int) -> Any:
    @step(f"untyped change {n}")
    def change(subscription: dict[str, Any]) -> State:
        attributes = subscription["attributes"]
        attributes["speed"] += 1
        attributes["saps"][n % SAPS]["vlan"] += 1
        return {"subscription": subscription}

    return change


def _flow(steps: list[Any]) -> Any:
    flow = init
    for s in steps:
        flow = flow >> s
    return flow >> done


_TYPED = [_typed_step(n) for n in range(STEPS)]
_UNTYPED = [_untyped_step(n) for n in range(STEPS)]


@workflow("Benchmark: change a typed L2VPN in 8 steps", target=Target.MODIFY, product=BenchVpn)
def bench_modify_typed():  # type: ignore[no-untyped-def]
    return _flow(_TYPED)


@workflow("Benchmark: change an untyped L2VPN of the same size in 8 steps", target=Target.MODIFY)
def bench_modify_untyped():  # type: ignore[no-untyped-def]
    return _flow(_UNTYPED)


def _insert(path: str, subs: list[dict[str, Any]]) -> None:
    """Write subscriptions straight into the database (as the engine's writer would), to set
    a benchmark up without running a process per subscription."""
    conn = sqlite3.connect(path)
    try:
        now = time.time()
        conn.executemany(UPSERT_SUBSCRIPTION, [subscription_values(s, now) for s in subs])
        conn.commit()
    finally:
        conn.close()


def _subscription(product_name: str, attributes: dict[str, Any], **own: Any) -> dict[str, Any]:
    return {
        "id": own.pop("id", None) or _uuid(),
        "product": product_name,
        "customer_id": own.pop("customer_id", "bench"),
        "description": own.pop("description", ""),
        "status": "active",
        "insync": True,
        "attributes": attributes,
        "version": 1,
    }


def _uuid() -> str:
    return str(uuid.uuid4())


async def _modify_rate(engine: Engine, workflow_name: str, sids: list[str]) -> float:
    began = time.perf_counter()
    pids = await asyncio.gather(
        *(engine.start(workflow_name, {"subscription_id": sid}) for sid in sids)
    )
    for pid in pids:
        process = await engine.wait(pid)
        assert process.status == "completed", process.error
    return len(sids) * (STEPS + 2) / (time.perf_counter() - began)


async def _typed_against_untyped(directory: str, count: int, runs: int) -> dict[str, float]:
    path = os.path.join(directory, "products.db")
    engine = Engine(database=path, workflows=["orchd._bench.products"])
    await engine.open()
    await engine.close()
    ports = [_subscription("bench_port", {"name": f"xe-0/0/{i}"}) for i in range(SAPS)]
    saps = [{"port": p["id"], "vlan": 100 + i} for i, p in enumerate(ports)]
    typed = [_subscription("bench_vpn", {"saps": saps, "speed": 1000}) for _ in range(count)]
    untyped = [_subscription("bench_raw", {"saps": saps, "speed": 1000}) for _ in range(count)]
    _insert(path, ports + typed + untyped)
    engine = Engine(database=path, workflows=["orchd._bench.products"])
    await engine.open()
    rates: dict[str, list[float]] = {"typed": [], "untyped": []}
    try:
        for _ in range(runs):
            ids = [s["id"] for s in untyped]
            rates["untyped"].append(await _modify_rate(engine, "bench_modify_untyped", ids))
            ids = [s["id"] for s in typed]
            rates["typed"].append(await _modify_rate(engine, "bench_modify_typed", ids))
    finally:
        await engine.close()
    return {name: statistics.median(values) for name, values in rates.items()}


def typed_modify(directory: str, count: int, runs: int) -> dict[str, float]:
    """Steps/s of MODIFY processes on typed and on untyped L2VPNs, ``count`` at once."""
    return asyncio.run(_typed_against_untyped(directory, count, runs))


_WORDS = ["core", "edge", "access", "ams", "lon", "fra", "par", "nyc", "sfo", "tyo"]


async def _search_times(directory: str, count: int, queries: int) -> dict[str, float]:
    path = os.path.join(directory, "search.db")
    engine = Engine(database=path, workflows=["orchd._bench.products"])
    await engine.open()
    await engine.close()
    rng = random.Random(7)
    subs = [
        _subscription(
            "bench_port",
            {"name": f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}-{n}"},
            description=f"port {n} of {rng.choice(_WORDS)} router",
            customer_id=f"customer-{n % 500}",
        )
        for n in range(count)
    ]
    _insert(path, subs)
    engine = Engine(database=path, workflows=["orchd._bench.products"])
    await engine.open()
    terms = [
        *(rng.choice(_WORDS) for _ in range(queries // 2)),  # common
        *(f"-{rng.randrange(count)}" for _ in range(queries // 4)),  # rare
        *(f"nothing-{n}" for n in range(queries // 4)),  # absent: a scan of every row
    ]
    searched: list[float] = []
    listed: list[float] = []
    try:
        for term in terms:
            began = time.perf_counter()
            await engine.list_subscriptions(q=term)
            searched.append(time.perf_counter() - began)
            began = time.perf_counter()
            await engine.list_subscriptions()
            listed.append(time.perf_counter() - began)
    finally:
        await engine.close()
    return {"q_p99_ms": _p99(searched) * 1000, "list_p99_ms": _p99(listed) * 1000}


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def search(directory: str, count: int, queries: int = 400) -> dict[str, float]:
    """p99 of a search page over ``count`` subscriptions, and of a plain page beside it."""
    return asyncio.run(_search_times(directory, count, queries))
