"""The daemon and its config file: what a file loads, and what it leaves out."""

from __future__ import annotations

import signal

from support.daemons import DaemonFactory


def test_a_config_file_without_workflows_starts_with_none_and_warns(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory({"workflows": None})  # None removes the key from the file
    status, body = daemon.request("GET", "/api/workflows")
    assert status == 200 and body == []
    assert "no workflows loaded" in daemon.stderr
    assert daemon.stop() == 0


def test_a_reload_names_durations_as_written_and_hands_the_engine_the_new_ones(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory({"retry_delay": "5s"})
    # grace_period changes; retry_delay is the same duration written another way; a
    # [retention] duration needs a restart.
    daemon.write_config(
        {"grace_period": "1m", "retry_delay": "5000ms"}, raw='[retention]\ntasks = "1d"\n'
    )
    daemon.send_signal(signal.SIGHUP)
    err = daemon.wait_for_log("reload: ")
    line = next(line for line in err.splitlines() if "reload: " in line)
    assert "grace_period 5s -> 1m" in line and "retry_delay" not in line
    assert "restart needed for: retention" in line
    assert daemon.stop() == 0
    # The engine stops with the reloaded grace period: it was given the new settings.
    assert "grace=60s" in daemon.last_run_stderr()
