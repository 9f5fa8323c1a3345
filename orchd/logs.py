"""Logging for the daemon: one handler on stderr, one record a line.

``log_format`` picks the shape. ``logfmt`` (the default) is parsed by every log shipper::

    ts=2026-11-26T12:00:00.123Z level=info logger=orchd.engine msg="recovered 3 processes"

``json`` is one JSON object a line (``ts``, ``level``, ``logger``, ``msg``, ``exc`` with a
traceback); ``text`` is for people reading a terminal::

    2026-11-26T12:00:00.123Z INFO orchd.engine recovered 3 active processes

Under journald (stderr is the journal's stream) a line carries no timestamp, since the journal
adds its own, and starts with a ``<N>`` syslog priority so ``journalctl -p`` can filter it (the
journal strips it). A traceback stays inside its record (escaped) in logfmt and json.

A record logged while a step runs (by the step's own code, or the HTTP client retrying one of
its requests) names the step's process and trace (``process=... trace_id=...``), as the
engine's own lines about a process do (contract §17).

The library itself only has a NullHandler (see ``orchd/__init__.py``); this module is used by
the daemon, never on import.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from orchd.systemd import under_journald
from orchd.tracing import CURRENT, StepTrace

__all__ = [
    "FORMATS",
    "JournaldFormatter",
    "JsonFormatter",
    "LEVELS",
    "LogfmtFormatter",
    "TextFormatter",
    "set_level",
    "setup",
]

#: Config ``log_level`` values and the logging levels they stand for.
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# syslog(3) priorities, as sd-daemon(3) expects them in a "<N>" prefix.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

#: Libraries whose debug output drowns ours; they stay at info even when we debug.
_CHATTY = ("aiosqlite",)

#: Marks the handler this module installs, so a second setup replaces it instead of adding one.
_MARK = "_orchd_daemon_handler"


def _priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return _PRIORITY[logging.DEBUG]


class TextFormatter(logging.Formatter):
    """``2026-11-26T12:00:00.123Z INFO orchd.engine message``; tracebacks follow indented."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage() + _step_text(record)
        line = f"{self.formatTime(record)} {record.levelname} {record.name} {message}"
        return _with_details(self, line, record)


class JournaldFormatter(logging.Formatter):
    """``<6>orchd.engine message``: every line prefixed, so a traceback keeps its priority."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage() + _step_text(record)
        text = _with_details(self, f"{record.name} {message}", record)
        prefix = f"<{_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines())


def _stamp(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


def _fields(
    formatter: logging.Formatter, record: logging.LogRecord, journald: bool
) -> dict[str, str]:
    fields = {} if journald else {"ts": _stamp(record)}
    message = record.getMessage()
    fields |= {
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": message,
    }
    step = _step_of(message)
    if step is not None:
        fields |= {"process": step.process_id, "trace_id": step.trace_id}
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    if record.exc_text:
        fields["exc"] = record.exc_text
    if record.stack_info:
        fields["stack"] = formatter.formatStack(record.stack_info)
    return fields


def _step_of(message: str) -> StepTrace | None:
    """The step running where a record is logged (a handler formats in the logging thread,
    in its context), unless the message names its trace already."""
    step = CURRENT.get()
    return None if step is None or "trace_id=" in message else step


def _step_text(record: logging.LogRecord) -> str:
    step = _step_of(record.getMessage())
    return "" if step is None else f" process={step.process_id} trace_id={step.trace_id}"


def _logfmt_value(value: str) -> str:
    """A value as logfmt writes it: bare when it can be, else quoted with escapes."""
    if value and all(c.isprintable() and c not in ' "=\\' for c in value):
        return value
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    # Any other control character would break a line-based reader: written as \xNN.
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """One logfmt line a record: ``ts=... level=info logger=... msg="..."``."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(self, record, self.journald)
        line = " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())
        return f"<{_priority(record.levelno)}>{line}" if self.journald else line


class JsonFormatter(logging.Formatter):
    """One JSON object a record."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        line = json.dumps(_fields(self, record, self.journald), ensure_ascii=False)
        return f"<{_priority(record.levelno)}>{line}" if self.journald else line


#: Config ``log_format`` values.
FORMATS = ("logfmt", "json", "text")


def _formatter(log_format: str, journald: bool) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(journald)
    if log_format == "text":
        return JournaldFormatter() if journald else TextFormatter()
    return LogfmtFormatter(journald)


def _with_details(formatter: logging.Formatter, line: str, record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    if record.exc_text:
        line = f"{line}\n{record.exc_text}"
    if record.stack_info:
        line = f"{line}\n{formatter.formatStack(record.stack_info)}"
    return line


class _BadRequestsFilter(logging.Filter):
    """aiohttp logs a malformed request (bad header, bad chunk, oversized line) with a full
    traceback, as if the daemon had crashed; make it one warning line naming the problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _is_protocol_error(exc):
            record.msg = "malformed request refused (400): %s"
            record.args = (str(exc).splitlines()[0] if str(exc) else type(exc).__name__,)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _is_protocol_error(exc: BaseException) -> bool:
    from aiohttp import http_exceptions  # the daemon has aiohttp loaded already

    return isinstance(exc, http_exceptions.HttpProcessingError)


def setup(
    level: str = "info",
    *,
    stream: TextIO | None = None,
    env: Mapping[str, str] = os.environ,
    journald: bool | None = None,
    log_format: str = "logfmt",
) -> logging.Handler:
    """Send every log record at ``level`` or above to stderr; return the handler.

    The handler goes on the root logger so that aiohttp's and asyncio's complaints are seen
    too. ``journald`` None means: detect it from ``$JOURNAL_STREAM`` and the stream's fd.
    """
    stream = sys.stderr if stream is None else stream
    if journald is None:
        try:
            fd = stream.fileno()
        except (OSError, ValueError, AttributeError):
            fd = None
        journald = fd is not None and under_journald(env, fd)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_formatter(log_format, journald))
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _BadRequestsFilter) for f in server.filters):
        server.addFilter(_BadRequestsFilter())
    set_level(level)
    return handler


def set_level(level: str) -> None:
    """Apply a config ``log_level`` (``debug``, ``info``, ``warning``, ``error``)."""
    value = LEVELS[level]
    logging.getLogger().setLevel(value)
    logging.getLogger("orchd").setLevel(value)
    # aiosqlite logs every query (with its parameters: process data) at debug.
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(value, logging.INFO))
