"""The daemon's log lines as log tools read them (issue 26 item 13).

``process=``, ``workflow=`` and ``status=`` are fields of their own, not words inside the
quoted ``msg``; values are escaped as logfmt parsers (and JSON) read them, never ``\\xNN``; and
under ``log_format = "json"`` the start-up error line is JSON like every other line. The lines
are read with the strict reader in tests/support/common.py (``parse_logfmt``).
"""

from __future__ import annotations

import json
import logging
import re

import pytest
from support.common import parse_logfmt
from support.daemons import DaemonFactory, DaemonProcess

from orchd import logs

#: A ``key=value`` word inside a message: what a log tool cannot query.
FIELD_IN_TEXT = re.compile(r"\b(process|workflow|status|step|trace_id)=")


def run_quick(daemon: DaemonProcess) -> str:
    pid = daemon.start_process("quick", {"name": "logs"})
    daemon.wait_process(pid)
    assert daemon.stop() == 0
    return pid


def test_logfmt_lines_carry_process_workflow_and_status_as_fields(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory({"log_level": "debug"})
    pid = run_quick(daemon)
    lines = [parse_logfmt(line) for line in daemon.last_run_stderr().splitlines()]
    about = [f for f in lines if f.get("process") == pid]
    # The engine's line when the process completed, and the step's own debug line.
    assert any(f.get("workflow") == "quick" and f.get("status") == "completed" for f in about)
    assert any(f["logger"] == "daemon_flows" and f["msg"] == "saying hello" for f in about)
    assert all(f["trace_id"] for f in about), about
    inside = [f["msg"] for f in lines if FIELD_IN_TEXT.search(f["msg"])]
    assert inside == []


def test_json_lines_carry_the_same_fields(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"log_format": "json"})
    pid = run_quick(daemon)
    records = [json.loads(line) for line in daemon.last_run_stderr().splitlines()]
    done = [r for r in records if r.get("process") == pid and r.get("status") == "completed"]
    assert len(done) == 1 and done[0]["workflow"] == "quick", records
    assert not [r["msg"] for r in records if FIELD_IN_TEXT.search(r["msg"])]
    stopping = next(r for r in records if r["msg"] == "stopping")
    assert stopping["signal"] == "SIGTERM" and stopping["grace"] == "5s"


#: What a value may hold: quotes, backslashes, control characters, the line and paragraph
#: separators that line readers split on, C1 controls, DEL, and characters beyond U+FFFF
#: (one printable, one not).
ODD = 'a "q" \\ b\nc\r\td\x1b e\u2028f\u2029g\x85h\x7fi \U0001f600 \U000e0001 j'


def _record(message: str, *args: object) -> logging.LogRecord:
    record = logging.LogRecord("orchd.engine", logging.WARNING, __file__, 1, message, args, None)
    record.created, record.msecs = 1795003200.123, 123.0
    return record


def test_logfmt_escapes_are_those_logfmt_parsers_read() -> None:
    line = logs.LogfmtFormatter().format(_record("odd text=%s process=%s", ODD, "p1"))
    assert line.isprintable(), line  # no character a line reader could split on
    assert "\\x" not in line  # \xNN is not logfmt (and \x2028 read as \x20 then "28")
    assert "\\u2028" in line and "\\ud83d" not in line  # a printable emoji stays as it is
    fields = parse_logfmt(line)
    assert fields["text"] == ODD and fields["process"] == "p1" and fields["msg"] == "odd"


def test_json_lines_escape_what_json_leaves_raw() -> None:
    line = logs.JsonFormatter().format(_record("odd text=%s", ODD))
    assert line.isprintable() and len(line.splitlines()) == 1, line
    assert json.loads(line)["text"] == ODD


def test_a_repr_of_a_string_gives_the_string_itself_as_a_field() -> None:
    line = logs.LogfmtFormatter().format(_record("step=%r error=%r", "fail once", ValueError("x")))
    fields = parse_logfmt(line)
    assert fields["step"] == "fail once" and fields["error"] == "ValueError('x')"
    # The text format keeps the message as written.
    text = logs.TextFormatter().format(_record("step=%r done", "fail once"))
    assert text.endswith("WARNING orchd.engine step='fail once' done")


@pytest.mark.parametrize(
    ("mistake", "where"),
    [
        ({"database": "/nonexistent/dir/orchd.db"}, "database: directory"),
        ({"bogus_key": 1}, "bogus_key"),  # the config itself does not load
    ],
)
def test_the_start_up_error_is_json_under_log_format_json(
    daemon_factory: DaemonFactory, mistake: dict[str, object], where: str
) -> None:
    daemon = daemon_factory({"log_format": "json", **mistake}, start=False)
    assert daemon.run_to_exit() == 2
    lines = daemon.last_run_stderr().splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["level"] == "error" and record["logger"] == "orchd.daemon"
    assert record["msg"].startswith(f"{daemon.config_path}: ") and where in record["msg"]
    assert {"ts", "level", "logger", "msg"} <= set(record)
