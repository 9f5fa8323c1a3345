"""The single-instance lock: one daemon per database file, whatever name reaches the file.

Real daemon subprocesses: a second daemon must refuse (exit 2, one line naming the database)
before it touches its socket path, so the first one keeps serving on its own socket.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from support.daemons import DaemonFactory, DaemonProcess


def only_line(daemon: DaemonProcess) -> str:
    lines = daemon.last_run_stderr().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def assert_refused_for_the_database(second: DaemonProcess, database: str) -> None:
    assert second.run_to_exit() == 2
    line = only_line(second)
    assert line.startswith("orchd: ") and f"database: {database} is in use" in line


def test_a_second_daemon_reaching_the_database_through_a_symlink_refuses(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    first = daemon_factory(name="a")
    link = tmp_path / "link.db"
    link.symlink_to(first.db)
    second = daemon_factory({"database": str(link)}, name="b", start=False)
    assert_refused_for_the_database(second, str(link))
    assert first.request("GET", "/api/health")[0] == 200


def test_a_second_daemon_reaching_the_database_through_a_hard_link_refuses(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    first = daemon_factory(name="a")
    link = tmp_path / "hard.db"
    os.link(first.db, link)
    second = daemon_factory({"database": str(link)}, name="b", start=False)
    assert_refused_for_the_database(second, str(link))
    assert first.request("GET", "/api/health")[0] == 200


def test_a_second_daemon_on_the_same_database_leaves_the_first_ones_socket(
    daemon_factory: DaemonFactory,
) -> None:
    first = daemon_factory()
    inode = os.stat(first.socket).st_ino
    second = daemon_factory(name="d", start=False)  # same directory: database and socket
    assert_refused_for_the_database(second, second.db)
    assert os.stat(first.socket).st_ino == inode
    assert first.request("GET", "/api/health")[0] == 200
    assert first.stop() == 0


def test_a_failed_start_undoes_the_lock_and_the_socket_file(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-of-more-than-128-bits\n")
    # Readable by others, the token is refused before the bind; short, it is warned about.
    token_file.chmod(0o600)
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        daemon = daemon_factory(
            {"listen": f"127.0.0.1:{port}", "token_file": str(token_file)}, start=False
        )
        # Locked the database and bound the Unix socket, then failed on the TCP port.
        assert daemon.run_to_exit() == 2
        assert f"cannot bind 127.0.0.1:{port}" in only_line(daemon)
        assert not os.path.exists(daemon.socket)
    finally:
        busy.close()
    daemon.start()  # the lock was released
