"""The command line without a daemon: parsing, usage errors, where the daemon is, fast imports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchd import cli
from orchd.client import Endpoint, resolve_endpoint

ORCHD_ENV = ("ORCHD_SOCKET", "ORCHD_URL", "ORCHD_TOKEN", "ORCHD_CONFIG")


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ORCHD_ENV}
    return subprocess.run(
        [sys.executable, "-m", "orchd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ORCHD_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to ~108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="orchd-") as name:
        yield Path(name)


HEAVY = ("aiohttp", "msgspec", "asyncio", "anyio", "aiosqlite", "orchd.engine", "orchd.daemon")
REPORT_HEAVY = f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"


def heavy_imports(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_stays_light() -> None:
    # What `orchd ...` pays on every call, package __init__ included.
    heavy = heavy_imports("import sys, orchd.cli\n" + REPORT_HEAVY)
    assert heavy == "", (
        f"`import orchd.cli` imports {heavy}: the client path must stay standard-library only "
        "(orchd/__init__.py should import the engine and the DSL lazily, PEP 562 __getattr__)"
    )


def test_cli_modules_themselves_stay_light() -> None:
    # The same check without running orchd/__init__.py: only cli.py and client.py are judged.
    code = (
        "import sys, types, importlib.util\n"
        "spec = importlib.util.find_spec('orchd')\n"
        "package = types.ModuleType('orchd')\n"
        "package.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['orchd'] = package\n"
        "import orchd.cli, orchd.client\n" + REPORT_HEAVY
    )
    assert heavy_imports(code) == ""


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("orchd ")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["bogus"],
        ["start"],
        ["show"],
        ["resume", "some-id"],
        ["ps", "--limit", "many"],
        ["start", "wf", "--timeout", "soon"],
        ["ps", "--no-such-option"],
        ["schedules", "run"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    done = run(*args)
    assert done.returncode == 2, done
    assert "usage:" in done.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["start", "wf", "--input", "{bad"], "", "--input is not valid JSON"),
        (["start", "wf", "--input", '"text"'], "", "must be a JSON object (or a list"),
        (["start", "wf", "--input", "-"], "nope", "--input from stdin is not valid JSON"),
        (["start", "wf", "--input", "@/no/such/file.json"], "", "cannot read --input file"),
        (["resume", "x", "--input", "{"], "", "not valid JSON"),
        (["start", "wf", "--wait", "--timeout", "0"], "", "--timeout must be positive"),
    ],
)
def test_bad_input_exits_2_before_any_request(
    args: list[str], stdin: str, message: str, short_dir: Path
) -> None:
    # The socket does not exist: a request would exit 3, so exit 2 proves none was made.
    done = run("--socket", str(short_dir / "missing.sock"), *args, stdin=stdin)
    assert done.returncode == 2, done
    assert message in done.stderr


def test_input_from_file_and_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "in.json"
    path.write_text('{"name": "n1"}')
    assert cli.read_input(f"@{path}") == {"name": "n1"}
    assert cli.read_input('{"a": 1}') == {"a": 1}
    assert cli.read_input(None) == {}
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO('{"b": [1]}'))
    assert cli.read_input("-") == {"b": [1]}


def test_missing_socket_exits_3_naming_it(short_dir: Path) -> None:
    path = short_dir / "orchd.sock"
    done = run("ps", "--socket", str(path))
    assert done.returncode == 3
    assert str(path) in done.stderr
    assert "no such socket" in done.stderr
    assert done.stdout == ""


def test_refused_socket_exits_3(short_dir: Path) -> None:
    # A socket file nobody listens on: what a crashed daemon leaves behind.
    path = short_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        done = run("--socket", str(path), "workflows")
    assert done.returncode == 3
    assert str(path) in done.stderr
    assert "refused" in done.stderr


def test_socket_from_environment(short_dir: Path) -> None:
    path = short_dir / "env.sock"
    env = {k: v for k, v in os.environ.items() if k not in ORCHD_ENV}
    env["ORCHD_SOCKET"] = str(path)
    done = subprocess.run(
        [sys.executable, "-m", "orchd", "health"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 3
    assert str(path) in done.stderr


def test_unreachable_url_exits_3() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = run("--url", f"http://127.0.0.1:{port}", "health")
    assert done.returncode == 3
    assert f"http://127.0.0.1:{port}" in done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--socket", "/s", "ps", "--status", "failed"],
        ["ps", "--status", "failed", "--json", "--socket", "/s"],
        ["--socket", "/s", "ps", "--json", "--status", "failed"],
        ["--socket=/elsewhere", "ps", "--socket", "/s", "--status=failed", "--json"],
    ],
)
def test_global_options_before_or_after_the_command(argv: list[str]) -> None:
    args = cli.parse_args(argv)
    assert (args.command, args.socket, args.json, args.status) == ("ps", "/s", True, "failed")
    assert args.config is None and args.url is None and args.token_file is None


def test_global_defaults() -> None:
    args = cli.parse_args(["workflows"])
    assert (args.socket, args.json, args.config, args.url, args.token_file) == (
        None,
        False,
        None,
        None,
        None,
    )


def test_nested_schedules_run_takes_global_options() -> None:
    args = cli.parse_args(["schedules", "run", "nightly", "--json", "--socket", "/s"])
    assert (args.command, args.schedules_command, args.name, args.json) == (
        "schedules",
        "run",
        "nightly",
        True,
    )
    assert cli.parse_args(["schedules"]).schedules_command is None


def test_start_options() -> None:
    args = cli.parse_args(["start", "wf", "--wait", "--timeout", "2.5", "--input", "{}"])
    assert (args.workflow, args.wait, args.timeout, args.input) == ("wf", True, 2.5, "{}")


def test_passthrough_commands_keep_their_arguments() -> None:
    assert cli._passthrough(["bench", "--processes", "10", "--json"]) == (
        "bench",
        ["--processes", "10", "--json"],
    )
    assert cli._passthrough(["--socket", "/s", "fake-oss", "-h"]) == ("fake-oss", ["-h"])
    assert cli._passthrough(["--json", "ps"]) is None
    assert cli._passthrough(["--socket", "bench", "ps"]) is None


def test_missing_module_is_a_clear_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli._run_module("orchd.no_such_module", lambda module: 0)
    assert status == 2
    assert "orchd.no_such_module" in capsys.readouterr().err


def endpoint(*argv: str) -> Endpoint:
    args = cli.parse_args([*argv, "health"])
    return resolve_endpoint(args.socket, args.url, args.config, args.token_file)


def test_socket_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "orchd.toml"
    config.write_text('socket = "/run/orchd/orchd.sock"\ndatabase = "x.db"\n')
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert endpoint("--config", str(empty)) == Endpoint(socket_path="orchd.sock")
    assert endpoint("--config", str(config)).socket_path == "/run/orchd/orchd.sock"
    monkeypatch.setenv("ORCHD_CONFIG", str(config))
    assert endpoint().socket_path == "/run/orchd/orchd.sock"
    monkeypatch.setenv("ORCHD_SOCKET", "/env.sock")
    assert endpoint().socket_path == "/env.sock"
    assert endpoint("--socket", "/opt.sock").socket_path == "/opt.sock"


def test_tcp_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("  s3cret\n")
    config = tmp_path / "orchd.toml"
    config.write_text(f'listen = "127.0.0.1:8470"\ntoken_file = "{token}"\n')
    assert endpoint("--config", str(config)) == Endpoint(
        url="http://127.0.0.1:8470", token="s3cret"
    )
    assert endpoint("--url", "http://h:1/", "--token-file", str(token)) == Endpoint(
        url="http://h:1", token="s3cret"
    )
    monkeypatch.setenv("ORCHD_TOKEN", "fromenv")
    assert endpoint("--url", "http://h:1").token == "fromenv"
    assert endpoint("--config", str(config)).token == "fromenv"
    monkeypatch.setenv("ORCHD_URL", "http://envhost:2")
    assert endpoint("--config", str(config)) == Endpoint(url="http://envhost:2", token="fromenv")
    assert endpoint("--socket", "/s") == Endpoint(socket_path="/s")
    monkeypatch.setenv("ORCHD_SOCKET", "/env.sock")
    assert endpoint() == Endpoint(socket_path="/env.sock")
    assert endpoint("--url", "http://h:1").url == "http://h:1"


def test_bad_config_or_url_is_a_usage_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("socket = ")
    for argv in (
        ["--config", str(broken), "health"],
        ["--config", str(tmp_path / "absent.toml"), "health"],
        ["--url", "127.0.0.1:8470", "health"],
        ["--url", "http://h:1", "--token-file", str(tmp_path / "absent"), "health"],
    ):
        done = run(*argv)
        assert done.returncode == 2, (argv, done)
        assert done.stderr.startswith("orchd: ")


def test_help_lists_every_command() -> None:
    done = run("--help")
    assert done.returncode == 0
    for name in ("workflows", "start", "ps", "show", "resume", "retry", "abort", "schedules"):
        assert name in done.stdout
    assert "/run/orchd/orchd.sock" in done.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("orchd")
    if not script.exists():
        pytest.skip("the orchd console script is not installed in this environment")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stdout.startswith("orchd ")
