"""Every error orchd raises on purpose, rooted in one class.

The API maps each class to a problem+json answer in one place (``api.problem_middleware``),
using the ``status`` and ``slug`` that the class itself declares::

    OrchdError
    ├── ConfigError                  a config file or key is wrong (exit status 2)
    ├── WorkflowDefinitionError      workflow code misuses the DSL
    ├── BadRequest                   400: malformed JSON or parameters
    │   └── DuplicateKey             a JSON object names one key twice
    ├── Unauthorized                 401: missing or wrong bearer token
    ├── CrossSiteRequest             403: a state-changing request from another site
    ├── NotFound                     404
    │   ├── WorkflowNotFound
    │   ├── ProcessNotFound
    │   ├── SubscriptionNotFound
    │   ├── CallbackNotFound
    │   └── ScheduleNotFound
    ├── Conflict                     409
    │   ├── InvalidTransition        the action is not allowed in the process's status
    │   ├── SubscriptionLocked       a start may not take the subscription (its ``reason``)
    │   ├── ScheduleRunning
    │   ├── IdempotencyConflict      an Idempotency-Key already started another workflow
    │   └── AmbiguousId              an id prefix matches more than one process
    ├── PayloadTooLarge              413
    ├── UnsupportedMediaType         415: a JSON API body that is not application/json
    ├── MisdirectedRequest           421: a Host that names no name of this daemon (TCP)
    ├── TooManyRequests              429: a client went over the configured rate
    ├── FormValidationError          422: the answer does not fit the form
    ├── IdempotencyKeyReused         422: an Idempotency-Key sent again with another body
    ├── StoreError                   503: the database refused a write
    │   └── LeaseLost                this node lost its lease (several nodes)
    └── ShuttingDown                 503: the engine no longer takes work
"""

from __future__ import annotations

from typing import Any, ClassVar


class OrchdError(Exception):
    """Raised for every failure orchd reports to its users."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def problem_type(self) -> str:
        return f"urn:orchd:problem:{self.slug}"

    @property
    def headers(self) -> dict[str, str]:
        """Headers the answer carries besides the problem (``Retry-After`` for a 429)."""
        return {}

    def problem(self) -> dict[str, Any]:
        return {
            "type": self.problem_type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }


class ConfigError(OrchdError):
    """Raised when a config file cannot be used; the message names the file and key."""

    slug = "config-error"
    title = "Configuration error"


class WorkflowDefinitionError(OrchdError):
    """Raised when workflow code misuses the DSL (at import or registration time)."""

    slug = "workflow-definition"
    title = "Invalid workflow definition"


class BadRequest(OrchdError):
    """Raised when a request is malformed (bad JSON, bad parameter)."""

    status = 400
    slug = "bad-request"
    title = "Bad request"


class DuplicateKey(BadRequest):
    """Raised when a JSON body names one key twice in an object (which value was meant?)."""

    slug = "duplicate-key"
    title = "Duplicate key in JSON"


class Unauthorized(OrchdError):
    """Raised when a TCP request lacks the right bearer token."""

    status = 401
    slug = "unauthorized"
    title = "Unauthorized"


class CrossSiteRequest(OrchdError):
    """Raised when a request that would change something comes from another site: its
    ``Origin`` is not the host it was sent to, or ``Sec-Fetch-Site`` says it is not
    same-origin. A browser made it on behalf of a page the operator visited."""

    status = 403
    slug = "cross-site-request"
    title = "Cross-site request refused"


class NotFound(OrchdError):
    """Raised when the thing a request names does not exist."""

    status = 404
    slug = "not-found"
    title = "Not found"


class WorkflowNotFound(NotFound):
    """Raised when no registered workflow has the name."""

    slug = "workflow-not-found"
    title = "Workflow not found"


class ProcessNotFound(NotFound):
    """Raised when no process has the id."""

    slug = "process-not-found"
    title = "Process not found"


class SubscriptionNotFound(NotFound):
    """Raised when no subscription has the id."""

    slug = "subscription-not-found"
    title = "Subscription not found"


class CallbackNotFound(NotFound):
    """Raised when a callback token is unknown."""

    slug = "callback-not-found"
    title = "Callback token not found"


class ScheduleNotFound(NotFound):
    """Raised when no schedule has the name."""

    slug = "schedule-not-found"
    title = "Schedule not found"


class Conflict(OrchdError):
    """Raised when an action is not allowed in the current state of things."""

    status = 409
    slug = "conflict"
    title = "Conflict"


class InvalidTransition(Conflict):
    """Raised when an action is not allowed in the process's current status."""

    slug = "invalid-transition"
    title = "Action not allowed in the current status"


class SubscriptionLocked(Conflict):
    """Raised when a start may not take the subscription it names; ``reason`` says why:
    ``locked`` (another process holds it), ``status`` (the workflow is not usable in its
    status), ``in_use`` (a TERMINATE while others use it) or ``stale`` (it changed since the
    ``version`` the start names). The problem carries ``reason`` and what it names."""

    slug = "subscription-locked"
    title = "Subscription not available"

    def __init__(
        self, detail: str, *, reason: str = "locked", extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.extra = extra or {}

    def problem(self) -> dict[str, Any]:
        return {**super().problem(), "reason": self.reason, **self.extra}


class ScheduleRunning(Conflict):
    """Raised when a schedule's previous run has not finished."""

    slug = "schedule-running"
    title = "Schedule already running"


class IdempotencyConflict(Conflict):
    """Raised when an ``Idempotency-Key`` already started a process of another workflow."""

    slug = "idempotency-conflict"
    title = "Idempotency key used for another workflow"


class AmbiguousId(Conflict):
    """Raised when an abbreviated process id matches more than one process."""

    slug = "ambiguous-id"
    title = "Ambiguous process id"


class PayloadTooLarge(OrchdError):
    """Raised when a request body exceeds the configured limit."""

    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(OrchdError):
    """Raised when a request to the JSON API carries a body that is not ``application/json``."""

    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class MisdirectedRequest(OrchdError):
    """Raised when a request's ``Host`` names neither this daemon's listener nor a name set in
    ``allowed_hosts`` (a DNS-rebinding page, or a request meant for another server)."""

    status = 421
    slug = "misdirected-request"
    title = "Misdirected request"


class TooManyRequests(OrchdError):
    """Raised when one client sends more requests than the configured rate allows, or its
    address sent too many wrong tokens; ``retry_after`` (seconds) goes out as ``Retry-After``."""

    status = 429
    slug = "too-many-requests"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class FormValidationError(OrchdError):
    """Raised when an input does not fit its form; ``errors`` says where."""

    status = 422
    slug = "validation-failed"
    title = "Form validation failed"

    def __init__(self, detail: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.errors = errors

    def problem(self) -> dict[str, Any]:
        body = super().problem()
        body["errors"] = self.errors
        return body


class IdempotencyKeyReused(OrchdError):
    """Raised when an ``Idempotency-Key`` that started a process comes again with another
    input: the client has mixed up two requests, and answering the first would hide it."""

    status = 422
    slug = "idempotency-key-reused"
    title = "Idempotency key used with another input"


class StoreError(OrchdError):
    """Raised when the database refuses a write (disk full, read-only, locked)."""

    status = 503
    slug = "store-unavailable"
    title = "Database unavailable"


class LeaseLost(StoreError):
    """Raised when this node does not hold its lease (it lapsed, or another incarnation of its
    node id holds it): nothing it writes for a process is committed, and it starts nothing."""


class ShuttingDown(OrchdError):
    """Raised when work is offered to an engine that is stopping."""

    status = 503
    slug = "shutting-down"
    title = "Shutting down"
