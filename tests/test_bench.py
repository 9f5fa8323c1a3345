"""`orchd bench`: the quick run prints its table with each row's same-run baseline (figures
are not asserted), ``--only`` picks rows, and the P6 prober and the table survive a load that
ends early."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from support import pg
from support.daemons import DaemonFactory

from orchd._bench.api import MIN_PROBES, quantile_ms
from orchd._bench.run import _ms, _Table


def quick_bench(*args: str) -> subprocess.CompletedProcess[str]:
    """``orchd bench --quick`` with ``args``, as a user runs it; its output and status."""
    command = [sys.executable, "-m", "orchd", "bench", "--quick", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_bench_quick_prints_every_scenario() -> None:
    result = quick_bench("--runs", "1")
    assert result.returncode == 0, result.stderr
    for label in (
        "raw durable commit",
        "storage ceiling, ",
        "P1 ",
        "P1s ",
        "P1t ",
        "P2 ",
        "P3 ",
        "P4 ",
        "P5 ",
        "P6 ",
        "P7 ",
        "P7s ",
        "P8 ",
        "P8k ",
        "P9 foreach over 1,000",
        "P9 200 branches waiting",
        "PR1 ",
        "PR2 ",
        "P10 2,000 steps naming a limit",
        "P10r router = 1",
        "database after ",
    ):
        assert label in result.stdout
    assert "1,000/1,000 completed" in result.stdout
    # Every row has a baseline from the same run; these are the ones added last.
    for baseline in (
        "after SIGTERM",  # P5: the same restart after an orderly stop
        "refused (404)",  # P7: the same requests without a start
        "10 raw commits, interleaved",  # P2
        "steps/s storage ceiling",  # P1: orchd's write pattern on SQLite alone
        "s as independent starts",  # P8: the same children started one by one
        "async steps/s (P1)",  # P1s
        "steps/s tracing off",  # P1t: the same processes without spans
        "steps/s untyped, same size",  # PR1: the same MODIFY on an untyped subscription
        "ms without q",  # PR2: the same page without a search
        "of the same without uses=",  # P10: the same steps naming no limit
        "ideal schedule",  # P10r: every router busy back to back
    ):
        assert baseline in result.stdout
    # Measured as the daemon runs: its garbage-collector set-up, named in the header.
    assert "garbage collection as `orchd serve` sets it" in result.stdout
    # The crash row checks its own outcome (exactly the children asked for) or fails the run.
    assert "1,000 children, each completed once" in result.stdout


def test_bench_only_measures_the_rows_named_with_their_baselines() -> None:
    result = quick_bench("--only", "P2")
    assert result.returncode == 0, result.stderr
    assert "P2 one 10-step process" in result.stdout
    assert "10 raw commits, interleaved" in result.stdout
    for other in ("storage ceiling, ", "P1 ", "P3 ", "P8 "):
        assert other not in result.stdout


def test_bench_only_refuses_an_unknown_row_naming_the_rows() -> None:
    result = quick_bench("--only", "P2,P99")
    assert result.returncode == 2
    assert "unknown row P99" in result.stderr
    assert "P1, P1t, P2" in result.stderr
    assert "raw durable commit" not in result.stdout  # refused before measuring anything


def test_p6_prober_takes_its_minimum_samples_when_stdin_closes_at_once(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory()
    pid = daemon.start_process("quick")
    # stdin at EOF from the start: the load ended before the prober sent anything (#26).
    result = subprocess.run(
        [sys.executable, "-m", "orchd._bench.run", "--p6-probe", daemon.socket, pid],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert len(json.loads(result.stdout)) >= MIN_PROBES > 0


def test_latency_statistics_of_no_samples_say_so() -> None:
    assert quantile_ms([], 0.99) is None
    assert quantile_ms([], 0.5) is None
    assert _ms(None) == "no samples"


def test_bench_table_prints_a_row_as_soon_as_it_is_measured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = _Table()
    table.row("P1 something", "1 step/s")
    assert "P1 something" in capsys.readouterr().out


def test_bench_postgres_rows_compare_p1_with_raw_commits_and_nodes_with_one(
    pg_server: pg.PgServer,
) -> None:
    result = quick_bench("--postgres", pg_server.admin_url, "--postgres-only")
    assert result.returncode == 0, result.stderr
    for label in (
        "PG raw commit", "PG P1 ", "x raw", "PG 1 node", "PG 2 nodes", "PG 3 nodes",
        "PG P2 one 10-step process", "10 raw commits, interleaved",  # P2 on the same server
        "PG CPU per 10-step process", "ms on SQLite",  # the same processes on SQLite
    ):  # fmt: skip
        assert label in result.stdout, result.stdout
    # The run's database was dropped at the end (other runs on the server may have theirs).
    [name] = re.findall(r"in database (orchd_bench_\w+)", result.stderr)
    left = pg.query(
        pg_server.admin_url, "SELECT count(*) FROM pg_database WHERE datname = $1", name
    )
    assert left[0][0] == 0
