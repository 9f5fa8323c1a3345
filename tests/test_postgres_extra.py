"""PostgreSQL is an extra (``orchd[postgresql]``): a SQLite user runs without its driver, and a
PostgreSQL URL without the driver is a config error that says what to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: Runs before the code under test: asyncpg cannot be imported, as if it were not installed.
WITHOUT_ASYNCPG = """
import importlib.abc, sys

class NoAsyncpg(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "asyncpg" or name.startswith("asyncpg."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoAsyncpg())
"""


def python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_ASYNCPG + code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_sqlite_engine_runs_without_the_postgresql_driver(tmp_path: Path) -> None:
    done = python(
        """
import asyncio
from orchd.engine import Engine

async def main():
    async with Engine(database="orchd.db", workflows=["orchd.examples"]) as engine:
        pid = await engine.start("find_faulty_nodes", {}, reporter="test")
        print((await engine.get(pid)).workflow)
    import sys
    assert "asyncpg" not in sys.modules

asyncio.run(main())
""",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "find_faulty_nodes"


def test_a_postgresql_url_without_the_driver_is_a_config_error_naming_the_extra(
    tmp_path: Path,
) -> None:
    config = tmp_path / "orchd.toml"
    config.write_text('database = "postgresql://orchd@db.example:5432/orchd"\n')
    done = python(
        f"""
import sys
from orchd.cli import main
sys.exit(main(["serve", "--check", "--config", {str(config)!r}]))
""",
        tmp_path,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert str(config) in done.stderr and "database" in done.stderr
    assert "orchd[postgresql]" in done.stderr
