r"""Logging for the daemon: one handler on stderr, one record a line.

``log_format`` picks the shape. ``logfmt`` (the default) is parsed by every log shipper::

    ts=2026-11-26T12:00:00.123Z level=info logger=orchd.engine msg="recovered 3 processes"

``json`` is one JSON object a line (``ts``, ``level``, ``logger``, ``msg``, ``exc`` with a
traceback); ``text`` is for people reading a terminal::

    2026-11-26T12:00:00.123Z INFO orchd.engine recovered 3 active processes

Under journald (stderr is the journal's stream) a line carries no timestamp, since the journal
adds its own, and starts with a ``<N>`` syslog priority so ``journalctl -p`` can filter it (the
journal strips it). A traceback stays inside its record (escaped) in logfmt and json.

Fields: a ``key=%s`` word in a record's format string (``"schedule=%s started process=%s"``)
is a field of its own in logfmt and json, beside ``msg``, so log tools can query it
(``schedule=nightly process=3f2a... msg="started"``); the rest of the format is ``msg``. A
``%r`` of a string gives the string itself there (logfmt quotes what needs quoting). The text
formats keep the whole message as written. Keys are lowercase words; one that would replace
``ts``, ``level``, ``logger``, ``msg``, ``exc`` or ``stack``, or a second one of the same name,
stays in ``msg``.

Escapes are those logfmt parsers (go-logfmt's, Grafana's) and JSON take: ``\\``, ``\"``,
``\n``, ``\r``, ``\t``, and ``\uXXXX`` for any other character that is not printable
(U+2028 included, a pair of surrogates beyond U+FFFF), so a line never holds a character a
line-based reader could split on. The json format escapes the same characters.

A record logged while a step runs (by the step's own code, or the HTTP client retrying one of
its requests) names the step's process and trace (``process=... trace_id=...``), as the
engine's own lines about a process do (README "The HTTP API").

The library itself only has a NullHandler (see ``orchd/__init__.py``); this module is used by
the daemon, never on import.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

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
    "startup_error",
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
    split = _split_fields(record)
    fields |= {
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": message if split is None else split[0],
    }
    if split is not None:
        fields |= split[1]
    step = _step_of(message)
    if step is not None:
        fields.setdefault("process", step.process_id)
        fields.setdefault("trace_id", step.trace_id)
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    if record.exc_text:
        fields["exc"] = record.exc_text
    if record.stack_info:
        fields["stack"] = formatter.formatStack(record.stack_info)
    return fields


#: Fields every line has (or may have): a format's word never replaces them.
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})
#: A printf conversion as ``%`` formatting takes it (no ``*`` widths, no mapping keys).
_CONVERSION = re.compile(r"%(?:%|[#0 +-]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa])")
_KEY = re.compile(r"([a-z][a-z0-9_]*)=(.*)", re.DOTALL)


class _Word:
    """One space-separated word of a format string: a field (``key`` set) or text."""

    __slots__ = ("key", "text", "first", "count")

    def __init__(self, key: str | None, text: str, first: int, count: int) -> None:
        self.key, self.text, self.first, self.count = key, text, first, count


@functools.lru_cache(maxsize=2048)
def _template(fmt: str) -> tuple[tuple[_Word, ...], int] | None:
    """The words of ``fmt`` and how many arguments it takes; None when it has no field."""
    words: list[_Word] = []
    used = 0
    keys: set[str] = set()
    for word in fmt.split(" "):
        if not word:
            continue
        count = sum(1 for c in _CONVERSION.findall(word) if c != "%%")
        if "%" in word.replace("%%", "") and count == 0:
            return None  # a conversion this reader does not know (a mapping key, a *)
        found = _KEY.fullmatch(word)
        key = None
        if found is not None and found.group(1) not in _RESERVED | keys and found.group(2):
            key = found.group(1)
            keys.add(key)
        text = word if key is None or found is None else found.group(2)
        words.append(_Word(key, text, used, count))
        used += count
    return (tuple(words), used) if keys else None


class _Raw(str):
    """A string that ``%r`` writes as itself: a field's value is quoted by the writer."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str.__str__(self)


def _split_fields(record: logging.LogRecord) -> tuple[str, dict[str, str]] | None:
    """The record's message without its ``key=%s`` words, and those words as fields."""
    fmt, args = record.msg, record.args
    if not isinstance(fmt, str) or "=" not in fmt:
        return None
    if args is None:
        args = ()
    if not isinstance(args, tuple):
        return None
    shape = _template(fmt)
    if shape is None or shape[1] != len(args):
        return None
    text: list[str] = []
    fields: dict[str, str] = {}
    try:
        for word in shape[0]:
            # As logging does: a format without arguments is the message as it stands.
            taken: tuple[Any, ...] = args[word.first : word.first + word.count]
            if word.key is None:
                text.append(word.text % taken if args else word.text)
            else:
                raw = tuple(_Raw(a) if isinstance(a, str) else a for a in taken)
                fields[word.key] = word.text % raw if args else word.text
    except (TypeError, ValueError):
        return None
    return " ".join(text).rstrip(" :;,"), fields


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
    if value and value.isprintable() and not any(c in value for c in ' "=\\'):
        return value
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{_unicode_escapes(escaped)}"'


def _unicode_escapes(text: str) -> str:
    """Every character that is not printable (a control character, U+2028, U+0085, an
    unassigned one) as ``\\uXXXX``, as JSON writes it: logfmt parsers read JSON's escapes,
    and no line-based reader can split the line on one."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


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
        line = _unicode_escapes(line)  # JSON leaves U+2028, U+0085 and DEL as they are
        return f"<{_priority(record.levelno)}>{line}" if self.journald else line


#: Config ``log_format`` values.
FORMATS = ("logfmt", "json", "text")


def _formatter(log_format: str, journald: bool) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(journald)
    if log_format == "text":
        return JournaldFormatter() if journald else TextFormatter()
    return LogfmtFormatter(journald)


def startup_error(
    detail: str,
    log_format: str,
    *,
    stream: TextIO | None = None,
    env: Mapping[str, str] = os.environ,
) -> None:
    """Write the one line of a start-up error (``orchd: FILE: KEY: PROBLEM``). Under
    ``log_format = "json"`` it is a JSON object like every other line (``level`` error,
    ``msg`` the detail); the other formats keep the line people and tests read."""
    stream = sys.stderr if stream is None else stream
    if log_format != "json":
        print(f"orchd: {detail}", file=stream, flush=True)
        return
    try:
        fd: int | None = stream.fileno()
    except (OSError, ValueError, AttributeError):
        fd = None
    record = logging.LogRecord("orchd.daemon", logging.ERROR, __file__, 0, detail, None, None)
    journald = fd is not None and under_journald(env, fd)
    print(JsonFormatter(journald).format(record), file=stream, flush=True)


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
