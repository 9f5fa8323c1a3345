"""Each setting declared once (orchd/settings.py): the config file decodes into the objects the
running code reads, durations included, and a reload's keys are marked where they are declared."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchd import configfile
from orchd.config import RELOADABLE, Config, load_config
from orchd.engine import Engine
from orchd.http import HttpClient
from orchd.settings import (
    Duration,
    EngineSettings,
    HttpSettings,
    PositiveDuration,
    RetentionSettings,
)

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(configfile, "SYSTEM_CONFIG", str(tmp_path / "absent" / "orchd.toml"))


def test_the_file_decodes_durations_into_the_settings_the_code_reads(tmp_path: Path) -> None:
    path = tmp_path / "orchd.toml"
    path.write_text(
        'grace_period = "1h30m"\nstep_timeout = "15m"\n[http]\nlimit = 7\n'
        'timeout = "1m"\nconnect_timeout = "250ms"\n[retention]\ntasks = "0"\n'
    )
    config = load_config(path, env={}).config
    assert config.http == HttpSettings(limit=7, timeout=60.0, connect_timeout=0.25)
    assert (config.grace_period, config.step_timeout, config.retention.tasks) == (5400, 900, 0)
    # Seconds to compute with, the text as written to show.
    assert isinstance(config.http.timeout, float) and str(config.http.timeout) == "1m"
    assert f"{config.grace_period}" == "1h30m" and config.grace_period / 60 == 90


def test_durations_given_in_code_are_the_same_kind_as_the_files() -> None:
    http = HttpSettings(timeout=3.0, connect_timeout="2m")  # type: ignore[arg-type]
    assert (http.timeout, http.connect_timeout) == (3.0, 120.0)
    assert isinstance(http.connect_timeout, PositiveDuration) and str(http.timeout) == "3s"
    assert Duration("1m") == Duration(60) and RetentionSettings(tasks=0).tasks == 0  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="greater than zero, got '0s'"):
        HttpSettings(timeout=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid duration 'soon'"):
        EngineSettings(grace_period="soon")  # type: ignore[arg-type]


def test_the_keys_a_reload_applies_are_the_ones_marked_so() -> None:
    assert RELOADABLE == {
        "log_level",
        "schedules",
        "grace_period",
        "step_timeout",
        "retry_delay",
        "retry_max_delay",
        "retry_max_attempts",
        "limits",
    }
    assert RELOADABLE <= set(Config.__struct_fields__)


def test_the_engine_is_given_the_config_itself(tmp_path: Path) -> None:
    path = tmp_path / "orchd.toml"
    path.write_text('retry_delay = "2s"\n[retention]\nworkflows = "0"\nevents = 50\n')
    config = load_config(path, env={}).config
    engine = Engine(str(tmp_path / "orchd.db"), settings=config)
    assert engine.settings.retry_delay == 2.0
    kept = engine.retention(now=1000.0)
    assert kept.tasks_before == 1000.0 - 7 * 86400 and kept.workflows_before is None
    # Embedded engines and tests still name single settings, in seconds.
    assert Engine(":memory:", grace_period=0.5).settings.grace_period == 0.5


def test_the_http_client_takes_one_settings_object() -> None:
    settings = HttpSettings(limit=5, limit_per_host=2, timeout=3.0, connect_timeout=1.0, retries=0)
    client = HttpClient(settings)
    assert client.settings == settings
    assert (client.limit, client.limit_per_host, client.timeout) == (5, 2, 3.0)
    assert (client.connect_timeout, client.retries) == (1.0, 0)


def test_keyword_limits_still_work_and_win_over_settings() -> None:
    assert HttpClient(limit=9).settings == HttpSettings(limit=9)
    assert HttpClient(HttpSettings(limit=5), retries=1).settings == HttpSettings(limit=5, retries=1)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        HttpClient(HttpSettings(limit=0))
