"""Prometheus text exposition (format 0.0.4) of the engine's counters, for ``GET /metrics``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from orchd.api.guard import ConnectionCounts
from orchd.api.sse import StreamCounts
from orchd.engine.stats import STEP_BUCKETS, EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = Mapping[str, str]
Sample = tuple[str, Labels, float]


class Exposition:
    """Collects metric families; ``text()`` renders them."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        self._lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")
        for sample_name, labels, value in samples:
            self._lines.append(f"{sample_name}{_labels(labels)} {_number(value)}")

    def single(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text, [(name, {}, value)])

    def histogram(
        self,
        name: str,
        help_text: str,
        bounds: Sequence[float],
        buckets: Sequence[int],
        total: float,
    ) -> None:
        """``buckets`` holds one count per bound plus the overflow (+Inf) bucket, not cumulated."""
        self.histograms(name, help_text, bounds, [({}, buckets, total)])

    def histograms(
        self,
        name: str,
        help_text: str,
        bounds: Sequence[float],
        series: Sequence[tuple[Labels, Sequence[int], float]],
    ) -> None:
        """One histogram family of several labelled series (``(labels, buckets, total)``)."""
        samples: list[Sample] = []
        for labels, buckets, total in series:
            running = 0
            for bound, count in zip([*bounds, math.inf], buckets, strict=True):
                running += count
                samples.append((f"{name}_bucket", {**labels, "le": _number(bound)}, running))
            samples.append((f"{name}_sum", labels, total))
            samples.append((f"{name}_count", labels, running))
        self.family(name, "histogram", help_text, samples)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def render(
    *,
    stats: EngineStats,
    counts: Mapping[str, int],
    by_workflow: Mapping[tuple[str, str], int],
    requests: Mapping[int, int],
    schedule_runs: Mapping[str, int] | None,
    streams: StreamCounts,
    connections: ConnectionCounts | None = None,
) -> str:
    """The whole exposition."""
    store = stats.store
    out = Exposition()
    out.family(
        "orchd_processes",
        "gauge",
        "Processes by status.",
        [("orchd_processes", {"status": s}, n) for s, n in sorted(counts.items())],
    )
    out.single("orchd_steps_total", "counter", "Steps run since start.", stats.steps_total)
    _by_workflow(out, stats, by_workflow)
    out.histogram(
        "orchd_step_duration_seconds",
        "How long steps ran.",
        STEP_BUCKETS,
        stats.step_buckets,
        stats.step_seconds_sum,
    )
    out.single(
        "orchd_checkpoint_batches_total",
        "counter",
        "Checkpoint transactions committed.",
        store.batches,
    )
    out.single(
        "orchd_checkpoints_total",
        "counter",
        "Checkpoints (writes) committed.",
        store.committed,
    )
    out.single(
        "orchd_checkpoint_commit_seconds_total",
        "counter",
        "Time spent committing checkpoint transactions.",
        store.commit_seconds,
    )
    out.single(
        "orchd_checkpoint_last_batch_size",
        "gauge",
        "Writes in the last committed transaction.",
        store.last_batch,
    )
    out.single(
        "orchd_checkpoint_queue_depth",
        "gauge",
        "Writes waiting for the database.",
        store.queue,
    )
    out.single("orchd_actors_alive", "gauge", "Process actors alive.", stats.actors)
    out.single(
        "orchd_step_threads_abandoned_total",
        "counter",
        "Sync step calls abandoned after their timeout (their thread ran on).",
        stats.step_threads_abandoned,
    )
    out.single(
        "orchd_step_threads_abandoned_running",
        "gauge",
        "Abandoned sync step calls still running in their thread.",
        stats.step_threads_abandoned_running,
    )
    out.single(
        "orchd_step_threads_busy",
        "gauge",
        "Sync step calls running on a step thread now.",
        stats.step_threads_busy,
    )
    out.single(
        "orchd_step_threads_queued_total",
        "counter",
        "Sync step calls that found every step thread busy and waited for one.",
        stats.step_threads_queued,
    )
    for what, count in (
        ("processes", stats.pruned_processes),
        ("steps", stats.pruned_steps),
        ("actions", stats.pruned_actions),
    ):
        out.single(
            f"orchd_pruned_{what}_total",
            "counter",
            f"Finished {what} deleted by retention."
            if what == "processes"
            else f"Records of {what} deleted with their processes by retention.",
            count,
        )
    out.single(
        "orchd_mailbox_depth",
        "gauge",
        "Messages waiting in the actors' mailboxes.",
        stats.mailbox_depth,
    )
    if schedule_runs is not None:
        out.family(
            "orchd_schedule_runs_total",
            "counter",
            "Processes started by the scheduler, by schedule.",
            [
                ("orchd_schedule_runs_total", {"schedule": name}, n)
                for name, n in sorted(schedule_runs.items())
            ],
        )
    out.single("orchd_event_streams", "gauge", "Event streams open.", streams.open)
    out.single(
        "orchd_event_streams_refused_total",
        "counter",
        "Event streams refused: too many open, in all or from one client.",
        streams.refused_total,
    )
    out.single(
        "orchd_event_streams_dropped_total",
        "counter",
        "Event stream clients disconnected because they stopped reading.",
        streams.dropped_total,
    )
    if connections is not None:
        _tcp_connections(out, connections)
    out.family(
        "orchd_api_requests_total",
        "counter",
        "Control API requests answered, by status code.",
        [
            ("orchd_api_requests_total", {"code": str(code)}, n)
            for code, n in sorted(requests.items())
        ],
    )
    out.single(
        "orchd_store_failing",
        "gauge",
        "1 while the database refuses writes.",
        1 if store.failing else 0,
    )
    out.single(
        "orchd_uptime_seconds", "gauge", "Seconds since the engine started.", stats.uptime_seconds
    )
    if stats.cluster is not None:
        _cluster(out, stats.cluster)
    _resources(out, stats.resources)
    return out.text()


def _resources(out: Exposition, resources: Mapping[str, tuple[int, int]]) -> None:
    """README "Limits on shared resources": each limit's slots held and steps waiting for one, on
    this node."""
    limits = sorted(resources.items())
    out.family(
        "orchd_resource_in_use",
        "gauge",
        "Slots of a limit on shared resources held by steps on this node.",
        [("orchd_resource_in_use", {"resource": name}, held) for name, (held, _) in limits],
    )
    out.family(
        "orchd_resource_waiting",
        "gauge",
        "Steps on this node waiting for a slot of a limit on shared resources.",
        [("orchd_resource_waiting", {"resource": name}, wait) for name, (_, wait) in limits],
    )


#: A cluster node's counters: (metric, kind, help, key in ``EngineStats.cluster``).
_CLUSTER = (
    ("orchd_lease_renewals_total", "counter", "Lease renewals (heartbeats) committed.",
     "lease_renewals"),
    ("orchd_lease_renewal_failures_total", "counter", "Lease renewals that failed.",
     "lease_renewal_failures"),
    ("orchd_takeovers_total", "counter",
     "Processes taken over from nodes whose lease lapsed.", "takeovers"),
    ("orchd_forwarded_requests_total", "counter",
     "Requests for processes another node owns, forwarded to it.", "forwarded"),
    ("orchd_served_requests_total", "counter",
     "Requests other nodes forwarded here.", "served"),
)  # fmt: skip


def _cluster(out: Exposition, cluster: Mapping[str, float]) -> None:
    for name, kind, help_text, key in _CLUSTER:
        out.single(name, kind, help_text, cluster.get(key, 0.0))
    out.single(
        "orchd_lease_expiry_timestamp_seconds",
        "gauge",
        "When this node's lease lapses unless renewed (database clock, epoch seconds).",
        cluster.get("lease_until", 0.0),
    )


def _by_workflow(
    out: Exposition, stats: EngineStats, counts: Mapping[tuple[str, str], int]
) -> None:
    out.family(
        "orchd_workflow_processes",
        "gauge",
        "Processes by workflow and status (the pairs there are).",
        [
            ("orchd_workflow_processes", {"workflow": w, "status": s}, n)
            for (w, s), n in sorted(counts.items())
        ],
    )
    workflows = sorted(stats.by_workflow.items())
    out.family(
        "orchd_workflow_step_failures_total",
        "counter",
        "Steps that failed or went waiting since start, by workflow.",
        [("orchd_workflow_step_failures_total", {"workflow": w}, s.failures) for w, s in workflows],
    )
    out.histograms(
        "orchd_workflow_step_duration_seconds",
        "How long steps ran, by workflow.",
        STEP_BUCKETS,
        [({"workflow": w}, s.buckets, s.seconds_sum) for w, s in workflows],
    )
    out.single(
        "orchd_start_time_seconds",
        "gauge",
        "When the engine started (Unix time).",
        stats.started_at,
    )


def _tcp_connections(out: Exposition, c: ConnectionCounts) -> None:
    out.single("orchd_tcp_connections", "gauge", "TCP connections open.", c.open)
    out.single(
        "orchd_tcp_connections_accepted_total", "counter", "TCP connections admitted.",
        c.accepted_total,
    )  # fmt: skip
    out.family(
        "orchd_tcp_connections_refused_total",
        "counter",
        "TCP connections reset on arrival, by the cap that refused them.",
        [
            ("orchd_tcp_connections_refused_total", {"cap": "listener"}, c.refused_listener_total),
            ("orchd_tcp_connections_refused_total", {"cap": "peer"}, c.refused_peer_total),
            ("orchd_tcp_connections_refused_total", {"cap": "prefix"}, c.refused_prefix_total),
            ("orchd_tcp_connections_refused_total", {"cap": "reserve"}, c.refused_reserve_total),
        ],
    )
    out.single(
        "orchd_tcp_header_timeouts_total",
        "counter",
        "TCP connections reset for sending no request head in time.",
        c.header_timeouts_total,
    )
    out.single(
        "orchd_failed_logins_total", "counter", "Wrong tokens given over TCP.",
        c.failed_logins_total,
    )  # fmt: skip
    out.single(
        "orchd_failed_logins_throttled_total",
        "counter",
        "Token checks refused (429) because their address gave too many wrong tokens.",
        c.logins_refused_total,
    )
    out.single("orchd_unix_connections", "gauge", "Unix socket connections open.", c.unix_open)
    out.single(
        "orchd_unix_connections_refused_total",
        "counter",
        "Unix socket connections reset on arrival over unix.max_connections.",
        c.unix_refused_total,
    )


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")
