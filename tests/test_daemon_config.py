"""The daemon and its config file: what a file loads, and what it leaves out."""

from __future__ import annotations

from daemon_util import DaemonFactory


def test_a_config_file_without_workflows_starts_with_none_and_warns(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory({"workflows": None})  # None removes the key from the file
    status, body = daemon.request("GET", "/api/workflows")
    assert status == 200 and body == []
    assert "no workflows loaded" in daemon.stderr
    assert daemon.stop() == 0
