"""The ``orchd`` command: a client of the control API, and the entry to the daemon.

Scripts call this in loops, so only the standard library is imported here; ``serve``, ``bench``
and ``fake-oss`` import their modules when they run. Exit statuses: 0 success, 1 the daemon
refused the request, 2 usage error, 3 the daemon cannot be reached, 4 ``wait`` (or ``start
--wait``) ended in a status other than completed, 5 its ``--timeout`` passed first, 6 a write
on this machine failed (the output, or the file ``backup`` writes: a full disk, an I/O error),
said in one line. ``check`` and ``backup`` use the same meanings: 1 problems found or the backup
failed, 2 also for a database file that is missing or cannot be opened.

Where the daemon is, first match wins: ``--url`` (TCP), ``--socket``, ``$ORCHD_SOCKET``,
``$ORCHD_URL``, the config's ``socket``, then its ``listen``, then ``./orchd.sock``. The config
is read from ``--config``, ``$ORCHD_CONFIG``, or ``/etc/orchd/orchd.toml`` when it exists. Under
systemd's default layout the socket is ``/run/orchd/orchd.sock``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO, cast

from orchd import cliforms, cliops, cliproducts, cliresources
from orchd.client import (
    IN_PROGRESS,
    BadResponse,
    Client,
    ClientError,
    DaemonRefused,
    DaemonUnreachable,
    EndpointError,
    quoted,
    resolve_endpoint,
)
from orchd.cliops import more_hint as _more_hint
from orchd.cliops import pages as _pages
from orchd.cliprint import (
    one_line,
    print_health,
    print_json,
    print_process,
    print_table,
    when,
)

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_COMPLETED = 4
EXIT_TIMEOUT = 5
#: A write on this machine failed: the command's output, or the file it writes.
EXIT_LOCAL = 6

#: What ``orchd wait`` and ``orchd start --wait`` wait for and exit with, for their --help.
WAIT_EPILOG = """\
{who} through created, running, waiting, awaiting_callback and
awaiting_children until the process is completed, failed, aborted or suspended (a person must
act). --json prints the process as GET /api/processes/{{id}} answers it, whatever the exit status.

exit status:
  0  the process completed
  1  the daemon refused the request (say, an unknown or ambiguous id)
  2  usage error
  3  the daemon cannot be reached, or went away while waiting
  4  the process is failed, aborted or suspended
  5  --timeout passed first (the process goes on)
"""


#: Commands whose arguments belong to another module's own parser.
PASSTHROUGH = {"bench": "orchd._bench.run", "fake-oss": "orchd.testing.fakeoss"}
#: Global options that take a value (to find the command word before argparse runs).
VALUE_OPTIONS = ("--socket", "--config", "--url", "--token-file", "--reporter")
#: Global options that only clients use; ``serve`` refuses them.
SERVE_REFUSES = ("--socket", "--url", "--token-file", "--json", "--reporter")


class UsageError(Exception):
    """Raised when the command line is well-formed but its content is not usable."""


# --- the command line ----------------------------------------------------------------------------


class _VersionAction(argparse.Action):
    # importlib.metadata is slow to import: only pay for it when asked.
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("orchd")
        except PackageNotFoundError:
            text = "unknown"
        print(f"orchd {text}")
        parser.exit()


def _global_options() -> argparse.ArgumentParser:
    # SUPPRESS defaults: a value given before the subcommand survives the subparser's parse, and
    # one given after it wins; main() fills in the real defaults afterwards.
    parent = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    group = parent.add_argument_group("global options")
    group.add_argument("--socket", metavar="PATH", help="the daemon's Unix socket")
    group.add_argument("--config", metavar="PATH", help="config file (default $ORCHD_CONFIG)")
    group.add_argument("--url", metavar="URL", help="talk TCP instead: http://host:port")
    group.add_argument("--token-file", metavar="PATH", help="bearer token for --url")
    group.add_argument("--json", action="store_true", help="print the API's JSON")
    group.add_argument(
        "--reporter",
        metavar="LABEL",
        help="a label for the audit trail, beside your uid or token (X-Orchd-Reporter)",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; global options are accepted before and after the command."""
    common = _global_options()
    parser = argparse.ArgumentParser(
        prog="orchd",
        description="Control the orchd workflow daemon, or run it (orchd serve).",
        epilog="Exit status: 0 ok, 1 refused by the daemon, 2 usage, 3 daemon unreachable, "
        "4 wait (start --wait) ended other than completed, 5 its --timeout passed first, "
        "6 a local write failed (the output or backup's file: disk full, I/O error); "
        "check/backup: 1 problems found or failed, 2 also a "
        "missing or unopenable database. Socket: --socket, $ORCHD_SOCKET, the config's `socket` "
        "(/run/orchd/orchd.sock under systemd), else ./orchd.sock.",
        parents=[common],
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, epilog: str | None = None) -> argparse.ArgumentParser:
        # An epilog lists exit statuses: its lines are kept as written.
        layout = argparse.RawDescriptionHelpFormatter if epilog else argparse.HelpFormatter
        return sub.add_parser(
            name,
            help=help,
            description=help,
            parents=[common],
            epilog=epilog,
            formatter_class=layout,
        )

    p = command("serve", "run the daemon in the foreground")
    p.add_argument(
        "--check",
        action="store_true",
        help="only validate the config and import the workflows (exit 0 or 2); start nothing",
    )
    command("health", "is the daemon up")
    command("workflows", "list the registered workflows")

    p = command(
        "start", "start a process of a workflow", WAIT_EPILOG.format(who="With --wait, it waits")
    )
    p.add_argument("workflow")
    p.add_argument(
        "--input",
        metavar="JSON|@FILE|-",
        help="the initial form's answer, or the list of its pages' answers",
    )
    p.add_argument(
        "--interactive",
        action="store_true",
        help="ask the form page by page on this terminal (choices listed with their titles)",
    )
    p.add_argument(
        "--wait", action="store_true", help="then wait as `orchd wait` does (exit status below)"
    )
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="with --wait: stop waiting after this"
    )
    p.add_argument(
        "--key",
        metavar="KEY",
        help="idempotency key: a start with a key that started a process of this workflow "
        "answers that process instead (safe to retry)",
    )

    p = command(
        "wait",
        "wait until a process completes or needs a person",
        WAIT_EPILOG.format(who="Waits"),
    )
    p.add_argument("id", help="a process id, or a unique prefix of it (8+ characters)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop waiting after this")

    p = command("ps", "list processes, newest first")
    p.add_argument("--status")
    p.add_argument("--workflow")
    p.add_argument("--parent", metavar="ID", help="only the children of this process")
    p.add_argument("--limit", type=int)
    p.add_argument("--all", action="store_true", help="fetch every page")

    p = command("show", "show one process and its step log")
    p.add_argument("id")
    p.add_argument("--state", action="store_true", help="print only its State, as JSON")
    p.add_argument(
        "--branch",
        metavar="PATH",
        help="the step log of the branches under PATH (e.g. 'Configure ports/7')",
    )
    p = command("resume", "answer a suspended process's form")
    p.add_argument("id")
    p.add_argument("--input", metavar="JSON|@FILE|-", required=True)
    p = command("retry", "re-run the failed step")
    p.add_argument("id")
    p.add_argument(
        "--reissue",
        action="store_true",
        help="after a callback's validate step failed: ask the external system again",
    )
    p = command("skip", "record the failing step skipped and go on with the next one")
    p.add_argument("id")
    p.add_argument("--reason", required=True, help="why (recorded with the step)")
    p = command(
        "callback",
        "answer an awaiting_callback process: with its callback token as the external "
        "system, or with its process id as an operator",
    )
    p.add_argument("target", metavar="TOKEN|ID")
    p.add_argument("--input", metavar="JSON|@FILE|-", help="the answer (default: {})")
    command("abort", "abort a process").add_argument("id")

    p = command("subscriptions", "list subscriptions")
    p.add_argument("--status")
    p.add_argument("--customer-id")
    p.add_argument("--product")
    p.add_argument("-q", "--query", metavar="TEXT", help="text in the description or any value")
    p.add_argument("--limit", type=int)
    p.add_argument("--all", action="store_true", help="fetch every page")
    command(
        "subscription", "show one subscription: its fields, relations and usable workflows"
    ).add_argument("id")
    command("products", "list the products and their workflows")

    p = command("events", "follow the event stream (reconnects after a daemon restart)")
    p.add_argument("--process", metavar="ID", help="only this process's events")
    command("resources", "limits on shared resources: their keys in use and the holders")
    p = command("gc", "delete finished processes older than the retention now")
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")

    p = command("schedules", "list the scheduler's entries")
    schedule_sub = p.add_subparsers(dest="schedules_command", metavar="ACTION")
    run = schedule_sub.add_parser("run", help="start a schedule's workflow now", parents=[common])
    run.add_argument("name")

    for name, module in PASSTHROUGH.items():
        # Never parsed here: main() hands everything after the word to the module.
        sub.add_parser(name, help=f"run {module} (its own options follow)", add_help=False)
    # `backup` and `check` work on the database file, not through the daemon
    # (orchd.store.maintenance).
    p = command("backup", "copy the database online (safe while the daemon runs), then check it")
    p.add_argument("path", help="the backup file to write")
    p.add_argument("--database", metavar="DB", help="the database (default: the config's)")
    p.add_argument("--force", action="store_true", help="replace PATH if it exists")
    p = command(
        "migrate", "copy a stopped SQLite database into an empty PostgreSQL database (verified)"
    )
    p.add_argument("--to", metavar="URL", help="postgresql://user@host:5432/dbname")
    p.add_argument("--database", metavar="DB", help="the SQLite file (default: the config's)")
    p = command("check", "integrity, orphan and stuck-lock checks of the database (read-only)")
    p.add_argument("--database", metavar="DB", help="the database (default: the config's)")
    p.add_argument(
        "--workflows",
        nargs="+",
        metavar="MODULE",
        help="instead: import this (new) workflow code and list the unfinished processes it "
        "would strand (run before a deploy; exit 1 when any)",
    )
    return parser


def _passthrough(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """``(command, rest)`` when the command word is one whose arguments are not ours."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in VALUE_OPTIONS else 1
    if i < len(argv) and argv[i] in PASSTHROUGH:
        return argv[i], list(argv[i + 1 :])
    return None


def _run_module(module_name: str, call: Callable[[Any], int]) -> int:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return _fail(
            f"this command needs {module_name}, which cannot be imported: {exc}", EXIT_USAGE
        )
    return call(module)


def read_input(value: str | None) -> dict[str, Any] | list[Any]:
    """The JSON given as ``--input`` (inline, ``@file`` or ``-`` for stdin): an object, or
    the list of a form's page answers."""
    if value is None:
        return {}
    source = "--input"
    if value == "-":
        source, text = "--input from stdin", sys.stdin.read()
    elif value.startswith("@"):
        path = value[1:]
        source = f"--input file {path}"
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise UsageError(f"cannot read {source}: {reason}") from exc
    else:
        text = value
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{source} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict | list):
        raise UsageError(
            f"{source} must be a JSON object (or a list of page answers), not {type(data).__name__}"
        )
    return data


# --- output --------------------------------------------------------------------------------------


# --- the commands --------------------------------------------------------------------------------


def cmd_health(client: Client, args: argparse.Namespace) -> int:
    data = client.get("/api/health")
    if args.json:
        print_json(data)
    elif isinstance(data, dict):
        print_health(data)
    return EXIT_OK


def cmd_workflows(client: Client, args: argparse.Namespace) -> int:
    data = client.get("/api/workflows")
    if args.json:
        print_json(data)
        return EXIT_OK
    rows = [(w.get("name"), w.get("target"), one_line(w.get("description"))) for w in data or []]
    print_table(("NAME", "TARGET", "DESCRIPTION"), rows)
    return EXIT_OK


def cmd_start(client: Client, args: argparse.Namespace) -> int:
    if args.interactive and args.input is not None:
        raise UsageError("give --input or --interactive, not both")
    if args.interactive:
        try:
            body: dict[str, Any] | list[Any] = cliforms.ask_pages(client, args.workflow)
        except cliforms.NoTerminal as exc:
            raise UsageError(str(exc)) from None
    else:
        body = read_input(args.input)
    _check_timeout(args.timeout)
    headers = None if args.key is None else {"Idempotency-Key": args.key}
    answer = client.post(f"/api/processes/{quoted(args.workflow)}", body, headers)
    if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
        raise BadResponse(f"the daemon's answer to start has no process id: {answer!r}")
    pid = answer["id"]
    if not args.wait:
        if args.json:
            print_json(answer)
        else:
            print(pid)
        return EXIT_OK
    return _wait(client, pid, args)


def cmd_wait(client: Client, args: argparse.Namespace) -> int:
    _check_timeout(args.timeout)
    return _wait(client, args.id, args)


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout > 0:  # NaN too
        raise UsageError("--timeout must be positive: a number of seconds")


def _wait(client: Client, pid: str, args: argparse.Namespace) -> int:
    """Wait for the process and print it; the exit status says how it stands."""
    proc = client.wait(pid, args.timeout)
    status = proc.get("status")
    if status in IN_PROGRESS:
        print(
            f"orchd: gave up after {args.timeout:g} s: process {proc.get('id', pid)} is still "
            f"{status} (it goes on)",
            file=sys.stderr,
        )
    if args.json:
        print_json(proc)
    else:
        print_process(proc)
    if status == "completed":
        return EXIT_OK
    return EXIT_TIMEOUT if status in IN_PROGRESS else EXIT_NOT_COMPLETED


def cmd_ps(client: Client, args: argparse.Namespace) -> int:
    parent = args.parent
    if parent is not None and len(parent) != 36:
        # The list filters by a whole id: resolve a prefix first (the daemon does; an unknown
        # or ambiguous one is refused rather than listing nothing).
        parent = str(client.process(parent).get("id") or parent)
    query = {
        "status": args.status,
        "workflow": args.workflow,
        "parent": parent,
        "limit": args.limit,
    }
    page = _pages(client, "/api/processes", query, args.all)
    if args.json:
        print_json(page)
        return EXIT_OK
    rows = [
        (
            p.get("id"),
            p.get("workflow"),
            p.get("status"),
            p.get("current_step"),
            when(p.get("updated_at")),
        )
        for p in page["items"]
    ]
    print_table(("ID", "WORKFLOW", "STATUS", "STEP", "UPDATED"), rows)
    _more_hint(page, "processes")
    return EXIT_OK


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    proc = client.process(args.id)
    if args.state:
        print_json(proc.get("state"))
    elif args.json:
        print_json(proc)
    else:
        print_process(proc, branch=args.branch)
    return EXIT_OK


def _action(client: Client, args: argparse.Namespace, action: str, body: Any = None) -> int:
    answer = client.post(f"/api/processes/{quoted(args.id)}/{action}", body)
    if args.json:
        print_json(answer if answer is not None else {"id": args.id, "action": action})
    else:
        done = {
            "resume": "resumed",
            "retry": "retrying",
            "abort": "abort requested for",
            "callback": "answered",
            "skip": "skipped the failing step of",
        }[action]
        print(f"{done} {args.id}")
    return EXIT_OK


def cmd_resume(client: Client, args: argparse.Namespace) -> int:
    return _action(client, args, "resume", read_input(args.input))


def cmd_retry(client: Client, args: argparse.Namespace) -> int:
    return _action(client, args, "retry", {"reissue": True} if args.reissue else None)


def cmd_skip(client: Client, args: argparse.Namespace) -> int:
    return _action(client, args, "skip", {"reason": args.reason})


def cmd_callback(client: Client, args: argparse.Namespace) -> int:
    body = read_input(args.input)
    if _is_process_id(args.target):
        args.id = args.target
        return _action(client, args, "callback", body)
    answer = client.post(f"/api/callbacks/{quoted(args.target)}", body)
    if args.json:
        print_json(answer)
    else:
        pid = answer.get("id") if isinstance(answer, dict) else None
        print(f"answered {pid or 'the callback'}")
    return EXIT_OK


def _is_process_id(text: str) -> bool:
    """A process id (a UUID) or a prefix of one (at least 8 characters, hex and dashes)
    rather than a callback token (URL-safe base64 of 32 characters)."""
    import re
    import uuid

    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return len(text) < 32 and re.fullmatch(r"[0-9a-fA-F][0-9a-fA-F-]{7,}", text) is not None


def cmd_abort(client: Client, args: argparse.Namespace) -> int:
    return _action(client, args, "abort")


def cmd_schedules(client: Client, args: argparse.Namespace) -> int:
    if getattr(args, "schedules_command", None) == "run":
        answer = client.post(f"/api/schedules/{quoted(args.name)}/run")
        if args.json:
            print_json(answer)
        else:
            pid = (
                (answer.get("id") or answer.get("process_id")) if isinstance(answer, dict) else None
            )
            print(pid or f"started schedule {args.name}")
        return EXIT_OK
    data = client.get("/api/schedules")
    if args.json:
        print_json(data)
        return EXIT_OK
    rows = []
    for s in data or []:
        last = s.get("last_run")
        last_text = f"{last.get('status')} {when(last.get('at'))}" if isinstance(last, dict) else ""
        trigger = f"every {s['every']}" if s.get("every") else f"cron {s.get('cron') or '?'}"
        rows.append(
            (
                s.get("name"),
                s.get("workflow"),
                trigger,
                "yes" if s.get("enabled") else "no",
                last_text,
                when(s.get("next_run")),
                s.get("skipped", 0),
            )
        )
    print_table(("NAME", "WORKFLOW", "TRIGGER", "ENABLED", "LAST RUN", "NEXT RUN", "SKIPPED"), rows)
    return EXIT_OK


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "health": cmd_health,
    "workflows": cmd_workflows,
    "start": cmd_start,
    "wait": cmd_wait,
    "ps": cmd_ps,
    "show": cmd_show,
    "resume": cmd_resume,
    "retry": cmd_retry,
    "abort": cmd_abort,
    "callback": cmd_callback,
    "skip": cmd_skip,
    "subscriptions": cliproducts.cmd_subscriptions,
    "subscription": cliproducts.cmd_subscription,
    "products": cliproducts.cmd_products,
    "schedules": cmd_schedules,
    "events": cliops.cmd_events,
    "gc": cliops.cmd_gc,
    "resources": cliresources.cmd_resources,
}


#: Commands on the database file, by the name of their function in orchd.store.maintenance.
FILE_COMMANDS = {"backup": "cmd_backup", "check": "cmd_check"}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and fill in the global options' defaults (suppressed while parsing)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        # The daemon takes everything from its config: a client option here would be silently
        # ignored, and `serve --socket X` would listen where the operator did not ask (#17).
        for option in SERVE_REFUSES:
            if hasattr(args, option.lstrip("-").replace("-", "_")):
                parser.error(f"serve takes no {option}; set it in the config file (--config)")
    for name in ("socket", "config", "url", "token_file", "reporter"):
        if not hasattr(args, name):
            setattr(args, name, None)
    if not hasattr(args, "json"):
        args.json = False
    return args


def _fail(message: str, status: int) -> int:
    try:
        print(f"orchd: {message}", file=sys.stderr, flush=True)
    except OSError:
        pass  # stderr is on the full disk too: the exit status has to say it
    return status


class OutputFailed(Exception):
    """Writing the command's output failed (a full disk, an I/O error), not its reader."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(exc.strerror or str(exc))


class _Output:
    """``sys.stdout`` as the commands write to it: a write that fails (other than the reader
    going away, EPIPE) raises OutputFailed, which `main` turns into one line and exit 6."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputFailed(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputFailed(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    stdout = sys.stdout
    sys.stdout = cast(TextIO, _Output(stdout))
    try:
        code = _main(argv)
        sys.stdout.flush()  # a full disk is told now, not by the interpreter at exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`orchd ps | head`): keep Python from complaining at exit, and
        # exit as a tool killed by SIGPIPE would.
        _discard_output(stdout)
        return 128 + 13
    except OutputFailed as exc:
        _discard_output(stdout)
        return _fail(f"cannot write the output: {exc}", EXIT_LOCAL)
    finally:
        sys.stdout = stdout


def _discard_output(stdout: TextIO) -> None:
    """Send what is still buffered for stdout nowhere: the interpreter's flush at exit would
    fail again, and say so with a traceback-like complaint."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stdout.fileno())
    except (OSError, ValueError):
        pass  # not a file (a test's capture): nothing is flushed at exit
    finally:
        os.close(devnull)


def _main(argv: list[str]) -> int:
    passthrough = _passthrough(argv)
    if passthrough is not None:
        name, rest = passthrough
        return _run_module(PASSTHROUGH[name], lambda module: int(module.main(rest)))
    args = parse_args(argv)
    if args.command == "serve":
        run = "check" if args.check else "serve"
        return _run_module("orchd.daemon", lambda module: int(getattr(module, run)(args.config)))
    if args.command == "check" and args.workflows:
        return _run_module(
            "orchd.deploycheck", lambda module: int(module.cmd_check_workflows(args))
        )
    if args.command == "migrate":
        # Exit statuses as the file commands': see orchd.store.postgres.copy.
        return _run_module(
            "orchd.store.postgres.copy", lambda module: int(module.cmd_migrate(args))
        )
    if args.command in FILE_COMMANDS:
        # Exit statuses of their own: see orchd.store.maintenance.
        call = FILE_COMMANDS[args.command]
        return _run_module(
            "orchd.store.maintenance", lambda module: int(getattr(module, call)(args))
        )
    try:
        endpoint = resolve_endpoint(args.socket, args.url, args.config, args.token_file)
        client = Client(endpoint, reporter=args.reporter)
        return COMMANDS[args.command](client, args)
    except (UsageError, EndpointError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except DaemonUnreachable as exc:
        return _fail(str(exc), EXIT_UNREACHABLE)
    except DaemonRefused as exc:
        # A start refused on its subscription says why in a word a script can match.
        reason = exc.problem.get("reason")
        said = (
            f"HTTP {exc.status}, reason {reason}"
            if isinstance(reason, str)
            else f"HTTP {exc.status}"
        )
        lines = [f"{exc.detail} ({said})", *(f"  {e}" for e in exc.errors)]
        return _fail("\n".join(lines), EXIT_REFUSED)
    except ClientError as exc:
        return _fail(str(exc), EXIT_REFUSED)
