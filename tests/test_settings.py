"""Settings objects built once from the config and handed over whole."""

from __future__ import annotations

import pytest

from orchd.config import Config, HttpConfig, http_settings
from orchd.http import HttpClient
from orchd.settings import HttpSettings


def test_http_settings_come_from_the_config_in_seconds() -> None:
    config = Config(
        http=HttpConfig(limit=7, limit_per_host=3, timeout="1m", connect_timeout="250ms")
    )
    assert http_settings(config) == HttpSettings(
        limit=7, limit_per_host=3, timeout=60.0, connect_timeout=0.25, retries=3
    )


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
