"""Operator tools that work on the database file itself: ``orchd backup`` and ``orchd check``.

Both are safe beside a running daemon: the database is in WAL mode, so a reader sees one
consistent snapshot while the daemon keeps writing, and neither tool ever writes to it (the
source is opened with ``mode=ro``). Only the standard library is imported, so the commands
start as fast as the rest of the CLI.

Exit statuses, the CLI's meanings: ``backup`` 0 written and checked, 1 failed (nothing is left
at PATH), 6 the copy could not be written (a full disk or one that fails: nothing is left at
PATH either); ``check`` 0 clean, 1 problems found (also a database that opens but cannot be read
through); both 2 usage: bad arguments, PATH exists without ``--force``, and a database file that
is missing or cannot be opened (a problem of the command's configuration, as for ``serve``).
Neither uses 3, which means "the daemon cannot be reached".
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import re
import sqlite3
import stat
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from orchd.dburl import anchored, database_file, is_postgres
from orchd.status import FINAL, ProcessStatus, StepStatus
from orchd.store.sqlite.schema import SCHEMA_VERSION

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNOPENABLE = 3
#: A write on this machine failed (the CLI's EXIT_LOCAL): the disk is full or failing.
EXIT_LOCAL = 6
#: What the OS says when the disk is full or failing, and SQLite's primary codes for it.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})
SQLITE_IOERR, SQLITE_FULL = 10, 13

DEFAULT_DATABASE = "./orchd.db"
#: The schema version the checks below are written for: the one this orchd migrates to.
KNOWN_SCHEMA_VERSION = SCHEMA_VERSION
#: Pages copied per backup step; between steps the daemon's writer is never blocked anyway.
BACKUP_STEP_PAGES = 1024
#: Databases with at least this many pages get progress lines on stderr (~100 MB at 4 KiB).
PROGRESS_MIN_PAGES = 25_600
#: How many ids each kind of problem lists; the count is always complete.
EXAMPLES = 20

# As plain strings: the checks below write them into SQL.
PROCESS_STATUSES = frozenset(str(s) for s in ProcessStatus)
STEP_STATUSES = frozenset(str(s) for s in StepStatus)
#: Statuses after which a process holds no subscription.
FINISHED = tuple(sorted(str(s) for s in FINAL))
TABLES = (
    "processes",
    "steps",
    "subscriptions",
    "subscription_processes",
    "schedules",
    "schedule_runs",
    "actions",
    "events",
    "branches",
    "subscription_relations",
    "subscription_actions",
)


class MaintenanceError(Exception):
    """Raised when a backup or check cannot be done; ``exit_status`` says how the CLI exits."""

    def __init__(self, message: str, exit_status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_status = exit_status


# --- where the database is -----------------------------------------------------------------------


def database_path(
    given: str | None,
    config: str | None,
    environ: Mapping[str, str] | None = None,
    *,
    postgres: bool = False,
) -> str:
    """``--database``, else the config's ``database`` (read cheaply, as the CLI reads ``socket``).

    A relative path from the config is anchored where the daemon would anchor it: in
    ``$STATE_DIRECTORY`` when that is set, else the current directory. A PostgreSQL URL is
    answered as it is when the command takes one (``postgres``), else refused: the file tools
    have PostgreSQL's own as their counterparts.
    """
    env = os.environ if environ is None else environ
    if given:
        path = given
    else:
        from orchd.client import EndpointError, read_config

        try:
            settings = read_config(config, env)
        except EndpointError as exc:
            raise MaintenanceError(str(exc), EXIT_USAGE) from None
        value = settings.get("database")
        if value is not None and not isinstance(value, str):
            raise MaintenanceError("the config's database must be a string", EXIT_USAGE)
        path = anchored(value or DEFAULT_DATABASE, env.get("STATE_DIRECTORY", "").split(":")[0])
    if is_postgres(path):
        if postgres:
            return path
        raise MaintenanceError(
            "the database is PostgreSQL: backup and check work on a SQLite file; on PostgreSQL "
            "use pg_dump (or the server's own backups) and pg_amcheck",
            EXIT_USAGE,
        )
    file = database_file(path)
    if file is None:
        raise MaintenanceError(f"database {path!r} is not a file this tool can open", EXIT_USAGE)
    return os.path.normpath(file)


#: The files SQLite keeps beside a database, by suffix.
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
#: How ``backup`` names its temporary copy: ``.NAME.XXXXXXXX.tmp`` beside the destination.
TEMP_SUFFIX = ".tmp"
#: Seconds a temporary copy must be unchanged before a later backup may call it a leftover.
LEFTOVER_AGE = 60.0


def connect_readonly(path: str) -> sqlite3.Connection:
    """A connection that can never write to ``path``, nor create it when it is missing.

    Even a read-only reader of a WAL database creates ``-wal``/``-shm`` when no other connection
    has them open, so ``sudo orchd check`` creates files beside the daemon's database. We never
    chown or chmod them ourselves (issue #1): by path, that follows a symlink the database's
    owner can swap in after SQLite created the file, and root would hand any file to that
    owner. SQLite already does it safely: running as root, it fchowns the -wal and -shm it
    creates to the database file's owner and group, on its own descriptor, with the database's
    permission bits (tests/test_maintenance.py pins this). Side files that are symlinks when we
    look are refused outright: SQLite never makes them.
    """
    if not os.path.isfile(path):
        what = "does not exist" if not os.path.exists(path) else "is not a regular file"
        raise MaintenanceError(f"cannot open database {path}: it {what}", EXIT_USAGE)
    for side in (path + suffix for suffix in SIDE_SUFFIXES):
        if os.path.islink(side):
            raise MaintenanceError(
                f"cannot open database {path}: {side} is a symbolic link, not SQLite's file",
                EXIT_USAGE,
            )
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5.0)
        # Opening is lazy: read the header now so "not a database" is an open failure.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise MaintenanceError(f"cannot open database {path}: {exc}", EXIT_USAGE) from None
    return conn


# --- backup --------------------------------------------------------------------------------------


@dataclass
class BackupResult:
    path: str
    size: int
    pages: int
    seconds: float
    integrity: str = "ok"


Progress = Callable[[int, int], None]


def backup(
    source: str,
    dest: str,
    *,
    force: bool = False,
    step_pages: int = BACKUP_STEP_PAGES,
    progress: Progress | None = None,
) -> BackupResult:
    """Copy ``source`` to ``dest`` with SQLite's online backup, check the copy, then rename it
    into place; ``dest`` is never left half-written. ``progress(copied, total)`` is called
    after every step.
    """
    dest = os.path.abspath(dest)
    _check_destination(source, dest, force)
    started = time.monotonic()
    src = connect_readonly(source)
    directory, name = os.path.split(dest)
    _remove_leftovers(directory, name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=TEMP_SUFFIX, dir=directory)
    except OSError as exc:
        src.close()
        raise MaintenanceError(
            f"cannot write in {directory}: {exc.strerror or exc}", _write_failure(exc)
        ) from None
    try:
        # Held until we are done (or killed: the kernel lets go), so a later run can tell a
        # live copy from the leftover of a killed one.
        fcntl.flock(fd, fcntl.LOCK_EX)
        pages = _copy(src, tmp, step_pages, progress)
        problems = _integrity(tmp)
        if problems:
            raise MaintenanceError(
                f"the copy failed its integrity check: {'; '.join(problems[:5])}"
            )
        try:
            _fsync(tmp)
        except OSError as exc:
            raise MaintenanceError(
                f"cannot write {tmp}: {exc.strerror or exc}", _write_failure(exc)
            ) from None
        _place(tmp, dest, force)
    except BaseException:
        _unlink_temp(tmp)
        raise
    finally:
        src.close()
        os.close(fd)
    return BackupResult(
        path=dest,
        size=os.stat(dest).st_size,
        pages=pages,
        seconds=round(time.monotonic() - started, 3),
    )


def _remove_leftovers(directory: str, name: str) -> None:
    """Delete the temporary copies killed backups to ``name`` left behind (issue #14).

    Only what is unambiguously ours goes: a regular file named exactly as ``backup`` names its
    temporary copy of ``name``, unchanged for LEFTOVER_AGE seconds (a backup that has just
    created its file has not locked it yet), whose lock no live backup holds.
    """
    pattern = re.compile(rf"\.{re.escape(name)}\.[A-Za-z0-9_]{{8}}{re.escape(TEMP_SUFFIX)}")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for entry in names:
        if not pattern.fullmatch(entry):
            continue
        path = os.path.join(directory, entry)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or time.time() - st.st_mtime < LEFTOVER_AGE:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live backup holds it
        else:
            _unlink_temp(path)
        finally:
            os.close(fd)


def _unlink_temp(tmp: str) -> None:
    for leftover in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass


def _check_destination(source: str, dest: str, force: bool) -> None:
    if os.path.isdir(dest):
        raise MaintenanceError(f"{dest} is a directory; name the backup file", EXIT_USAGE)
    real_source, real_dest = os.path.realpath(source), os.path.realpath(dest)
    for suffix in ("", *SIDE_SUFFIXES):
        if real_dest == real_source + suffix:
            what = f"the database's {suffix} file" if suffix else "the database itself"
            raise MaintenanceError(f"{dest} is {what}", EXIT_USAGE)
    if os.path.exists(dest):
        if os.path.exists(source) and os.path.samefile(source, dest):
            raise MaintenanceError(f"{dest} is the database itself", EXIT_USAGE)
        if not force:
            raise MaintenanceError(f"{dest} exists; use --force to replace it", EXIT_USAGE)
    if not os.path.isdir(os.path.dirname(dest)):
        raise MaintenanceError(f"directory {os.path.dirname(dest)} does not exist", EXIT_USAGE)


def _copy(src: sqlite3.Connection, tmp: str, step_pages: int, progress: Progress | None) -> int:
    dst = sqlite3.connect(tmp, isolation_level=None)
    try:
        # One read transaction held over every step pins one snapshot: the daemon's commits in
        # between neither restart the copy nor leak into it (WAL lets the daemon go on writing;
        # its WAL only grows until we let go).
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        total = 0

        def step(status: int, remaining: int, pages: int) -> None:
            nonlocal total
            total = pages
            if progress is not None:
                progress(pages - remaining, pages)

        try:
            src.backup(dst, pages=max(1, step_pages), progress=step)
        finally:
            src.execute("ROLLBACK")
        # The copy is one self-contained file: no -wal beside it that a `cp` would forget.
        dst.execute("PRAGMA journal_mode = DELETE").fetchone()
        return total
    except sqlite3.Error as exc:
        # The source was opened and read already: a full or failing disk is the copy's.
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (SQLITE_FULL, SQLITE_IOERR):
            where = os.path.dirname(tmp)
            raise MaintenanceError(f"cannot write the copy in {where}: {exc}", EXIT_LOCAL) from None
        raise MaintenanceError(f"backup failed: {exc}") from None
    finally:
        dst.close()


def _integrity(path: str) -> list[str]:
    try:
        conn = sqlite3.connect(
            "file:" + urllib.parse.quote(path) + "?mode=ro", uri=True, isolation_level=None
        )
        try:
            rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return [f"cannot read the copy: {exc}"]
    return [] if rows == ["ok"] else rows


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _place(tmp: str, dest: str, force: bool) -> None:
    """Rename the finished copy to ``dest``; without ``force`` never replace a file that
    appeared there meanwhile (a hard link fails when the name exists, a rename does not)."""
    try:
        if force:
            os.replace(tmp, dest)
        else:
            try:
                os.link(tmp, dest)
            except FileExistsError:
                raise MaintenanceError(
                    f"{dest} exists; use --force to replace it", EXIT_USAGE
                ) from None
            except OSError:
                # No hard links on this filesystem: the check before the copy has to do.
                if os.path.exists(dest):
                    raise MaintenanceError(
                        f"{dest} exists; use --force to replace it", EXIT_USAGE
                    ) from None
                os.replace(tmp, dest)
            else:
                os.unlink(tmp)
        dir_fd = os.open(os.path.dirname(dest), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise MaintenanceError(
            f"cannot write {dest}: {exc.strerror or exc}", _write_failure(exc)
        ) from None


def _write_failure(exc: OSError) -> int:
    """EXIT_LOCAL for a disk that is full or failing, else EXIT_FAILED."""
    return EXIT_LOCAL if exc.errno in DISK_ERRNOS else EXIT_FAILED


class ProgressLines:
    """``backup: 1024/51200 pages (2%)`` on ``stream``, at most one line per tenth."""

    def __init__(self, stream: TextIO, min_pages: int = PROGRESS_MIN_PAGES) -> None:
        self.stream = stream
        self.min_pages = min_pages
        self.shown = -1

    def __call__(self, copied: int, total: int) -> None:
        if total < self.min_pages or total <= 0:
            return
        tenth = copied * 10 // total
        if tenth == self.shown:
            return
        self.shown = tenth
        print(
            f"backup: {copied}/{total} pages ({copied * 100 // total}%)",
            file=self.stream,
            flush=True,
        )


# --- check ---------------------------------------------------------------------------------------


@dataclass
class Problem:
    kind: str
    message: str
    count: int
    examples: list[str] = field(default_factory=list)


@dataclass
class Report:
    database: str
    schema_version: int | None = None
    integrity: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


#: kind -> (what is wrong, a query listing one id per offending row).
CHECKS: dict[str, tuple[str, str]] = {
    "step_without_process": (
        "step records whose process does not exist",
        """SELECT DISTINCT s.process FROM steps s
           WHERE NOT EXISTS (SELECT 1 FROM processes p WHERE p.rowid = s.process)""",
    ),
    "link_without_process": (
        "subscription links to a process that does not exist",
        """SELECT l.subscription_id || ' -> ' || l.process_id FROM subscription_processes l
           WHERE NOT EXISTS (SELECT 1 FROM processes p WHERE p.id = l.process_id)""",
    ),
    "link_without_subscription": (
        "subscription links to a subscription that does not exist",
        """SELECT l.subscription_id || ' -> ' || l.process_id FROM subscription_processes l
           WHERE NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = l.subscription_id)""",
    ),
    "process_without_subscription": (
        "processes naming a subscription that does not exist",
        """SELECT p.id FROM processes p WHERE p.subscription_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = p.subscription_id)""",
    ),
    "seq_mismatch": (
        "processes whose seq is not their number of step records",
        """SELECT p.id || ' (seq ' || p.seq || ', ' || count(s.seq) || ' steps)'
           FROM processes p LEFT JOIN steps s ON s.process = p.rowid
           GROUP BY p.rowid HAVING p.seq != count(s.seq)""",
    ),
    "seq_gap": (
        "processes whose step records are not numbered 1, 2, 3, ... without gaps",
        """SELECT p.id || ' (steps ' || min(s.seq) || '..' || max(s.seq) || ', '
           || count(*) || ' records)'
           FROM steps s JOIN processes p ON p.rowid = s.process
           GROUP BY s.process HAVING min(s.seq) != 1 OR max(s.seq) != count(*)""",
    ),
    "stuck_lock": (
        "subscriptions locked (insync = 0) with no unfinished process that could release them",
        f"""SELECT s.id FROM subscriptions s WHERE s.insync = 0 AND NOT EXISTS (
              SELECT 1 FROM subscription_processes l JOIN processes p ON p.id = l.process_id
              WHERE l.subscription_id = s.id AND p.status NOT IN {FINISHED!r})""",
    ),
    "stray_branches": (
        "branch rows of processes that are finished or gone (a fork's rows go at its join)",
        f"""SELECT coalesce(p.id, 'process #' || b.process) || ' branch ' || b.path
            FROM branches b LEFT JOIN processes p ON p.rowid = b.process
            WHERE p.rowid IS NULL OR p.status IN {FINISHED!r}""",
    ),
    "bad_process_status": (
        "processes with a status orchd does not know",
        f"SELECT id || ' (' || status || ')' FROM processes "
        f"WHERE status NOT IN {tuple(sorted(PROCESS_STATUSES))!r}",
    ),
    "bad_step_status": (
        "step records with a status orchd does not know",
        f"""SELECT p.id || ' step ' || s.seq || ' (' || s.status || ')'
            FROM steps s LEFT JOIN processes p ON p.rowid = s.process
            WHERE s.status NOT IN {tuple(sorted(STEP_STATUSES))!r}""",
    ),
}


def check(path: str) -> Report:
    """Integrity and consistency checks of an orchd database, opened read-only."""
    conn = connect_readonly(path)
    try:
        return _check(conn, Report(database=path))
    except sqlite3.Error as exc:
        # A file with a valid header can still be unreadable further in (truncated, garbage).
        raise MaintenanceError(f"cannot read database {path}: {exc}", EXIT_FAILED) from None
    finally:
        conn.close()


def _check(conn: sqlite3.Connection, report: Report) -> Report:
    # One read transaction: every check sees the same snapshot of a database still in use.
    conn.execute("BEGIN")
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
        if rows != ["ok"]:
            report.integrity = rows
            report.problems.append(
                Problem("integrity", "PRAGMA integrity_check failed", len(rows), rows[:EXAMPLES])
            )
        else:
            report.integrity = ["ok"]
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        report.schema_version = version
        present = {
            str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        missing = [t for t in TABLES if t not in present]
        if version != KNOWN_SCHEMA_VERSION or missing:
            _schema_problem(report, version, missing)
            return report
        for table in ("processes", "steps", "subscriptions"):
            report.counts[table] = int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        for kind, (message, query) in CHECKS.items():
            found = [str(r[0]) for r in conn.execute(query)]
            if found:
                report.problems.append(Problem(kind, message, len(found), found[:EXAMPLES]))
        return report
    finally:
        conn.execute("ROLLBACK")


def _schema_problem(report: Report, version: int, missing: list[str]) -> None:
    if version > KNOWN_SCHEMA_VERSION:
        message = (
            f"schema version {version} is newer than this orchd knows ({KNOWN_SCHEMA_VERSION})"
        )
    elif version == 0 and len(missing) == len(TABLES):
        message = "no orchd schema: an empty database, or not orchd's"
    elif version < KNOWN_SCHEMA_VERSION:
        message = (
            f"schema version {version} is older than {KNOWN_SCHEMA_VERSION}: "
            "the daemon migrates it at its next start"
        )
    else:
        message = f"schema version {version} lacks tables: {', '.join(missing)}"
    report.problems.append(Problem("schema", message, 1, missing[:EXAMPLES]))


def print_report(report: Report, stream: TextIO) -> None:
    counts = ", ".join(f"{n} {table}" for table, n in report.counts.items())
    print(f"database: {report.database}", file=stream)
    print(f"schema version: {report.schema_version}", file=stream)
    print(f"integrity: {'ok' if report.integrity == ['ok'] else 'FAILED'}", file=stream)
    if counts:
        print(f"rows: {counts}", file=stream)
    if report.ok:
        print("no problems found", file=stream)
        return
    print(f"{len(report.problems)} kind(s) of problem found:", file=stream)
    for problem in report.problems:
        print(f"  {problem.kind}: {problem.count} {problem.message}", file=stream)
        for example in problem.examples:
            print(f"    {example}", file=stream)
        if problem.count > len(problem.examples):
            print(f"    ... and {problem.count - len(problem.examples)} more", file=stream)


# --- the commands (called by orchd.cli) ----------------------------------------------------------


def cmd_backup(args: argparse.Namespace) -> int:
    try:
        source = database_path(args.database, args.config)
        result = backup(source, args.path, force=args.force, progress=ProgressLines(sys.stderr))
    except MaintenanceError as exc:
        print(f"orchd: backup: {exc}", file=sys.stderr)
        return exc.exit_status
    if args.json:
        print(json.dumps({"source": source, **asdict(result)}, indent=2))
    else:
        print(f"{result.path}\t{result.size} bytes\t(integrity ok, {result.seconds:g}s)")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    try:
        path = database_path(args.database, args.config)
        report = check(path)
    except MaintenanceError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}, indent=2))
        print(f"orchd: check: {exc}", file=sys.stderr)
        return exc.exit_status
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print_report(report, sys.stdout)
    return EXIT_OK if report.ok else EXIT_FAILED
