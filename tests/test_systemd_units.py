"""The shipped systemd units, checked by systemd's own tools.

``systemd-analyze verify`` exits 0 on most problems (an unknown key is only a warning), so
these tests fail on any output at all. The one thing verify cannot know on a build machine
is the installed binary: the copy it checks names a stub instead of /usr/local/bin/orchd,
and nothing else is changed. (systemd 252's verify does not look up User=/SocketUser=; the
sysusers file that creates the user is checked on its own, in a scratch root.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from orchd.settings import HttpSettings, TcpSettings

UNITS = Path(__file__).resolve().parent.parent / "systemd"
INSTALLED_BINARY = "/usr/local/bin/orchd"
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """Copies of the units, the service's ExecStart pointing at an existing executable."""
    stub = tmp_path / "bin" / "orchd"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    service = (UNITS / "orchd.service").read_text()
    assert service.count(f"ExecStart={INSTALLED_BINARY} ") == 1
    (units / "orchd.service").write_text(
        service.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={stub} ")
    )
    shutil.copy(UNITS / "orchd.socket", units / "orchd.socket")
    return units


def verify(*units: Path) -> str:
    result = run("systemd-analyze", "verify", "--man=no", *map(str, units))
    return (result.stdout + result.stderr).strip() + (
        "" if result.returncode == 0 else "\n(exit status non-zero)"
    )


@pytest.mark.parametrize("unit", ["orchd.service", "orchd.socket"])
def test_unit_verifies_without_any_output(unit_dir: Path, unit: str) -> None:
    assert verify(unit_dir / unit) == ""


def test_verify_would_report_a_broken_unit(unit_dir: Path) -> None:
    # Guards the test above: an empty output must mean "checked and fine".
    service = unit_dir / "orchd.service"
    service.write_text(
        service.read_text().replace("UMask=0007", "UMask=0007\nProtectEverything=yes")
    )
    assert "Unknown key" in verify(service)


def test_security_exposure(tmp_path: Path) -> None:
    result = run(
        "systemd-analyze",
        "security",
        "--offline=yes",
        "--no-pager",
        f"--threshold={int(MAX_EXPOSURE * 10)}",
        str(UNITS / "orchd.service"),
    )
    found = re.search(r"Overall exposure level for orchd\.service: (\d+\.\d+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stderr


def test_service_settings_the_daemon_relies_on() -> None:
    text = (UNITS / "orchd.service").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z]\w*=", line)
    )
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    # Longer than the daemon's default 10 s grace period, so SIGKILL never cuts it short.
    assert settings["TimeoutStopSec"] == "30s"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "PrivateNetwork" not in settings
    for directory in ("StateDirectory", "RuntimeDirectory", "ConfigurationDirectory"):
        assert settings[directory] == "orchd"


def test_the_open_files_limit_has_room_for_the_connection_limits() -> None:
    text = (UNITS / "orchd.service").read_text()
    [limit] = re.findall(r"^LimitNOFILE=(\d+)$", text, re.MULTILINE)
    # One value sets soft and hard alike: the daemon may not raise it under the unit's
    # system call filter. Ten times the default HTTP pool and TCP cap leaves room for a
    # larger pool, several listeners, Unix-socket clients and SQLite.
    assert int(limit) >= 10 * (HttpSettings().limit + TcpSettings().max_connections)


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = run("systemd-sysusers", f"--root={tmp_path}", str(UNITS / "orchd.sysusers"))
    assert result.returncode == 0, result.stderr
    users = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    assert users["orchd"][4:6] == ["orchd workflow daemon", "/var/lib/orchd"]
    groups = (tmp_path / "etc/group").read_text().splitlines()
    assert any(line.startswith("orchd:") for line in groups)


def _settings(unit: str) -> dict[str, str]:
    text = (UNITS / unit).read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z]\w*=", line))


def test_stopping_the_service_keeps_the_activation_socket_path() -> None:
    # systemd removes a RuntimeDirectory= when its service stops unless told to keep it; the
    # socket unit's listening socket lives there, so its path would vanish after one restart.
    service, socket_unit = _settings("orchd.service"), _settings("orchd.socket")
    runtime = Path("/run") / service["RuntimeDirectory"]
    assert Path(socket_unit["ListenStream"]).parent == runtime
    assert service["RuntimeDirectoryPreserve"] == "yes"
