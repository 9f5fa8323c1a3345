from __future__ import annotations

import os
import tomllib
import typing
from pathlib import Path

import msgspec
import pytest

from orchd import configfile
from orchd.config import (
    Config,
    check_database_path,
    load_config,
    parse_duration,
    parse_listen,
    schedule_specs,
)
from orchd.errors import ConfigError
from orchd.settings import HttpSettings, LimitSpec, TcpSettings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def write(tmp_path: Path):
    def write(text: str, name: str = "orchd.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Whatever the test machine has in /etc/orchd must not leak into these tests.
    monkeypatch.setattr(configfile, "SYSTEM_CONFIG", str(tmp_path / "absent" / "orchd.toml"))


def error_of(path: Path, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={}, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_without_a_file() -> None:
    loaded = load_config(env={})
    assert loaded.path is None
    c = loaded.config
    # make run's one schedule (issue 30 item 9), else the defaults
    assert [(x.name, x.workflow, str(x.every), x.input) for x in c.schedules] == [
        ("validate_nodes", "validate_subscriptions", "10m", {"product": "node"})
    ]
    assert msgspec.structs.replace(c, schedules=[]) == Config(workflows=["orchd.examples"])
    assert (c.database, c.socket, c.workflows) == ("./orchd.db", "./orchd.sock", ["orchd.examples"])
    assert c.listen is None and c.token_file is None
    assert c.synchronous == "FULL" and c.log_level == "info" and c.watchdog is True
    assert c.grace_period == 10 and c.max_body == 1048576
    assert c.socket_mode_bits == 0o660
    assert (c.retry_delay, c.retry_max_delay) == (5, 600)
    assert c.retry_max_attempts == 10 and c.step_timeout is None
    assert c.http == HttpSettings(limit=1000, limit_per_host=100, retries=3)
    assert (c.http.timeout, c.http.connect_timeout) == (30, 10)


def test_empty_file_gives_defaults(write) -> None:
    loaded = load_config(write(""), env={})
    assert loaded.config == Config()
    assert loaded.source == str(loaded.path)


def test_a_file_without_workflows_loads_no_examples(write) -> None:
    assert load_config(write("log_level = 'debug'"), env={}).config.workflows == []


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("database = 1", "database"),
        ('workflows = "orchd.examples"', "workflows"),
        ("workflows = [1]", "workflows[0]"),
        ('max_body = "1MiB"', "max_body"),
        ('watchdog = "yes"', "watchdog"),
        ('synchronous = "OFF"', "synchronous"),
        ('log_level = "verbose"', "log_level"),
        ("http = 3", "http"),
        ('http.limit = "many"', "http.limit"),
        ("http.retries = -1", "http.retries"),
        ("[[schedules]]\nworkflow = 5\nevery = '5m'", "schedules[0].workflow"),
        ("[[schedules]]\nworkflow = 'w'\nevery = '5m'\nenabled = 1", "schedules[0].enabled"),
        ("[[schedules]]\nworkflow = 'w'\nevery = '5m'\ninput = []", "schedules[0].input"),
    ],
)
def test_type_error_names_file_and_key(write, text: str, key: str) -> None:
    path = write(text)
    assert error_of(path).startswith(f"{path}: {key}: ")


def test_duration_given_as_number_says_to_use_a_string(write) -> None:
    path = write("grace_period = 10")
    assert error_of(path) == (
        f'{path}: grace_period: expected a duration string such as "30s", got int'
    )


def test_enum_error_lists_allowed_values(write) -> None:
    path = write('log_level = "verbose"')
    assert "(one of: debug, info, warning, error)" in error_of(path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 'blue'", "colour"),
        ("[http]\nlimt = 5", "http.limt"),
        ("[[schedules]]\nworkflow = 'w'\nevery = '5m'\nevry = '1m'", "schedules[0].evry"),
    ],
)
def test_unknown_key(write, text: str, key: str) -> None:
    path = write(text)
    assert error_of(path).startswith(f"{path}: {key}: unknown key")  # and maybe a near key


def test_missing_schedule_workflow(write) -> None:
    path = write("[[schedules]]\nevery = '5m'")
    assert error_of(path) == f"{path}: schedules[0].workflow: missing required key"


def test_bad_duration(write) -> None:
    path = write("[[schedules]]\nworkflow = 'w'\nevery = 'fivem'")
    assert error_of(path) == (
        f"{path}: schedules[0].every: invalid duration 'fivem' (use e.g. 30s, 5m, 1h)"
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[[schedules]]\nworkflow = 'w'\nevery = '0s'", "schedules[0].every"),
        ("http.timeout = '0'", "http.timeout"),
        ("step_timeout = '0ms'", "step_timeout"),
    ],
)
def test_zero_duration_where_meaningless(write, text: str, key: str) -> None:
    path = write(text)
    assert error_of(path).startswith(f"{path}: {key}: duration must be greater than zero")


def test_retry_max_delay_below_retry_delay(write) -> None:
    path = write("retry_delay = '1m'\nretry_max_delay = '30s'")
    assert error_of(path).startswith(f"{path}: retry_max_delay: ")


@pytest.mark.parametrize("cron", ["* * *", "61 * * * *", "0 0 30 2 *", "every minute"])
def test_bad_cron(write, cron: str) -> None:
    path = write(f"[[schedules]]\nworkflow = 'w'\ncron = '{cron}'")
    assert error_of(path).startswith(f"{path}: schedules[0].cron: invalid cron expression '{cron}'")


def test_good_cron(write) -> None:
    path = write("[[schedules]]\nworkflow = 'w'\ncron = '*/5 * * * 1-5'")
    (entry,) = schedule_specs(load_config(path, env={}).config)
    assert entry.cron == "*/5 * * * 1-5" and entry.every is None


def test_every_and_cron_both(write) -> None:
    path = write("[[schedules]]\nworkflow = 'w'\nevery = '5m'\ncron = '* * * * *'")
    assert error_of(path) == (
        f"{path}: schedules[0]: set exactly one of 'every' or 'cron' (both given)"
    )


def test_every_and_cron_neither(write) -> None:
    path = write("[[schedules]]\nworkflow = 'w'")
    assert "(neither given)" in error_of(path)


def test_schedule_name_defaults_to_workflow(write) -> None:
    path = write("[[schedules]]\nworkflow = 'w'\nevery = '1h30m'\njitter = '250ms'")
    config = load_config(path, env={}).config
    (entry,), (spec,) = config.schedules, schedule_specs(config)
    assert entry.name == spec.name == "w" and spec.every_text == "1h30m"
    assert (spec.every, spec.jitter, spec.misfire_grace) == (
        5400,
        0.25,
        300,
    )
    assert entry.enabled and entry.input == {} and entry.timezone.key == "UTC"


def test_duplicate_schedule_names(write) -> None:
    path = write(
        "[[schedules]]\nworkflow = 'w'\nevery = '5m'\n"
        "[[schedules]]\nworkflow = 'x'\nname = 'y'\nevery = '5m'\n"
        "[[schedules]]\nworkflow = 'w'\ncron = '0 * * * *'\n"
    )
    assert error_of(path).startswith(
        f"{path}: schedules[2].name: duplicate schedule name 'w' (also schedules[0]"
    )


def test_timezone(write) -> None:
    path = write("[[schedules]]\nworkflow = 'w'\ncron = '0 2 * * *'\ntimezone = 'Europe/Amsterdam'")
    (entry,) = schedule_specs(load_config(path, env={}).config)
    assert entry.timezone.key == "Europe/Amsterdam"


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../etc/passwd", ""])
def test_unknown_timezone(write, zone: str) -> None:
    path = write(f"[[schedules]]\nworkflow = 'w'\nevery = '1m'\ntimezone = '{zone}'")
    assert error_of(path).startswith(f"{path}: schedules[0].timezone: unknown time zone")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8470", ("127.0.0.1", 8470)),
        ("localhost:80", ("localhost", 80)),
        ("orchd.example.net:65535", ("orchd.example.net", 65535)),
        ("[::1]:8470", ("::1", 8470)),
        ("[fe80::1]:0", ("fe80::1", 0)),
    ],
)
def test_listen_parsing(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text", ["8470", ":8470", "localhost", "::1:8470", "[::1]8470", "[nope]:1", "h:65536", "h:-1"]
)
def test_bad_listen(write, tmp_path: Path, text: str) -> None:
    token = tmp_path / "token"
    token.write_text("secret\n")
    token.chmod(0o600)  # a group/world-readable token file is refused
    path = write(f"listen = '{text}'\ntoken_file = '{token}'")
    assert error_of(path).startswith(f"{path}: listen: ")


def test_listen_address_property(write, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  secret\n")
    token.chmod(0o600)
    loaded = load_config(write(f"listen = '[::1]:8470'\ntoken_file = '{token}'"), env={})
    assert loaded.config.listen_address == ("::1", 8470)
    assert loaded.token_path == token and loaded.read_token() == "secret"


def test_token_file_required_with_listen(write) -> None:
    path = write("listen = '127.0.0.1:8470'")
    assert error_of(path).startswith(f"{path}: token_file: required when listen is set")


def test_token_from_systemd_credential(write, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "token").write_text("from-credential")
    (credentials / "token").chmod(0o400)  # as systemd makes credentials
    path = write("listen = '127.0.0.1:8470'")
    loaded = load_config(path, env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert loaded.read_token() == "from-credential"


def test_missing_token_file(write, tmp_path: Path) -> None:
    path = write(f"token_file = '{tmp_path / 'nope'}'")
    assert error_of(path) == f"{path}: token_file: file not found: {tmp_path / 'nope'}"
    assert load_config(path, env={}, check_token=False).token_path is None


@pytest.mark.parametrize("mode", ["660", "0o640", "0600"])
def test_socket_mode(write, mode: str) -> None:
    loaded = load_config(write(f"socket_mode = '{mode}'"), env={})
    assert loaded.config.socket_mode_bits == int(mode.removeprefix("0o"), 8)


@pytest.mark.parametrize("mode", ["rw-rw----", "0800", "1777", ""])
def test_bad_socket_mode(write, mode: str) -> None:
    path = write(f"socket_mode = '{mode}'")
    assert error_of(path).startswith(f"{path}: socket_mode: invalid file mode")


def test_bad_workflow_module_name(write) -> None:
    path = write("workflows = ['orchd.examples', 'my-workflows']")
    assert error_of(path) == f"{path}: workflows[1]: invalid module name 'my-workflows'"


def test_systemd_dir_resolution(write, tmp_path: Path) -> None:
    path = write("database = 'db/orchd.db'\nsocket = 'orchd.sock'")
    env = {
        "INVOCATION_ID": "0123",
        "STATE_DIRECTORY": "/var/lib/orchd:/var/lib/other",
        "RUNTIME_DIRECTORY": "/run/orchd",
    }
    loaded = load_config(path, env=env)
    assert loaded.systemd
    assert loaded.config.database == "/var/lib/orchd/db/orchd.db"
    assert loaded.config.socket == "/run/orchd/orchd.sock"


def test_systemd_keeps_absolute_and_memory_paths(write) -> None:
    path = write("database = ':memory:'\nsocket = '/tmp/x.sock'")
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "STATE_DIRECTORY": "/var/lib/orchd"}
    loaded = load_config(path, env={**env, "RUNTIME_DIRECTORY": "/run/orchd"})
    assert (loaded.config.database, loaded.config.socket) == (":memory:", "/tmp/x.sock")


def test_relative_paths_kept_outside_systemd(write) -> None:
    loaded = load_config(write("database = 'db/orchd.db'"), env={"STATE_DIRECTORY": "/x"})
    assert loaded.config.database == "db/orchd.db" and not loaded.systemd


def test_system_config_used_under_systemd(monkeypatch: pytest.MonkeyPatch, write) -> None:
    path = write("log_level = 'debug'", name="system.toml")
    monkeypatch.setattr(configfile, "SYSTEM_CONFIG", str(path))
    assert load_config(env={"INVOCATION_ID": "1"}).path == path
    assert load_config(env={}).path is None


def test_orchd_config_env(write) -> None:
    path = write("log_level = 'warning'")
    loaded = load_config(env={"ORCHD_CONFIG": str(path)})
    assert loaded.path == path and loaded.config.log_level == "warning"


def test_explicit_path_beats_orchd_config(write) -> None:
    explicit = write("log_level = 'error'", name="explicit.toml")
    loaded = load_config(explicit, env={"ORCHD_CONFIG": str(write("", name="env.toml"))})
    assert loaded.config.log_level == "error"


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_missing_given_file(tmp_path: Path, how: str) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="file not found"):
        if how == "argument":
            load_config(missing, env={})
        else:
            load_config(env={"ORCHD_CONFIG": str(missing)})


def test_bundled_example_loads() -> None:
    loaded = load_config(REPO / "config" / "orchd.toml", env={})
    assert loaded.config.database == "/var/lib/orchd/orchd.db"
    # Production config (README "Operations"): no example workflows, no schedules that need them.
    assert loaded.config.workflows == [] and loaded.config.schedules == []


def keys_of(struct: type[msgspec.Struct], prefix: str = "") -> list[tuple[str, object]]:
    """Every key ``struct`` declares, with the tables and lists of tables in it, as
    ``("http.timeout", default)``: what the one declaration of the settings says."""
    found: list[tuple[str, object]] = []
    hints = typing.get_type_hints(struct)
    for field in msgspec.structs.fields(struct):
        key = f"{prefix}{field.encode_name}"
        default = field.default
        if field.default_factory is not msgspec.NODEFAULT:
            default = field.default_factory()
        found.append((key, default))
        kind = hints[field.name]
        if typing.get_origin(kind) is list:
            [kind] = typing.get_args(kind)
        if key == "limits":
            kind = LimitSpec
        if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            found += keys_of(kind, f"{key}.")
    return found


def test_bundled_example_mentions_every_key() -> None:
    text = (REPO / "config" / "orchd.toml").read_text()
    # A table's name as a word ([http]), a key as it is set: "timeout =".
    wanted = {
        key: key if "." not in key else f"{key.rpartition('.')[2]} =" for key, _ in keys_of(Config)
    }
    assert [key for key, words in wanted.items() if words not in text] == []


def readme_config_block() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Configuration") :]
    return section[section.index("```toml\n") + len("```toml\n") : section.index("```\n")]


@pytest.mark.parametrize("where", ["config/orchd.toml", "README"])
def test_documented_values_are_the_declared_defaults(write, where: str) -> None:
    # Both say the values they show are the defaults, but for the paths and workflows they
    # name: what they show is checked against the one declaration, so they cannot drift.
    text = (REPO / where).read_text() if where != "README" else readme_config_block()
    given = tomllib.loads(text)
    loaded = load_config(write(text), env={}).config
    noted = {"database", "socket", "workflows", "limits", "schedules"}
    differs = []
    for key, default in keys_of(Config):
        table, _, leaf = key.rpartition(".")
        section = given.get(table, {}) if table else given
        if key.partition(".")[0] in noted or not isinstance(section, dict) or leaf not in section:
            continue
        value = getattr(getattr(loaded, table) if table else loaded, leaf)
        if value != default:
            differs.append(f"{key} = {section[leaf]!r} (declared default {default})")
    assert differs == []


def test_toml_syntax_error_names_the_line(write) -> None:
    path = write("database = 'x.db'\n\nsocket = \n")
    message = error_of(path)
    assert message.startswith(f"{path}: line 3: TOML syntax error: ")


def test_non_utf8_file(write, tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n")
    assert error_of(path).startswith(f"{path}: cannot read: ")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1d2h3m4s5ms", 93784.005),
        ("1h 30m", 5400),
        ("1.5h", 5400),
        ("30", 30),
        ("0.5", 0.5),
        ("0s", 0),
        (" 10s ", 10),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "fivem", "5 minutes", "-5s", "5x", "m5", "1h30", "ms", "1e3s"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .* \(use e\.g\. 30s, 5m, 1h\)"):
        parse_duration(text)


def test_check_database_path_ok(tmp_path: Path) -> None:
    check_database_path(tmp_path / "orchd.db")
    check_database_path(":memory:")


def test_check_database_path_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^<default config>: database: directory .* does not"):
        check_database_path(tmp_path / "nope" / "orchd.db")


def test_check_database_path_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(ConfigError, match=r"^/etc/orchd/orchd.toml: database: .* not a regular"):
        check_database_path(tmp_path / "dir", source="/etc/orchd/orchd.toml")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any directory")
def test_check_database_path_read_only_directory(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="is not writable"):
            check_database_path(tmp_path / "orchd.db")
    finally:
        tmp_path.chmod(0o700)


def test_toml_error_at_end_of_file_names_the_last_line(write) -> None:
    path = write("a = 1\nworkflows = [1,")
    assert error_of(path) == f"{path}: line 2: TOML syntax error: Invalid value (at end of file)"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_token_file_readable_by_group_or_others_is_refused(
    write, tmp_path: Path, mode: int
) -> None:
    token = tmp_path / "token"
    token.write_text("x" * 40)
    token.chmod(mode)
    loaded = load_config(write(f"listen = '127.0.0.1:8470'\ntoken_file = '{token}'"), env={})
    with pytest.raises(ConfigError) as caught:
        loaded.read_token()
    assert str(caught.value).startswith(f"{loaded.source}: token_file: {token} is readable")


@pytest.mark.parametrize(
    ("token", "weak"),
    [("a" * 31, True), ("a" * 32, False), ("Zz0_-" * 4, True), ("Zz0_-" * 4 + "ab", False)],
)
def test_a_token_under_128_bits_is_warned_about(
    write, tmp_path: Path, caplog: pytest.LogCaptureFixture, token: str, weak: bool
) -> None:
    path = tmp_path / "token"
    path.write_text(token)
    path.chmod(0o600)
    loaded = load_config(write(f"listen = '127.0.0.1:8470'\ntoken_file = '{path}'"), env={})
    with caplog.at_level("WARNING", logger="orchd.config"):
        assert loaded.read_token() == token
    assert ("fewer than 128 bits" in caplog.text) is weak


def test_tcp_limits_have_safe_defaults_and_come_in_seconds(write) -> None:
    assert load_config(env={}).config.tcp == TcpSettings(
        max_connections=512, max_per_peer=64, header_timeout=5.0
    )
    path = write("[tcp]\nmax_connections = 10\nmax_per_peer = 2\nheader_timeout = '1500ms'")
    assert load_config(path, env={}).config.tcp == TcpSettings(
        max_connections=10, max_per_peer=2, header_timeout=1.5
    )


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ("header_timeout = '0s'", "tcp.header_timeout: duration must be greater than zero"),
        ("header_timeout = 5", "tcp.header_timeout: expected a duration string"),
        ("max_connections = 0", "tcp.max_connections: expected int >= 1"),
        ("max_connections = 4\nmax_per_peer = 8", "tcp.max_per_peer: 8 is more than"),
        ("backlog = 5", "tcp.backlog: unknown key"),
    ],
)
def test_bad_tcp_limits(write, table: str, problem: str) -> None:
    path = write(f"[tcp]\n{table}")
    assert error_of(path).startswith(f"{path}: {problem}")
