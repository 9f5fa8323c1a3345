"""What a new user tripped on, third round (issue 30 items 2, 4, 7 and 9 in part)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

from operators3_flows import Flaky
from support.common import ROOT, settle
from support.daemons import DaemonFactory, DaemonProcess

from orchd import Process
from orchd.model import StepRecord

Make = Callable[..., Any]


# -- item 2: a fork's record covers the whole fork ----------------------------------------------


def _fork_record(process: Process, name: str) -> StepRecord:
    [record] = [s for s in process.steps if s.name == name and s.status == "success"]
    return record


def _branch_records(process: Process, prefix: str) -> list[StepRecord]:
    return [s for s in process.steps if s.branch is not None and s.branch.startswith(prefix)]


def assert_covers(process: Process, fork: str, prefix: str) -> None:
    """The fork's record spans from its first branch step's start to its last one's end."""
    record = _fork_record(process, fork)
    inner = _branch_records(process, prefix)
    assert inner, f"no branch records under {prefix}"
    first = min(s.started_at for s in inner)
    last = max(s.finished_at for s in inner)
    assert record.started_at <= first, (
        f"{fork} started {(record.started_at - first).total_seconds():.3f} s after its first "
        "branch step"
    )
    assert record.finished_at >= last
    assert record.finished_at - record.started_at >= last - first


async def test_a_fork_whose_branch_waited_for_a_retry_covers_the_wait(
    engine_factory: Make,
) -> None:
    flaky = Flaky()
    flaky.flaps[2] = 2  # item 2 waits twice for its automatic retry
    engine = await engine_factory(["operators3_flows"], resources={Flaky: flaky}, retry_delay=0.1)
    process = await engine.wait(await engine.start("fan_poll", {"items": [1, 2, 3]}))
    process = await settle(engine, process.id, "completed", "failed")
    assert process.status == "completed", process.error
    waits = [s for s in process.steps if s.status == "waiting"]
    assert len(waits) == 2
    assert_covers(process, "Poll items", "Poll items/")


async def test_a_forks_start_survives_a_restart(engine_factory: Make) -> None:
    flaky = Flaky()
    flaky.failing.add(2)
    first = await engine_factory(
        ["operators3_flows"], name="fork.db", resources={Flaky: flaky}, grace_period=0.1
    )
    pid = await first.start("fan_touch", {"items": [1, 2, 3]})
    process = await settle(first, pid, "failed")
    started = min(s.started_at for s in _branch_records(process, "Touch items/"))
    await first.close()
    flaky.failing.clear()
    second = await engine_factory(["operators3_flows"], name="fork.db", resources={Flaky: flaky})
    await second.retry(pid)
    process = await settle(second, pid, "completed", "failed")
    assert process.status == "completed", process.error
    assert _fork_record(process, "Touch items").started_at <= started
    assert_covers(process, "Touch items", "Touch items/")


async def test_a_nested_forks_record_covers_its_branches_across_a_retry(
    engine_factory: Make,
) -> None:
    flaky = Flaky()
    flaky.failing.add("b")
    engine = await engine_factory(["operators3_flows"], resources={Flaky: flaky})
    pid = await engine.start("fan_nested", {"items": ["a", "b"]})
    await settle(engine, pid, "failed")
    flaky.failing.clear()
    await engine.retry(pid)
    process = await settle(engine, pid, "completed", "failed")
    assert process.status == "completed", process.error
    assert_covers(process, "Inner", "Outer/0/Inner/")
    assert_covers(process, "Outer", "Outer/")
    touched = [s.branch for s in process.steps if s.name == "touch item" and s.status == "success"]
    assert sorted(touched) == ["Outer/0/Inner/0", "Outer/0/Inner/1"]  # a finished one: once


# -- item 4 (and 9): where a workflow module is looked for; an import error's location once -----


def serve_check(
    config: Path, cwd: Path, pythonpath: list[Path]
) -> subprocess.CompletedProcess[str]:
    """``orchd serve --check`` as a new user runs it: from another folder, PYTHONPATH as given."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ORCHD_CONFIG")}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [*pythonpath, ROOT])
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "orchd", "serve", "--check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


def write_config(folder: Path, modules: list[str]) -> Path:
    folder.mkdir(exist_ok=True)
    config = folder / "orchd.toml"
    config.write_text(
        f"workflows = {modules!r}\n"
        f'database = "{folder / "orchd.db"}"\nsocket = "{folder / "orchd.sock"}"\n'.replace(
            "'", '"'
        )
    )
    return config


BESIDE = """
from orchd import Target, done, init, workflow


@workflow("A task beside the config", target=Target.SYSTEM)
def beside_task():
    return init >> done
"""


def test_serve_check_says_where_it_looked_for_a_module_beside_the_config(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    config = write_config(etc, ["myflows_beside"])
    (etc / "myflows_beside.py").write_text(BESIDE)
    bad = serve_check(config, tmp_path / "run", [])
    assert bad.returncode == 2, bad.stdout
    [line] = bad.stderr.splitlines()
    assert "workflows[0]: cannot import module 'myflows_beside': ModuleNotFoundError" in line
    assert f"{sys.executable} looked in: " in line or " looked in: " in line
    assert sysconfig.get_path("purelib") in line  # this environment's site-packages
    assert str(etc) + "," not in line  # the config's folder is not searched ...
    assert f"{etc / 'myflows_beside.py'} is not on that path" in line  # ... and it says so
    assert "install it into that Python's environment" in line
    assert "Where workflow modules are found" in line and "daemon.py" not in line

    ok = serve_check(config, tmp_path / "run", [etc])  # on the path, it is found
    assert ok.returncode == 0, ok.stderr
    assert f"workflows myflows_beside: {etc / 'myflows_beside.py'}" in ok.stdout
    [looks] = [x for x in ok.stdout.splitlines() if "looks for modules in:" in x]
    assert str(etc) in looks and sysconfig.get_path("purelib") in looks


def test_an_import_error_names_its_file_and_line_once(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    package = lib / "brokenflows"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(BESIDE)
    (package / "syntax.py").write_text("x = 1\ndef f(:\n    pass\n")
    config = write_config(tmp_path / "etc", ["brokenflows"])
    bad = serve_check(config, tmp_path / "run", [lib])
    assert bad.returncode == 2
    [line] = bad.stderr.splitlines()
    assert "cannot import module 'brokenflows.syntax': SyntaxError: invalid syntax" in line
    assert line.count("line 2") == 1 and line.count("syntax.py") == 1, line
    assert f"({package / 'syntax.py'}, line 2)" in line

    (package / "syntax.py").write_text("x = 1\n")
    (lib / "raising.py").write_text("import os\n\nraise ValueError('no network today')\n")
    config = write_config(tmp_path / "etc", ["raising"])
    bad = serve_check(config, tmp_path / "run", [lib])
    assert bad.returncode == 2
    [line] = bad.stderr.splitlines()
    assert line.endswith(
        f"workflows[0]: cannot import module 'raising': ValueError: no network today "
        f"({lib / 'raising.py'}, line 3)"
    ), line


# -- item 9: every unknown key at once, with the near key; make run's schedule ------------------


def test_every_unknown_key_is_reported_at_once_with_the_key_it_is_near(
    daemon_factory: DaemonFactory,
) -> None:
    d = daemon_factory(
        start=False,
        raw_config=(
            'workflow = ["daemon_flows"]\n'
            "grace_periode = '5s'\n"
            "colour = 'blue'\n"
            "[http]\nlimt = 5\n"
            "[[schedules]]\nworkflow = 'w'\nevry = '5m'\n"
        ),
    )
    assert d.run_to_exit() == 2
    [line] = d.last_run_stderr().strip().splitlines()[-1:]
    path = d.config_path
    assert line == (
        f"orchd: {path}: workflow: unknown key (did you mean 'workflows'?); "
        "grace_periode: unknown key (did you mean 'grace_period'?); "
        "colour: unknown key; "
        "http.limt: unknown key (did you mean 'limit'?); "
        "schedules[0].evry: unknown key (did you mean 'every'?)"
    )
    assert not Path(d.db).exists()


class DefaultDaemon(DaemonProcess):
    """``orchd serve`` with no config file at all, as ``make run`` starts it, in its folder."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "orchd", "serve"]


def test_the_make_run_daemon_has_a_schedule(tmp_path: Path) -> None:
    makefile = (ROOT / "Makefile").read_text()
    run = makefile.partition("\nrun:")[2].partition("\n\n")[0]
    assert "orchd serve\n" in run + "\n" and "--config" not in run  # the embedded default
    d = DefaultDaemon(tmp_path / "run")
    d.config_path.unlink()  # no file: the embedded default, ./orchd.db and ./orchd.sock
    try:
        d.start()
        listed = subprocess.run(
            [sys.executable, "-m", "orchd", "--socket", d.socket, "--json", "schedules"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert listed.returncode == 0, listed.stderr
        [entry] = json.loads(listed.stdout)
        assert entry["name"] == "validate_nodes"
        assert entry["workflow"] == "validate_subscriptions"
        assert entry["every"] == "10m" and entry["next_run"] is not None
        ran = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchd",
                "--socket",
                d.socket,
                "schedules",
                "run",
                entry["name"],
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ran.returncode == 0, ran.stderr
        process = d.wait_process(ran.stdout.strip(), timeout=30)  # no nodes yet: nothing to do
        assert process["state"]["product"] == "node"
        assert process["reporter"] == "scheduler:validate_nodes"
        assert d.stop() == 0
    finally:
        d.kill()
