"""Which config file is read: one rule for the daemon and the clients (orchd.configfile)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchd import configfile
from orchd.client import read_config, resolve_endpoint
from orchd.config import load_config
from orchd.configfile import find_config
from orchd.store.maintenance import database_path


@pytest.fixture
def system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A stand-in for /etc/orchd/orchd.toml naming a socket and a database."""
    path = tmp_path / "etc" / "orchd.toml"
    path.parent.mkdir()
    path.write_text('socket = "/run/orchd/orchd.sock"\ndatabase = "/var/lib/orchd/orchd.db"\n')
    monkeypatch.setattr(configfile, "SYSTEM_CONFIG", str(path))
    return path


@pytest.mark.parametrize("system_default", [True, False])
def test_an_explicit_path_wins(system_config: Path, system_default: bool) -> None:
    env = {"ORCHD_CONFIG": "/from/env.toml"}
    assert find_config("/given.toml", env, system_default=system_default) == "/given.toml"


@pytest.mark.parametrize("system_default", [True, False])
def test_orchd_config_comes_next(system_config: Path, system_default: bool) -> None:
    env = {"ORCHD_CONFIG": "/from/env.toml"}
    assert find_config(None, env, system_default=system_default) == "/from/env.toml"


def test_the_system_config_only_when_the_caller_allows_it(system_config: Path) -> None:
    assert find_config(None, {}, system_default=True) == str(system_config)
    assert find_config(None, {}, system_default=False) is None


def test_no_system_config_file_means_none(system_config: Path) -> None:
    system_config.unlink()
    assert find_config(None, {}, system_default=True) is None


def test_the_daemon_reads_the_system_config_only_under_systemd(system_config: Path) -> None:
    assert load_config(env={}).path is None
    assert load_config(env={"INVOCATION_ID": "x"}, check_token=False).path == system_config


def test_the_cli_finds_the_services_socket_without_systemd(system_config: Path) -> None:
    assert read_config(None, {})["socket"] == "/run/orchd/orchd.sock"
    assert resolve_endpoint(environ={}).socket_path == "/run/orchd/orchd.sock"


def test_backup_and_check_find_the_services_database(system_config: Path) -> None:
    assert database_path(None, None, {}) == "/var/lib/orchd/orchd.db"
