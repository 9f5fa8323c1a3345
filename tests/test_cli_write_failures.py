"""The CLI on a full disk (issue 26 item 15): one line on stderr and exit 6, "a write on this
machine failed", never a traceback nor 1 ("the daemon refused"). Its output goes to
``/dev/full`` (every write fails with ENOSPC) or to a full tmpfs; ``orchd backup`` writes its
copy to a full tmpfs and leaves nothing there.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemons import ROOT, DaemonFactory, DaemonProcess

EXIT_LOCAL = 6
FULL = "No space left on device"

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (Linux)")


def orchd(*args: str, stdout: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchd", *args],
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    d = daemon_factory()
    d.wait_process(d.start_process("quick"))
    return d


@pytest.mark.parametrize(
    "command",
    [["workflows"], ["ps", "--json"], ["health"], ["show", "PID"], ["--help"]],
)
def test_output_to_a_full_device_is_one_line_and_exit_6(
    daemon: DaemonProcess, command: list[str]
) -> None:
    pid = daemon.wait_process(daemon.start_process("quick"))["id"]
    args = [a.replace("PID", pid) for a in command]
    with open("/dev/full", "w") as full:
        done = orchd("--socket", daemon.socket, *args, stdout=full.fileno())
    assert done.returncode == EXIT_LOCAL, done.stderr
    assert done.stderr == f"orchd: cannot write the output: {FULL}\n"


def test_the_exit_statuses_are_documented_alike() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "6 a write on this machine failed" in readme
    help_text = orchd("--help").stdout
    assert "6 a local write failed" in " ".join(help_text.split())


class Tmpfs:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fill(self) -> None:
        with (self.path / "filler").open("ab", buffering=0) as f:
            for size in (65536, 4096, 1):
                while True:
                    try:
                        f.write(b"\0" * size)
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC, exc
                        break


@pytest.fixture
def full_tmpfs(tmp_path: Path, daemon_factory: DaemonFactory) -> Iterator[Tmpfs]:
    path = tmp_path / "full"
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(path)]
    done = subprocess.run(mount, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        tmpfs = Tmpfs(path)
        tmpfs.fill()
        yield tmpfs
    finally:
        daemon_factory.close()
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_output_to_a_file_on_a_full_disk(daemon: DaemonProcess, full_tmpfs: Tmpfs) -> None:
    with (full_tmpfs.path / "processes.json").open("w") as out:
        done = orchd("--socket", daemon.socket, "ps", "--json", stdout=out.fileno())
    assert done.returncode == EXIT_LOCAL
    assert done.stderr == f"orchd: cannot write the output: {FULL}\n"


def test_a_backup_to_a_full_disk_is_one_line_and_exit_6(
    daemon: DaemonProcess, full_tmpfs: Tmpfs
) -> None:
    before = sorted(p.name for p in full_tmpfs.path.iterdir())
    target = full_tmpfs.path / "orchd-backup.db"
    done = orchd("backup", "--database", daemon.db, str(target))
    assert done.returncode == EXIT_LOCAL, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("orchd: backup: cannot write"), line
    assert "disk is full" in line or FULL in line, line
    assert sorted(p.name for p in full_tmpfs.path.iterdir()) == before  # nothing left


def test_a_backup_whose_report_cannot_be_written(daemon: DaemonProcess, tmp_path: Path) -> None:
    target = tmp_path / "orchd-backup.db"
    with open("/dev/full", "w") as full:
        done = orchd("backup", "--database", daemon.db, str(target), stdout=full.fileno())
    assert done.returncode == EXIT_LOCAL
    assert done.stderr == f"orchd: cannot write the output: {FULL}\n"
    assert target.stat().st_size > 0  # the backup itself was made
