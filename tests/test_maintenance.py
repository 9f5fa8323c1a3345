"""``orchd backup`` and ``orchd check``: an online backup of a busy daemon's database is a
consistent database, and every kind of damage ``check`` knows is found in a copy damaged on
purpose."""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.daemons import DaemonFactory

from orchd.engine import Engine
from orchd.store import maintenance
from orchd.store.sqlite import SCHEMA_VERSION

ORCHD_ENV = ("ORCHD_CONFIG", "ORCHD_SOCKET", "ORCHD_URL", "ORCHD_TOKEN", "STATE_DIRECTORY")


def orchd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ORCHD_ENV}
    return subprocess.run(
        [sys.executable, "-m", "orchd", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def rows(path: Path | str, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def count(path: Path | str) -> int:
    (n,) = rows(path, "SELECT count(*) FROM processes")[0]
    assert isinstance(n, int)
    return n


def test_checks_are_written_for_the_current_schema() -> None:
    assert maintenance.KNOWN_SCHEMA_VERSION == SCHEMA_VERSION


# --- a database with a little of everything, made once -------------------------------------------


async def _populate(path: str) -> None:
    async with Engine(database=path, workflows=["engine_flows"]) as engine:
        created = []
        for name in ("n1", "n2"):
            pid = await engine.start("create_node", {"name": name})
            created.append(await engine.wait(pid))
        sid = created[0].state["subscription_id"]
        await engine.wait(await engine.start("modify_node", {"subscription_id": sid}))
        await engine.wait(await engine.start("conditional_task"))


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "orchd.db"
    asyncio.run(_populate(str(path)))
    return path


@pytest.fixture
def damaged(sample_db: Path, tmp_path: Path) -> Callable[..., Path]:
    """``damaged(*statements)``: a copy of the sample database after running the statements."""

    def make(*statements: str) -> Path:
        copy = tmp_path / f"copy{len(list(tmp_path.glob('copy*.db')))}.db"
        shutil.copyfile(sample_db, copy)
        conn = sqlite3.connect(copy, isolation_level=None)
        try:
            for statement in statements:
                conn.execute(statement)
        finally:
            conn.close()
        return copy

    return make


def _ids(sample_db: Path) -> dict[str, str]:
    """Handy ids: a SYSTEM process, a CREATE process, a subscription."""
    (system,) = rows(sample_db, "SELECT id FROM processes WHERE target = 'SYSTEM'")[0]
    (create, sub) = rows(
        sample_db, "SELECT id, subscription_id FROM processes WHERE workflow = 'create_node'"
    )[0]
    return {"system": str(system), "create": str(create), "sub": str(sub)}


# --- check ---------------------------------------------------------------------------------------


def test_check_clean_database(sample_db: Path) -> None:
    done = orchd("check", "--database", str(sample_db))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no problems found" in done.stdout
    assert f"schema version: {SCHEMA_VERSION}" in done.stdout
    report = json.loads(orchd("check", "--database", str(sample_db), "--json").stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["integrity"] == ["ok"]
    assert report["counts"] == {"processes": 4, "steps": 15, "subscriptions": 2}


def _corruptions(ids: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """kind -> statements that cause exactly that kind of problem."""
    system, create, sub = ids["system"], ids["create"], ids["sub"]
    pk = f"(SELECT rowid FROM processes WHERE id = '{system}')"
    return {
        "step_without_process": (f"DELETE FROM processes WHERE id = '{system}'",),
        "link_without_process": (
            f"INSERT INTO subscription_processes VALUES ('{sub}', 'no-such-process')",
        ),
        "link_without_subscription": (
            f"INSERT INTO subscription_processes VALUES ('no-such-subscription', '{system}')",
        ),
        "process_without_subscription": (
            f"UPDATE processes SET subscription_id = 'gone' WHERE id = '{system}'",
        ),
        "seq_mismatch": (f"UPDATE processes SET seq = seq + 1 WHERE id = '{system}'",),
        "seq_gap": (
            f"UPDATE steps SET seq = seq + 10 WHERE process = {pk} "
            f"AND seq = (SELECT max(seq) FROM steps WHERE process = {pk})",
        ),
        "stuck_lock": (f"UPDATE subscriptions SET insync = 0 WHERE id = '{sub}'",),
        # A finished process keeps no branches: its fork's rows go at the join.
        "stray_branches": (
            f"INSERT INTO branches (process, path, status) VALUES ({pk}, 'Fan/0', 'done')",
        ),
        "bad_process_status": (f"UPDATE processes SET status = 'exploded' WHERE id = '{create}'",),
        "bad_step_status": (f"UPDATE steps SET status = 'meh' WHERE process = {pk} AND seq = 1",),
        "schema": (f"PRAGMA user_version = {SCHEMA_VERSION + 1}",),
        "integrity": (
            # The index now claims to sort by workflow while its entries are by status.
            "PRAGMA writable_schema = ON",
            "UPDATE sqlite_master SET sql = 'CREATE INDEX processes_by_status ON processes "
            "(workflow)' WHERE name = 'processes_by_status'",
        ),
    }


KINDS = [
    "step_without_process",
    "link_without_process",
    "link_without_subscription",
    "process_without_subscription",
    "seq_mismatch",
    "seq_gap",
    "stuck_lock",
    "stray_branches",
    "bad_process_status",
    "bad_step_status",
    "schema",
    "integrity",
]


@pytest.mark.parametrize("kind", KINDS)
def test_check_finds_damage(kind: str, sample_db: Path, damaged: Callable[..., Path]) -> None:
    copy = damaged(*_corruptions(_ids(sample_db))[kind])
    report = maintenance.check(str(copy))
    assert [p.kind for p in report.problems] == [kind], report
    assert report.problems[0].count >= 1
    assert report.problems[0].examples or kind == "schema"
    assert not report.ok


def test_check_cli_lists_problems(sample_db: Path, damaged: Callable[..., Path]) -> None:
    ids = _ids(sample_db)
    c = _corruptions(ids)
    copy = damaged(*c["stuck_lock"], *c["seq_mismatch"])
    done = orchd("check", "--database", str(copy))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "stuck_lock: 1 subscriptions locked" in done.stdout
    assert ids["sub"] in done.stdout and ids["system"] in done.stdout
    done = orchd("check", "--database", str(copy), "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert {p["kind"] for p in report["problems"]} == {"stuck_lock", "seq_mismatch"}
    assert report["problems"][0]["examples"]


def test_check_sees_the_wal(sample_db: Path, tmp_path: Path) -> None:
    # Damage committed to the WAL only (not yet checkpointed) is what a running daemon has.
    copy = tmp_path / "live.db"
    shutil.copyfile(sample_db, copy)
    writer = sqlite3.connect(copy, isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("UPDATE subscriptions SET insync = 0")
        assert (tmp_path / "live.db-wal").stat().st_size > 0
        report = maintenance.check(str(copy))
    finally:
        writer.close()
    assert [p.kind for p in report.problems] == ["stuck_lock"]
    assert report.problems[0].count == 2


@pytest.mark.parametrize("what", ["missing", "garbage", "directory", "empty-schema"])
def test_check_cannot_open(what: str, tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    if what == "garbage":
        path.write_bytes(b"this is not a database, not even close" * 100)
    elif what == "directory":
        path.mkdir()
    elif what == "empty-schema":
        sqlite3.connect(path).close()  # a zero-byte file: SQLite calls that an empty database
    done = orchd("check", "--database", str(path), "--json")
    if what == "empty-schema":
        assert done.returncode == 1
        assert json.loads(done.stdout)["problems"][0]["kind"] == "schema"
        return
    assert done.returncode == 2, done.stdout + done.stderr  # usage, not "unreachable" (#24)
    assert json.loads(done.stdout) == {"ok": False, "error": done.stderr.split(": ", 2)[2].strip()}
    assert str(path) in done.stderr
    assert not path.with_name("x.db-wal").exists()


def test_check_takes_the_database_from_the_config(sample_db: Path, tmp_path: Path) -> None:
    config = tmp_path / "orchd.toml"
    config.write_text(f'database = "{sample_db}"\n')
    done = orchd("--config", str(config), "check")
    assert done.returncode == 0, done.stderr
    assert str(sample_db) in done.stdout
    config.write_text('database = "rel/orchd.db"\n')
    (tmp_path / "rel").mkdir()
    shutil.copyfile(sample_db, tmp_path / "rel" / "orchd.db")
    done = orchd("check", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert maintenance.database_path(None, str(config), {"STATE_DIRECTORY": "/var/lib/o"}) == (
        "/var/lib/o/rel/orchd.db"
    )
    config.write_text('database = ":memory:"\n')
    done = orchd("check", "--config", str(config))
    assert done.returncode == 2 and "not a file" in done.stderr


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        (
            "postgresql://orchd@db.example.net:5432/orchd",
            "postgresql://orchd@db.example.net:5432/orchd",
        ),
        ("sqlite://rel.db", "/var/lib/o/rel.db"),
        ("sqlite:///abs/orchd.db", "/abs/orchd.db"),
    ],
)
def test_the_state_directory_anchors_only_a_relative_file(
    tmp_path: Path, database: str, expected: str
) -> None:
    # Under systemd a relative file is the service's StateDirectory's, as the daemon places it;
    # a PostgreSQL URL names a server, not a file under it (it was made a path there).
    config = tmp_path / "orchd.toml"
    config.write_text(f'database = "{database}"\n')
    env = {"STATE_DIRECTORY": "/var/lib/o"}
    assert maintenance.database_path(None, str(config), env, postgres=True) == expected


# --- backup --------------------------------------------------------------------------------------


def test_backup_refuses_to_overwrite(sample_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.db"
    out.write_text("precious")
    done = orchd("backup", str(out), "--database", str(sample_db))
    assert done.returncode == 2
    assert "exists; use --force" in done.stderr
    assert out.read_text() == "precious"
    done = orchd("backup", str(out), "--database", str(sample_db), "--force", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["path"] == str(out) and answer["size"] == out.stat().st_size > 0
    assert answer["integrity"] == "ok"
    assert maintenance.check(str(out)).ok
    # A self-contained file (rollback journal, not WAL), with nothing left beside it.
    assert rows(out, "PRAGMA journal_mode") == [("delete",)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.db"]


def test_backup_usage_and_failures(sample_db: Path, tmp_path: Path) -> None:
    done = orchd("backup", str(tmp_path), "--database", str(sample_db))
    assert done.returncode == 2 and "is a directory" in done.stderr
    done = orchd("backup", str(sample_db), "--database", str(sample_db), "--force")
    assert done.returncode == 2 and "the database itself" in done.stderr
    done = orchd("backup", str(tmp_path / "b.db"), "--database", str(tmp_path / "none.db"))
    assert done.returncode == 2 and "does not exist" in done.stderr
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\0garbage" * 1000)
    done = orchd("backup", str(tmp_path / "b.db"), "--database", str(garbage))
    assert done.returncode == 2 and "not a database" in done.stderr
    done = orchd("backup", str(tmp_path / "no" / "b.db"), "--database", str(sample_db))
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.db"]


def test_backup_progress_lines(sample_db: Path, tmp_path: Path) -> None:
    stream = io.StringIO()
    result = maintenance.backup(
        str(sample_db),
        str(tmp_path / "b.db"),
        step_pages=2,
        progress=maintenance.ProgressLines(stream, min_pages=0),
    )
    lines = stream.getvalue().splitlines()
    assert lines[-1] == f"backup: {result.pages}/{result.pages} pages (100%)"
    assert 2 <= len(lines) <= 11
    quiet = io.StringIO()
    maintenance.backup(
        str(sample_db), str(tmp_path / "c.db"), progress=maintenance.ProgressLines(quiet)
    )
    assert quiet.getvalue() == ""  # a small database gets no progress lines


@pytest.fixture
def busy_daemon(daemon_factory: DaemonFactory) -> Iterator[tuple[object, list[str]]]:
    """A daemon and a thread that keeps starting processes until the test ends."""
    daemon = daemon_factory()
    started: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            started.append(daemon.start_process("quick"))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        yield daemon, started
    finally:
        stop.set()
        thread.join(10)


def test_backup_of_a_busy_daemon_is_consistent(
    busy_daemon: tuple[object, list[str]], tmp_path: Path
) -> None:
    from support.daemons import DaemonProcess

    daemon, started = busy_daemon
    assert isinstance(daemon, DaemonProcess)
    config = str(daemon.config_path)
    for i in range(3):
        before = count(daemon.db)
        out = tmp_path / f"backup{i}.db"
        done = orchd("--config", config, "backup", str(out))
        after = count(daemon.db)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{out}\t")
        assert before <= count(out) <= after
        report = maintenance.check(str(out))
        assert report.ok, report  # every process's steps match its seq, nothing half-written
        done = orchd("--config", config, "check")  # and the live database, read-only
        assert done.returncode == 0, done.stdout + done.stderr
    # Page by page, with the daemon committing between the steps: still one snapshot.
    before = count(daemon.db)
    copied_pages: list[int] = []

    def slowly(copied: int, total: int) -> None:
        copied_pages.append(copied)
        time.sleep(0.005)

    out = tmp_path / "paged.db"
    result = maintenance.backup(daemon.db, str(out), step_pages=1, progress=slowly)
    after = count(daemon.db)
    assert copied_pages == sorted(copied_pages), "the copy restarted"
    assert len(copied_pages) == result.pages > 5
    assert before <= count(out) <= after
    assert maintenance.check(str(out)).ok
    assert len(started) > 10
    assert daemon.running


@pytest.mark.skipif(os.geteuid() != 0, reason="only root creates files for another user")
def test_check_as_root_leaves_sidecars_to_the_owner(sample_db: Path, tmp_path: Path) -> None:
    # `sudo orchd check` while the daemon is stopped: the -wal/-shm a reader of a WAL database
    # creates must not end up root's, or the daemon's own user could not open its database.
    db = tmp_path / "orchd.db"
    shutil.copyfile(sample_db, db)
    os.chown(db, 65534, 65534)
    assert maintenance.check(str(db)).ok
    for sidecar in (tmp_path / "orchd.db-wal", tmp_path / "orchd.db-shm"):
        assert (sidecar.stat().st_uid, sidecar.stat().st_gid) == (65534, 65534)


# --- run as root: never hand a file to the database's owner by path (#1) -------------------------

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can be tricked into chown")


def _owned_by_nobody(sample_db: Path, directory: Path) -> Path:
    db = directory / "orchd.db"
    shutil.copyfile(sample_db, db)
    os.chown(db, 65534, 65534)
    os.chmod(db, 0o640)
    return db


def _root_secrets(directory: Path) -> list[Path]:
    secrets = []
    for name in ("secret-wal", "secret-shm"):
        path = directory / name
        path.write_text("")  # empty, like a file SQLite has just created
        os.chmod(path, 0o600)
        secrets.append(path)
    return secrets


def _untouched(secret: Path) -> bool:
    st = secret.stat()
    return (st.st_uid, st.st_gid, st.st_mode & 0o7777, st.st_size) == (0, 0, 0o600, 0)


@as_root
@pytest.mark.parametrize("command", [["check"], ["backup", "copy.db"]])
def test_root_command_leaves_a_symlinked_side_file_target_alone(
    sample_db: Path, tmp_path: Path, command: list[str]
) -> None:
    db = _owned_by_nobody(sample_db, tmp_path)
    secrets = _root_secrets(tmp_path)
    os.symlink(secrets[0], f"{db}-wal")
    os.symlink(secrets[1], f"{db}-shm")
    done = orchd(*command, "--database", str(db), cwd=tmp_path)
    assert done.returncode != 0 and "symbolic link" in done.stderr
    assert all(_untouched(s) for s in secrets)
    assert not (tmp_path / "copy.db").exists()


@as_root
def test_root_check_chowns_nothing_swapped_in_after_sqlite_created_the_side_files(
    sample_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The owner's move in the race: once SQLite has created -wal/-shm (owned by the owner),
    # replace them with symlinks to root's files. Playing the attacker needs a hook at that
    # instant, so SQLite's connect is wrapped to swap right after the connection's first read.
    db = _owned_by_nobody(sample_db, tmp_path)
    secrets = _root_secrets(tmp_path)
    real_connect = sqlite3.connect

    class Swapping(sqlite3.Connection):
        swapped = False

        def execute(self, *args: object) -> sqlite3.Cursor:
            cursor = super().execute(*args)  # type: ignore[arg-type]
            if not Swapping.swapped:
                Swapping.swapped = True
                for side, secret in zip(("-wal", "-shm"), secrets, strict=True):
                    os.replace(db.with_name(db.name + side), tmp_path / f"old{side}")
                    os.symlink(secret, f"{db}{side}")
            return cursor

    def connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        return real_connect(*args, factory=Swapping, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(maintenance.sqlite3, "connect", connect)
    maintenance.connect_readonly(str(db)).close()
    assert Swapping.swapped
    assert all(_untouched(s) for s in secrets)


# --- what a killed backup leaves, and destinations that are the database's own files (#14) -------


def _leftover(directory: Path, name: str, age: float = 3600.0) -> Path:
    path = directory / name
    path.write_bytes(b"\0" * 4096)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_backup_removes_what_a_killed_backup_to_the_same_name_left(
    sample_db: Path, tmp_path: Path
) -> None:
    killed = _leftover(tmp_path, ".b.db.k1ll3d_x.tmp")
    journal = _leftover(tmp_path, ".b.db.k1ll3d_x.tmp-journal")
    done = orchd("backup", str(tmp_path / "b.db"), "--database", str(sample_db))
    assert done.returncode == 0, done.stderr
    assert not killed.exists() and not journal.exists()


def test_backup_keeps_files_that_are_not_unambiguously_its_leftovers(
    sample_db: Path, tmp_path: Path
) -> None:
    kept = [
        _leftover(tmp_path, ".other.db.k1ll3d_x.tmp"),  # another destination's
        _leftover(tmp_path, ".b.db.short.tmp"),  # not mkstemp's name
        _leftover(tmp_path, ".b.db.k1ll3d_x.tmp.bak"),
        _leftover(tmp_path, ".b.db.fr3sh___.tmp", age=0.0),  # a backup that just began
    ]
    os.symlink(sample_db, tmp_path / ".b.db.symlink.tmp")
    done = orchd("backup", str(tmp_path / "b.db"), "--database", str(sample_db))
    assert done.returncode == 0, done.stderr
    assert all(p.exists() for p in kept)
    assert (tmp_path / ".b.db.symlink.tmp").is_symlink() and sample_db.exists()


def test_backup_keeps_the_temporary_copy_of_a_live_backup(sample_db: Path, tmp_path: Path) -> None:
    live = _leftover(tmp_path, ".b.db.l1v3___.tmp")
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the live backup holds it
        done = orchd("backup", str(tmp_path / "b.db"), "--database", str(sample_db))
    assert done.returncode == 0, done.stderr
    assert live.exists()


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_backup_refuses_a_side_file_of_the_database_as_destination(
    sample_db: Path, tmp_path: Path, suffix: str
) -> None:
    db = tmp_path / "db" / "orchd.db"
    db.parent.mkdir()
    shutil.copyfile(sample_db, db)
    (tmp_path / "link").symlink_to(db.parent)  # the same file by another path
    for dest in (f"{db}{suffix}", str(tmp_path / "link" / f"orchd.db{suffix}")):
        done = orchd("backup", dest, "--database", str(db), "--force")
        assert done.returncode == 2, done.stderr
        assert f"the database's {suffix} file" in done.stderr
    assert sorted(p.name for p in db.parent.iterdir()) == ["orchd.db"]


@pytest.mark.parametrize("command", [["check"], ["backup", "b.db"]])
def test_a_missing_database_is_a_usage_error_of_check_and_backup(
    tmp_path: Path, command: list[str]
) -> None:
    done = orchd(*command, "--database", str(tmp_path / "none.db"), cwd=tmp_path)
    assert done.returncode == maintenance.EXIT_USAGE == 2, done.stderr
    assert f"cannot open database {tmp_path / 'none.db'}: it does not exist" in done.stderr
    assert list(tmp_path.iterdir()) == []
