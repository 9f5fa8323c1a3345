"""The shapes the control API answers with and the small bodies it reads: each is also the
schema the OpenAPI document shows for it (``orchd.api.openapi``), so the two never differ."""

from __future__ import annotations

from typing import Annotated

import msgspec

from orchd.model import NodeInfo, ProcessStatus, ProcessSummary, Subscription


class Health(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The daemon's health. A TCP client without the bearer token gets ``status`` only."""

    #: "ok", or "degraded" when the database does not answer or refuses writes, or the
    #: engine's actors stopped (``database`` then says so: restart orchd)
    status: str
    version: str | None = None
    uptime_seconds: float | None = None
    processes: dict[str, int] | None = None
    database: str | None = None  # "ok" or what is wrong
    accepting: bool | None = None
    #: In a cluster (PostgreSQL): this node, and every node whose lease holds.
    node: str | None = None
    nodes: list[NodeInfo] | None = None


class SkipRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of a skip: why the step is skipped (recorded with it)."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=2000, pattern=r"\S")]


class NoteRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``PUT /api/subscriptions/{id}/note`` (an empty note clears it)."""

    note: Annotated[str, msgspec.Meta(max_length=10_000)]


class RetryOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The optional body of a retry."""

    reissue: bool = False


class Created(msgspec.Struct, kw_only=True):
    id: str


class GcRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The optional body of ``POST /api/gc``."""

    dry_run: bool = False


class GcResult(msgspec.Struct, kw_only=True):
    """What retention deleted now (or, for a dry run, would delete)."""

    dry_run: bool
    processes: int
    steps: int
    actions: int


class Accepted(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    status: ProcessStatus
    #: An abort of a process that is running: committed (a restart applies it too), and
    #: applied at its step boundary.
    requested: bool = False


class ProcessPage(msgspec.Struct, kw_only=True):
    items: list[ProcessSummary]
    next_cursor: str | None = None


class SubscriptionPage(msgspec.Struct, kw_only=True):
    items: list[Subscription]
    next_cursor: str | None = None


class ProblemError(msgspec.Struct, kw_only=True):
    loc: list[str | int]
    msg: str


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details; ``errors`` only for form validation (422)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemError] | None = None
    #: A start refused on its subscription (409): ``locked``, ``status``, ``in_use`` or
    #: ``stale``; with ``process_id`` (the holder) or ``in_use_by`` (the users).
    reason: str | None = None
    process_id: str | None = None
    in_use_by: list[str] | None = None
