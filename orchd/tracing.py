"""Traces (README "Traces"): every process belongs to a W3C trace, and a step's requests carry it.

Two parts. The first is always on and uses the standard library only:

- trace ids (32 lowercase hex digits) and span ids (16), ``traceparent`` parsed and written
  (W3C Trace Context, version 00);
- ``CURRENT``, the context variable that holds the running step's trace context. The actor
  sets it around a step's call (``enter_step``/``leave_step``), on the main line and in each
  branch; an async step runs in the actor's task and sees it, a sync step's thread runs in a
  copy of the caller's context (``orchd.engine.threads``). ``HttpClient`` adds a
  ``traceparent`` header from it to every request; ``traceparent()`` gives the same header
  to code that talks HTTP another way (``requests`` in a sync step).

The second is optional: spans exported through OpenTelemetry's SDK (the ``orchd[otel]``
extra), built by ``otel()``, which alone imports OpenTelemetry. The engine holds a
:class:`Tracing`; while tracing is off that is the base class, whose ``on`` is False, and
every span hook on the step path is that one attribute check.

Spans are made once their work is known: a step's span when its record commits (its status,
times and attempt known), a run's when its actor retires, each with the ids the step used
while it ran (an id generator of ours hands the SDK the id chosen before). So the span id a
step's requests carried is the id of that step's span, and no span stays open in memory
while a process waits. The tree, for one process::

    start <workflow>              the start; its id is derived from the process id, so
    │                             every later run, after any restart, can name it
    ├── run <workflow>            one actor run (a restart or a wait begins another)
    │   ├── step <name>           one per step record: name, key, attempt, status, duration
    │   └── step <fork>           a parallel/foreach step, from the fork to its join
    │       └── branch <path>     one branch's steps in this run
    │           └── step <name>
    └── callback                  a callback's arrival (linked to the sender's traceparent)

A child process's ``start`` span is a child of its parent's ``run`` span, in its trace.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Link, Tracer

    from orchd.store.base import StepWrite

__all__ = [
    "CURRENT",
    "StepTrace",
    "TraceParent",
    "Tracing",
    "enter_step",
    "format_traceparent",
    "leave_step",
    "new_span_id",
    "new_trace_id",
    "otel",
    "otel_available",
    "parse_traceparent",
    "trace_id_of",
    "traceparent",
]

#: The header's name (W3C Trace Context).
TRACEPARENT = "traceparent"
_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
# Ids must be unique, not secret: a generator seeded by the OS, no system call per id.
_ids = random.Random(os.urandom(32))


def new_trace_id() -> str:
    """A new random trace id: 32 lowercase hex digits, never all zeros."""
    while not (value := _ids.getrandbits(128)):
        pass
    return f"{value:032x}"


def new_span_id() -> int:
    """A new random span id (64 bits, never zero)."""
    while not (value := _ids.getrandbits(64)):
        pass
    return value


def trace_id_of(process_id: str) -> str:
    """The trace id of a process created before traces (its ``trace_id`` is NULL).

    Derived from the process id when the row is read, rather than filled in by the
    migration: the same id every time, on every node and after every restart (a stored
    random one would be too, but only once a migration wrote it, and a database migrated by
    an older orchd's copy would differ), no rewrite of a large table while the daemon
    starts, and the migration stays what it is. A process id is a version-4 UUID, so its 32
    hex digits are a valid trace id (never all zeros, 122 random bits).
    """
    try:
        return uuid.UUID(process_id).hex
    except ValueError:  # not a UUID (never written by orchd): a digest of it
        return hashlib.blake2b(process_id.encode(), digest_size=16).hexdigest()


class TraceParent(NamedTuple):
    """A parsed ``traceparent`` header: the caller's trace, its span and its flags."""

    trace_id: str
    span_id: str
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The header's trace context, or None when it is absent or invalid (W3C Trace Context:
    lowercase hex only; all-zero ids and version ``ff`` are invalid; a later version may
    append fields after a ``-``, version 00 may not)."""
    if not value:
        return None
    value = value.strip(" \t")
    if len(value) < 55 or (len(value) > 55 and (value[:2] == "00" or value[55] != "-")):
        return None
    version, trace_id, span_id, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    if not _HEX.issuperset(version + trace_id + span_id + flags) or version == "ff":
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id, span_id, int(flags, 16))


def format_traceparent(trace_id: str, span_id: int, sampled: bool = True) -> str:
    """A version-00 ``traceparent`` header value."""
    return f"00-{trace_id}-{span_id:016x}-{'01' if sampled else '00'}"


# -- the running step's context --------------------------------------------------------------


class StepTrace:
    """What a step's outgoing requests carry: its process's trace and the step's span."""

    __slots__ = ("trace_id", "span_id", "process_id")

    def __init__(self, trace_id: str, span_id: int, process_id: str) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.process_id = process_id

    def traceparent(self) -> str:
        # Sampled: orchd asks the systems it calls to record their side of the trace.
        return format_traceparent(self.trace_id, self.span_id)


#: The trace context of the step running now (None outside a step).
CURRENT: contextvars.ContextVar[StepTrace | None] = contextvars.ContextVar(
    "orchd_step_trace", default=None
)


def traceparent() -> str | None:
    """The ``traceparent`` header for a request made by the step running now (in its task or
    its thread); None outside a step. ``HttpClient`` adds it by itself."""
    step = CURRENT.get()
    return None if step is None else step.traceparent()


def enter_step(
    tracing: Tracing,
    process_id: str,
    trace_id: str,
    branch: str | None,
    key: str,
    attempt: int,
) -> contextvars.Token[StepTrace | None]:
    """Before a step's call: a span id for it, in ``CURRENT`` until ``leave_step``."""
    span_id = new_span_id()
    if tracing.on:
        tracing.calling(process_id, branch, key, span_id, attempt)
    return CURRENT.set(StepTrace(trace_id, span_id, process_id))


def leave_step(token: contextvars.Token[StepTrace | None]) -> None:
    """After a step's call (whatever it raised)."""
    CURRENT.reset(token)


# -- spans -----------------------------------------------------------------------------------


class Tracing:
    """Spans of processes and steps; this base class records none (tracing off).

    The engine calls each hook only ``if tracing.on``. Every hook runs on the event loop.
    """

    #: Whether spans are recorded; the one check on the step path while off.
    on = False

    def began(self, process_id: str) -> None:
        """An actor of the process begins a run (created now)."""

    def calling(
        self, process_id: str, branch: str | None, key: str, span_id: int, attempt: int
    ) -> None:
        """A step's call begins with this span id."""

    def started(
        self,
        process_id: str,
        workflow: str,
        trace_id: str,
        created_at: float,
        *,
        remote: TraceParent | None = None,
        parent_id: str | None = None,
    ) -> None:
        """A process was created (committed): by a request carrying ``remote``, or as a
        child of ``parent_id`` (whose run is going on now)."""

    def committed(
        self, process_id: str, workflow: str, trace_id: str, steps: Sequence[StepWrite]
    ) -> None:
        """Step records of the process committed."""

    def retired(self, process_id: str, workflow: str, trace_id: str, status: str) -> None:
        """The process's actor retires: its run ends."""

    def callback(
        self, process_id: str, workflow: str, trace_id: str, arrived: float, sender: TraceParent
    ) -> None:
        """A callback carrying ``sender``'s traceparent was committed for the process."""

    def shutdown(self) -> None:
        """Flush and stop exporting (blocking: the daemon calls it in a thread)."""


def otel_available() -> bool:
    """Whether OpenTelemetry's SDK is installed (the ``orchd[otel]`` extra)."""
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


class _Open:
    """A span whose work is still going on in this run (a fork, a branch)."""

    __slots__ = ("span_id", "parent", "started", "last")

    def __init__(self, span_id: int, parent: int, started: float) -> None:
        self.span_id = span_id
        self.parent = parent
        self.started = started
        self.last = started


class Run:
    """One run of a process's actor, while tracing is on: the ids its spans will have."""

    __slots__ = ("span_id", "started", "calls", "forks", "branches", "used")

    def __init__(self, started: float) -> None:
        self.span_id = new_span_id()
        self.started = started
        #: Span id and attempt of each step being called, by (branch, key).
        self.calls: dict[tuple[str | None, str], tuple[int, int]] = {}
        #: Open forks and branches, by path.
        self.forks: dict[str, _Open] = {}
        self.branches: dict[str, _Open] = {}
        #: Whether anything happened in it worth a span (a step, a child started).
        self.used = False


def process_span_id(process_id: str) -> int:
    """The id of the process's ``start`` span, the parent of all its runs: derived from the
    process id, so a run after any restart (or on another node) names it."""
    digest = hashlib.blake2b(process_id.encode(), digest_size=8, person=b"orchd-start").digest()
    return int.from_bytes(digest, "big") or 1


class Recorder(Tracing):
    """What the spans of a process are, whatever records them: the bookkeeping of runs,
    forks and branches, with ``emit`` left to the exporting subclass."""

    on = True

    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}

    # -- what an exporter implements --

    def emit(
        self,
        name: str,
        trace_id: str,
        span_id: int,
        parent: int | None,
        start: float,
        end: float,
        attributes: dict[str, Any],
        *,
        error: str | None = None,
        links: Iterable[TraceParent] = (),
        events: Iterable[tuple[str, float, dict[str, Any]]] = (),
        server: bool = False,
        remote_parent: bool = False,
    ) -> None:
        raise NotImplementedError

    # -- the hooks --

    def _run(self, process_id: str, at: float | None = None) -> Run:
        run = self.runs.get(process_id)
        if run is None:
            run = self.runs[process_id] = Run(time.time() if at is None else at)
        return run

    def began(self, process_id: str) -> None:
        self._run(process_id)

    def calling(
        self, process_id: str, branch: str | None, key: str, span_id: int, attempt: int
    ) -> None:
        run = self._run(process_id)
        run.used = True
        now = time.time()
        if branch is not None:
            self._line(run, branch, now)
        run.calls[(branch, key)] = (span_id, attempt)

    def _line(self, run: Run, branch: str | None, at: float) -> int:
        """The span id steps on this line (None: the main line) are children of, opening
        the branch's span (and its fork's) when this run has none yet."""
        if branch is None:
            return run.span_id
        open_branch = run.branches.get(branch)
        if open_branch is None:
            fork_path = branch.rpartition("/")[0]
            fork = run.forks.get(fork_path)
            if fork is None:
                owner = fork_path.rpartition("/")[0] or None
                fork = _Open(new_span_id(), self._line(run, owner, at), at)
                run.forks[fork_path] = fork
            open_branch = _Open(new_span_id(), fork.span_id, at)
            run.branches[branch] = open_branch
        return open_branch.span_id

    def started(
        self,
        process_id: str,
        workflow: str,
        trace_id: str,
        created_at: float,
        *,
        remote: TraceParent | None = None,
        parent_id: str | None = None,
    ) -> None:
        parent: int | None = None
        attributes: dict[str, Any] = {"orchd.process.id": process_id, "orchd.workflow": workflow}
        joined = remote is not None and remote.trace_id == trace_id
        if remote is not None and joined:
            parent = int(remote.span_id, 16)
        if parent_id is not None:
            attributes["orchd.process.parent_id"] = parent_id
            run = self._run(parent_id)
            run.used = True
            parent = run.span_id
        span_id = process_span_id(process_id)
        self.emit(
            f"start {workflow}",
            trace_id,
            span_id,
            parent,
            created_at,
            time.time(),
            attributes,
            remote_parent=joined,
        )

    def committed(
        self, process_id: str, workflow: str, trace_id: str, steps: Sequence[StepWrite]
    ) -> None:
        if not steps:
            return
        run = self._run(process_id, steps[0].started_at)
        run.used = True
        for record in steps:
            self._step(run, process_id, workflow, trace_id, record)

    def _step(
        self, run: Run, process_id: str, workflow: str, trace_id: str, record: StepWrite
    ) -> None:
        line, key = record.branch, record.key
        parent = self._line(run, line, record.started_at)
        if line is not None:
            run.branches[line].last = record.finished_at
        start, attempt = record.started_at, 1
        fork = None
        if key is not None:
            fork = run.forks.pop(key if line is None else f"{line}/{key}", None)
        if fork is not None:
            # A fork's join: its span covers the fork in this run, over its branches' spans.
            span_id, start = fork.span_id, min(fork.started, start)
            self._close_under(run, trace_id, f"{key if line is None else f'{line}/{key}'}/")
        else:
            call = run.calls.pop((line, key), None) if key is not None else None
            span_id, attempt = call if call is not None else (new_span_id(), 1)
        attributes: dict[str, Any] = {
            "orchd.process.id": process_id,
            "orchd.workflow": workflow,
            "orchd.step.name": record.name,
            "orchd.step.key": key or record.name,
            "orchd.step.attempt": attempt,
            "orchd.step.status": str(record.status),
            "orchd.step.duration_s": max(0.0, record.finished_at - start),
        }
        if line is not None:
            attributes["orchd.step.branch"] = line
        failed = record.status in ("failed", "waiting", "aborted")
        self.emit(
            f"step {record.name}",
            trace_id,
            span_id,
            parent,
            start,
            record.finished_at,
            attributes,
            error=(record.error or record.status) if failed else None,
        )

    def _close_under(self, run: Run, trace_id: str, prefix: str, end: float | None = None) -> None:
        """Emit the spans of the branches (and nested forks) whose path starts with
        ``prefix`` ("" for all), and forget them."""
        for path in [p for p in run.branches if p.startswith(prefix)]:
            b = run.branches.pop(path)
            self.emit(
                f"branch {path}",
                trace_id,
                b.span_id,
                b.parent,
                b.started,
                b.last if end is None else max(b.last, end),
                {"orchd.branch": path},
            )
        for path in [p for p in run.forks if p.startswith(prefix)]:
            f = run.forks.pop(path)
            # A fork still standing when the run ends (its process waits or stops).
            self.emit(
                f"step {path.rpartition('/')[2]}",
                trace_id,
                f.span_id,
                f.parent,
                f.started,
                time.time() if end is None else end,
                {"orchd.fork": path, "orchd.fork.joined": False},
            )

    def retired(self, process_id: str, workflow: str, trace_id: str, status: str) -> None:
        run = self.runs.pop(process_id, None)
        if run is None or not run.used:
            return
        end = time.time()
        self._close_under(run, trace_id, "", end)
        attributes = {
            "orchd.process.id": process_id,
            "orchd.workflow": workflow,
            "orchd.process.status": str(status),
        }
        parent = process_span_id(process_id)
        self.emit(f"run {workflow}", trace_id, run.span_id, parent, run.started, end, attributes)

    def callback(
        self, process_id: str, workflow: str, trace_id: str, arrived: float, sender: TraceParent
    ) -> None:
        attributes = {
            "orchd.process.id": process_id,
            "orchd.workflow": workflow,
            "orchd.callback.traceparent": format_traceparent(
                sender.trace_id, int(sender.span_id, 16), sender.sampled
            ),
        }
        event = ("callback arrived", arrived, {"orchd.callback.trace_id": sender.trace_id})
        self.emit(
            "callback",
            trace_id,
            new_span_id(),
            process_span_id(process_id),
            arrived,
            time.time(),
            attributes,
            links=[sender],
            events=[event],
            server=True,
        )


# -- OpenTelemetry (the orchd[otel] extra), imported only when tracing is turned on ----------


def otel(exporter: SpanExporter | None = None, *, batch: bool | None = None) -> Tracing:
    """Tracing on, through OpenTelemetry's SDK.

    Spans go to ``exporter``; by default to OTLP over HTTP, which the SDK's standard
    environment variables configure (``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ...), like the
    resource (``OTEL_SERVICE_NAME``, default ``orchd``; ``OTEL_RESOURCE_ATTRIBUTES``) and the
    batching (``OTEL_BSP_*``). ``batch``: export from the SDK's background thread in batches
    (the default for OTLP) or each span as it ends (the default for a given exporter, such
    as a test's in-memory one). Raises ImportError naming the extra when the SDK is missing.
    """
    if not otel_available():
        raise ImportError("tracing needs OpenTelemetry's SDK: pip install 'orchd[otel]'")
    return _Otel(exporter, batch=batch)


class _Otel(Recorder):
    """Spans recorded through OpenTelemetry's SDK, with a tracer provider of orchd's own (the
    process-wide one, if an embedding program set it, is left alone)."""

    def __init__(self, exporter: SpanExporter | None, *, batch: bool | None) -> None:
        super().__init__()
        from opentelemetry import context, trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

        class ChosenIds(RandomIdGenerator):
            """Hands the SDK the ids orchd chose (a step's span id is in its requests'
            headers before its span is made); random ones when none is chosen."""

            span = 0
            trace = 0

            def generate_span_id(self) -> int:
                return self.span or super().generate_span_id()

            def generate_trace_id(self) -> int:
                return self.trace or super().generate_trace_id()

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
            batch = True if batch is None else batch
        resource = Resource.create({})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "orchd"}))
        self._ids = ChosenIds()
        self.provider: TracerProvider = TracerProvider(
            resource=resource, id_generator=self._ids, shutdown_on_exit=False
        )
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self._tracer: Tracer = self.provider.get_tracer("orchd")
        self._trace = trace
        self._empty = context.Context()

    def _context_of(self, trace_id: int, span_id: int, remote: bool = False) -> Any:
        api = self._trace
        return api.SpanContext(
            trace_id, span_id, is_remote=remote, trace_flags=api.TraceFlags(api.TraceFlags.SAMPLED)
        )

    def emit(
        self,
        name: str,
        trace_id: str,
        span_id: int,
        parent: int | None,
        start: float,
        end: float,
        attributes: dict[str, Any],
        *,
        error: str | None = None,
        links: Iterable[TraceParent] = (),
        events: Iterable[tuple[str, float, dict[str, Any]]] = (),
        server: bool = False,
        remote_parent: bool = False,
    ) -> None:
        api = self._trace
        trace_int = int(trace_id, 16)
        parent_context = self._empty
        if parent is not None:
            parent_span = api.NonRecordingSpan(self._context_of(trace_int, parent, remote_parent))
            parent_context = api.set_span_in_context(parent_span, self._empty)
        linked: list[Link] = [
            api.Link(self._context_of(int(t.trace_id, 16), int(t.span_id, 16), remote=True))
            for t in links
        ]
        # Only this thread (the event loop's) makes spans: the chosen ids cannot be taken by
        # another span between here and start_span.
        self._ids.span, self._ids.trace = span_id, trace_int
        try:
            span = self._tracer.start_span(
                name,
                context=parent_context,
                kind=api.SpanKind.SERVER if server else api.SpanKind.INTERNAL,
                attributes=attributes,
                links=linked,
                start_time=_ns(start),
            )
        finally:
            self._ids.span = self._ids.trace = 0
        for event, at, event_attributes in events:
            span.add_event(event, event_attributes, timestamp=_ns(at))
        if error is not None:
            span.set_status(api.Status(api.StatusCode.ERROR, error))
        span.end(end_time=_ns(max(start, end)))

    def shutdown(self) -> None:
        self.provider.shutdown()


def _ns(epoch: float) -> int:
    return int(epoch * 1e9)
