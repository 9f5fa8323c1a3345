"""Runs an Engine in its own process for the crash tests: `start N` or `finish`."""

from __future__ import annotations

import asyncio
import sys

from orchd import Engine


async def main(db: str, mode: str, count: int) -> None:
    async with Engine(database=db, workflows=["engine_flows"]) as engine:
        if mode == "start":
            pids = [await engine.start("effects") for _ in range(count)]
            print("started", len(pids), flush=True)
            await asyncio.sleep(3600)  # until killed
        else:
            rows = await engine.store.fetchall("SELECT id FROM processes")
            for (pid,) in rows:
                await engine.wait(pid)
            print("finished", len(rows), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
