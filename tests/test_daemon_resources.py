"""The ``resources`` config key: factories the daemon enters and hands to steps by type."""

from __future__ import annotations

import os

import pytest
from support.daemons import DaemonFactory

RESOURCE = "resource_flows:greeter"


def test_a_step_receives_a_configured_resource(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"workflows": ["resource_flows"], "resources": [RESOURCE]})
    pid = daemon.start_process("greet_with_resource")
    process = daemon.wait_process(pid)
    assert process["state"]["greeting"] == "hello from a resource"
    assert not (daemon.test_dir / "greeter.closed").exists()
    assert daemon.stop() == 0
    assert (daemon.test_dir / "greeter.closed").exists()  # exited with the daemon


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("no_such_module:factory", "cannot import 'no_such_module:factory'"),
        ("resource_flows:missing", "cannot import 'resource_flows:missing'"),
        ("resource_flows:NOT_CALLABLE", "is not callable"),
        ("resource_flows:not_a_mapping", "does not yield a mapping of types"),
        ("resource_flows", "expected 'module:callable'"),
    ],
)
def test_a_bad_resource_is_a_config_error_before_the_database_opens(
    daemon_factory: DaemonFactory, entry: str, problem: str
) -> None:
    daemon = daemon_factory(
        {"workflows": ["resource_flows"], "resources": [RESOURCE, entry]}, start=False
    )
    assert daemon.run_to_exit() == 2
    lines = daemon.last_run_stderr().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"orchd: {daemon.config_path}: resources[1]: ")
    assert problem in lines[0]
    # The lock creates an empty database file; nothing was written into it.
    assert not os.path.exists(daemon.db) or os.path.getsize(daemon.db) == 0
    assert not os.path.exists(daemon.socket)
