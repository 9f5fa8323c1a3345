"""The control API: aiohttp routes over the Engine (README "The HTTP API").

Handlers stay thin (parse, call the engine, encode). One middleware authorizes TCP requests,
turns every error into ``application/problem+json`` and counts answers for ``/metrics``. The
route table below is declared once: it registers the handlers and builds the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

from orchd import __version__
from orchd.api import inputs, metrics, openapi
from orchd.api.acceptance import Acceptance
from orchd.api.guard import GUARD_KEY
from orchd.api.identity import LABEL_PATTERN, MAX_LABEL, Identity, client_key, is_tcp
from orchd.api.logins import FailedLogins
from orchd.api.openapi import Param, Route
from orchd.api.service import SchedulerLike
from orchd.api.shapes import (
    Accepted,
    Created,
    GcRequest,
    GcResult,
    Health,
    NoteRequest,
    Problem,
    ProcessPage,
    RetryOptions,
    SkipRequest,
    SubscriptionPage,
)
from orchd.api.sse import EventStreams
from orchd.engine import Engine
from orchd.engine.formpages import FormPage
from orchd.engine.ids import MIN_PREFIX
from orchd.errors import (
    BadRequest,
    OrchdError,
    PayloadTooLarge,
    ScheduleNotFound,
    TooManyRequests,
    Unauthorized,
    WorkflowNotFound,
)
from orchd.model import (
    DEFAULT_PAGE,
    MAX_PAGE,
    Event,
    Process,
    ProcessStatus,
    ProductInfo,
    ResourceLimit,
    ScheduleInfo,
    SubscriptionDetail,
    SubscriptionStatus,
    WorkflowInfo,
)
from orchd.settings import EventSettings, TcpSettings
from orchd.state import require_object, validate_form

log = logging.getLogger("orchd.api")

#: Seconds the health check waits for the database.
PING_TIMEOUT = 5.0
#: How the OpenAPI document describes a number the API reads (``inputs.integer``), and an
#: abbreviated process id. A pattern cannot say "at most 2**63 - 1": it says 18 digits.
MAX_NUMBER = inputs.MAX_INTEGER
NUMBER_PATTERN = "^0*[0-9]{1,18}$"
PREFIX_PATTERN = f"^[0-9a-fA-F][0-9a-fA-F-]{{{MIN_PREFIX - 1},34}}$"


_encoder = msgspec.json.Encoder()


def _json(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_encoder.encode(value),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def _problem(body: Mapping[str, Any]) -> web.Response:
    try:
        encoded = _encoder.encode(msgspec.convert(body, Problem))
    except msgspec.ValidationError:
        encoded = _encoder.encode(body)  # an unusual shape still goes out whole
    return web.Response(
        body=encoded, status=int(body["status"]), content_type="application/problem+json"
    )


class ControlApi:
    """The handlers, bound to one engine; ``orchd.api.app.create_app`` wires them up. Its
    public attributes are what the web console may use too (``orchd.api.service.Service``)."""

    def __init__(
        self,
        engine: Engine,
        scheduler: SchedulerLike | None,
        *,
        max_body: int,
        token: str | None,
        heartbeat: float,
        events: EventSettings,
        acceptance: Acceptance | None = None,
        logins: FailedLogins | None = None,
        rate_limit: float = 0.0,
    ) -> None:
        self.engine = engine
        #: Who asks: the token over TCP (wrong ones counted per address), the peer's uid on
        #: the socket, the reporter label.
        self.identity = Identity(token, logins or FailedLogins.of(TcpSettings()))
        #: Which requests are taken at all (Host, Origin, media type): every route's first check.
        self.acceptance = acceptance or Acceptance()
        self.scheduler = scheduler
        self.max_body = max_body
        self.streams = EventStreams(events, heartbeat)
        self.requests: Counter[int] = Counter()
        self._limiter = RateLimiter(rate_limit) if rate_limit > 0 else None
        self.routes = self._route_table()
        self._public = {(r.method, r.path) for r in self.routes if r.public}
        #: Route prefixes whose handlers authorise requests themselves (the web console).
        self._own_auth: tuple[str, ...] = ()
        self._document: dict[str, Any] | None = None

    # -- the middleware -------------------------------------------------------------------

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: openapi.Handler
    ) -> web.StreamResponse:
        try:
            self.acceptance.check(request, tcp=is_tcp(request))
            self._authorize(request)
            if self._limiter is not None and _route(request) not in UNLIMITED:
                self._limiter.take(client_key(request))
            response = await handler(request)
        except OrchdError as exc:
            response = _problem(exc.problem())
            response.headers.update(exc.headers)
            if isinstance(exc, Unauthorized):
                response.headers["WWW-Authenticate"] = "Bearer"
        except ConnectionError:
            # The client went away mid-request: nobody will read this, and nothing went
            # wrong here (aiohttp would log a re-raised error as a crash).
            log.debug("client disconnected method=%s route=%s", request.method, _route(request))
            response = _problem(BadRequest("the client closed the connection").problem())
        except web.HTTPException as exc:
            if exc.status < 400:
                self.requests[exc.status] += 1
                raise
            response = self._http_problem(request, exc)
        except Exception:
            # The route's template, never the raw path: a callback token is a secret.
            log.exception("unhandled error method=%s route=%s", request.method, _route(request))
            response = _problem(
                {
                    "type": "urn:orchd:problem:internal-error",
                    "title": "Internal error",
                    "status": 500,
                    "detail": "an unexpected error occurred; the daemon's log has the details",
                }
            )
        self.requests[response.status] += 1
        return response

    def _authorize(self, request: web.Request) -> None:
        if (_method(request), _route(request)) in self._public:
            return
        route = _route(request) or ""
        if any(route == own or route.startswith(own + "/") for own in self._own_auth):
            return
        self.identity.authorize(request, route)

    def authorises_itself(self, prefix: str) -> None:
        """Leave the routes under ``prefix`` to authorise their own requests: the web console
        takes a session cookie where the API takes the bearer token."""
        self._own_auth = (*self._own_auth, prefix)

    def _http_problem(self, request: web.Request, exc: web.HTTPException) -> web.Response:
        if isinstance(exc, web.HTTPNotFound):
            detail = f"no route {request.method} {request.path}"
        elif isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            detail = f"{request.method} is not allowed here; allowed: {allowed}"
        else:
            detail = exc.text or exc.reason
        response = _problem(
            {
                "type": f"urn:orchd:problem:http-{exc.status}",
                "title": exc.reason,
                "status": exc.status,
                "detail": detail,
            }
        )
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response

    # -- request helpers ------------------------------------------------------------------

    async def _body(self, request: web.Request, empty: Any) -> Any:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise PayloadTooLarge(f"the body has {length} bytes; the limit is {self.max_body}")
        chunks: list[bytes] = []
        size = 0
        # Counted while reading too: a chunked body declares no length.
        while chunk := await request.content.read(1 << 16):
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLarge(f"the body exceeds the limit of {self.max_body} bytes")
            chunks.append(chunk)
        return inputs.decode_body(b"".join(chunks), empty)

    @staticmethod
    def _accepted(pid: str, status: ProcessStatus) -> web.Response:
        return _json(Accepted(id=pid, status=status), status=202)

    # -- handlers -------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        full = self.identity.shows_token(request, _route(request) or "")
        body, code = await self.health_report(full=full)
        return _json(body, status=code)

    async def health_report(self, *, full: bool) -> tuple[Health, int]:
        """The daemon's health and its HTTP status; ``full=False``: the status only."""
        engine = self.engine
        database = "ok"
        counts: dict[str, int] = {}
        nodes = None
        try:
            await asyncio.wait_for(engine.ping(), PING_TIMEOUT)
            counts = await engine.counts()
            nodes = await engine.live_nodes()
        except Exception as exc:  # any failure of the database is what health reports
            database = f"error: {type(exc).__name__}: {exc}"
        stats = engine.stats()
        failing = stats.store.failing
        if failing and database == "ok":
            database = f"writes failing: {failing}"
        code = 200 if database == "ok" else 503
        if not full:
            # A stranger on TCP learns whether the daemon is well, nothing more (README "The HTTP
            # API"): not
            # the database's path, not the error text.
            return Health(status="ok" if code == 200 else "degraded"), code
        body = Health(
            status="ok" if database == "ok" else "degraded",
            version=__version__,
            uptime_seconds=round(stats.uptime_seconds, 3),
            processes=counts,
            database=database,
            accepting=engine.accepting,
            node=stats.node_id,
            nodes=nodes,
        )
        return body, code

    async def list_workflows(self, request: web.Request) -> web.Response:
        return _json(self.engine.workflow_info())

    async def start_process(self, request: web.Request) -> web.Response:
        workflow = request.match_info["workflow"]
        reporter = self.identity.reporter(request)
        if workflow not in self.engine.workflows:
            # Before reading the body: an unknown workflow is 404 whatever was posted.
            raise WorkflowNotFound(f"no workflow named {workflow!r}")
        # null too: the engine would take None for "no input"
        key = inputs.idempotency_key(request)
        body = await self._body(request, {})
        if not isinstance(body, list):  # a list: the answers of the form's pages
            body = require_object(body)
        pid, created = await self.engine.start_once(
            workflow,
            body,
            reporter=reporter,
            idempotency_key=key,
            # README "Traces": a valid one joins its trace; an invalid one is ignored.
            traceparent=request.headers.get("traceparent"),
        )
        return _json(
            Created(id=pid),
            status=201 if created else 200,
            headers={"Location": f"/api/processes/{pid}"},
        )

    async def list_processes(self, request: web.Request) -> web.Response:
        query = request.query
        page = await self.engine.list_processes(
            status=inputs.text(query, "status"),
            workflow=inputs.text(query, "workflow"),
            parent=inputs.text(query, "parent"),
            q=inputs.text(query, "q"),
            top_level=inputs.flag(query, "top"),
            limit=inputs.page_limit(query),
            cursor=inputs.cursor(query),
        )
        return _json(ProcessPage(items=page.items, next_cursor=page.next_cursor))

    async def get_process(self, request: web.Request) -> web.Response:
        return _json(await self.engine.get(request.match_info["id"]))

    async def workflow_form_page(self, request: web.Request) -> web.Response:
        workflow = request.match_info["name"]
        if workflow not in self.engine.workflows:
            raise WorkflowNotFound(f"no workflow named {workflow!r}")
        answers = await self._body(request, [])
        return _json(await self.engine.form_page(workflow, answers))

    async def process_form_page(self, request: web.Request) -> web.Response:
        answers = await self._body(request, [])
        return _json(await self.engine.process_form_page(request.match_info["id"], answers))

    async def resume_process(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        reporter = self.identity.reporter(request)
        answer = await self._body(request, {})
        status = await self.engine.resume(pid, answer, reporter=reporter)
        return self._accepted(pid, status)

    async def retry_process(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        reporter = self.identity.reporter(request)
        try:
            options = msgspec.convert(await self._body(request, {}), RetryOptions)
        except msgspec.ValidationError as exc:
            raise BadRequest(f'retry takes no body or {{"reissue": true}}: {exc}') from None
        status = await self.engine.retry(pid, reporter=reporter, reissue=options.reissue)
        return self._accepted(pid, status)

    async def skip_process(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        reporter = self.identity.reporter(request)
        reason = validate_form(SkipRequest, await self._body(request, {}))["reason"]
        status = await self.engine.skip(pid, reason, reporter=reporter)
        return self._accepted(pid, status)

    async def answer_callback(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        reporter = self.identity.reporter(request)
        payload = await self._body(request, None)
        status = await self.engine.answer_callback(pid, payload, reporter=reporter)
        return self._accepted(pid, status)

    async def abort_process(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        status = await self.engine.abort(pid, reporter=self.identity.reporter(request))
        if status in (ProcessStatus.CREATED, ProcessStatus.RUNNING):
            return _json(Accepted(id=pid, status=status, requested=True), status=202)
        return self._accepted(pid, status)

    async def post_callback(self, request: web.Request) -> web.Response:
        reporter = self.identity.reporter(request)
        payload = await self._body(request, None)
        pid = await self.engine.callback(
            request.match_info["token"],
            payload,
            reporter=reporter,
            traceparent=request.headers.get("traceparent"),
        )
        # The answer is committed and the process is running its validate step.
        return self._accepted(pid, ProcessStatus.RUNNING)

    async def list_subscriptions(self, request: web.Request) -> web.Response:
        query = request.query
        page = await self.engine.list_subscriptions(
            status=inputs.text(query, "status"),
            customer_id=inputs.text(query, "customer_id"),
            product=inputs.text(query, "product"),
            q=inputs.text(query, "q"),
            limit=inputs.page_limit(query),
            cursor=inputs.cursor(query),
        )
        return _json(SubscriptionPage(items=page.items, next_cursor=page.next_cursor))

    async def get_subscription(self, request: web.Request) -> web.Response:
        return _json(await self.engine.get_subscription(request.match_info["id"]))

    async def set_note(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        by = self.identity.reporter(request)
        note = validate_form(NoteRequest, await self._body(request, None))["note"]
        await self.engine.set_note(sid, note, by=by)
        return _json(await self.engine.get_subscription(sid))

    async def list_products(self, request: web.Request) -> web.Response:
        return _json(self.engine.products())

    async def list_resources(self, request: web.Request) -> web.Response:
        return _json(await self.engine.resource_limits())

    async def list_schedules(self, request: web.Request) -> web.Response:
        return _json(await self.scheduler.entries() if self.scheduler is not None else [])

    async def run_schedule(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if self.scheduler is None:
            raise ScheduleNotFound(f"no schedule named {name!r} (no scheduler runs)")
        pid = await self.scheduler.run_now(name)
        return _json(Created(id=pid), status=201, headers={"Location": f"/api/processes/{pid}"})

    async def events(self, request: web.Request) -> web.StreamResponse:
        after = inputs.event_id(request)
        only = await inputs.process_filter(request, self.engine.resolve_id)
        client = client_key(request)
        return await self.streams.serve(request, client, self.engine.stream, after, only)

    async def gc(self, request: web.Request) -> web.Response:
        try:
            options = msgspec.convert(await self._body(request, {}), GcRequest)
        except msgspec.ValidationError as exc:
            raise BadRequest(f'gc takes no body or {{"dry_run": true}}: {exc}') from None
        done = await self.engine.gc(dry_run=options.dry_run)
        return _json(
            GcResult(
                dry_run=options.dry_run,
                processes=done.processes,
                steps=done.steps,
                actions=done.actions,
            )
        )

    async def metrics(self, request: web.Request) -> web.Response:
        engine = self.engine
        runs = getattr(self.scheduler, "run_counts", None)
        guard = request.app.get(GUARD_KEY)
        by_status, by_workflow = await engine.counts_by_workflow()
        text = metrics.render(
            stats=engine.stats(),
            counts=by_status,
            requests=self.requests,
            schedule_runs=runs() if callable(runs) else None,
            streams=self.streams.counts(),
            connections=None if guard is None else guard.counts(),
            by_workflow=by_workflow,
        )
        return web.Response(body=text.encode(), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def openapi_document(self, request: web.Request) -> web.Response:
        if self._document is None:
            document = openapi.document(
                self.routes, title="orchd control API", version=__version__, problem=Problem
            )
            openapi.describe_starts(document, "/api/processes/{id}", self.engine.workflow_info())
            openapi.describe_products(document, self.engine.products())
            self._document = document
        return _json(self._document)

    # -- the route table ------------------------------------------------------------------

    def _route_table(self) -> list[Route]:
        page = (
            Param(
                "limit",
                f"page size (default {DEFAULT_PAGE}, at most {MAX_PAGE})",
                "integer",
                constraints=(("minimum", 1), ("maximum", MAX_NUMBER)),
            ),
            Param(
                "cursor",
                "`next_cursor` of the previous page",
                constraints=(("pattern", NUMBER_PATTERN),),
            ),
        )
        # Who asks is recorded with this label (README "The HTTP API") by every route that acts.
        reporter = (
            Param(
                "X-Orchd-Reporter",
                "a label for the audit trail, added to who the transport says the client is "
                "(`uid:1000 (alice)`), never replacing it",
                constraints=(("maxLength", MAX_LABEL), ("pattern", LABEL_PATTERN)),
            ),
        )
        process_status = tuple(s.value for s in ProcessStatus)
        sub_status = tuple(s.value for s in SubscriptionStatus)
        action = (404, 409, 503)
        return [
            Route("GET", "/api/health", self.health,
                  "Liveness and database health (over TCP without the token: the status only)",
                  Health, alternatives=((503, Health),),
                  described=((200, "The daemon and its database are well"),
                             (503, "Degraded: the database does not answer or refuses "
                                    "writes, or the engine's actors stopped")),
                  public=True),
            Route("GET", "/api/workflows", self.list_workflows, "Registered workflows",
                  list[WorkflowInfo]),
            Route("POST", "/api/processes/{workflow}", self.start_process,
                  "Start a process. With an Idempotency-Key header: 200 and the id of the "
                  "process of this workflow that holds the key, when one does (409 for another "
                  "workflow's). A valid W3C traceparent header: the process joins that trace",
                  Created, status=201, alternatives=((200, Created),),
                  described=((201, "Started"),
                             (200, "The process this Idempotency-Key started, with this input")),
                  request=dict[str, Any] | list[dict[str, Any]],
                  headers=(Param("Idempotency-Key",
                                 "a start with a key that started a process of this workflow "
                                 "with the same input answers that process (200); another "
                                 "input gets 422, another workflow 409",
                                 constraints=(("minLength", 1),
                                              ("maxLength", inputs.MAX_IDEMPOTENCY_KEY),
                                              ("pattern", "^[!-~]+$"))),
                           *reporter),
                  errors=(400, 404, 409, 413, 422, 503), doc_path="/api/processes/{id}",
                  path_doc=(("id", "for a start: the workflow's name"),)),
            Route("POST", "/api/workflows/{name}/form", self.workflow_form_page,
                  "The next page of a workflow's form after the answers given so far (a JSON "
                  "list, page 0 first; [] asks page 0): {\"page\", \"form\"}, or "
                  "{\"done\": true}; a 422 locates errors by page and field "
                  "([\"pages\", 1, \"vlan\"]). Nothing is kept between calls",
                  FormPage, request=list[dict[str, Any]], errors=(400, 404, 413, 422)),
            Route("POST", "/api/processes/{id}/form", self.process_form_page,
                  "As /api/workflows/{name}/form, for the form a suspended process waits for",
                  FormPage, request=list[dict[str, Any]], errors=(400, 404, 409, 413, 422)),
            Route("GET", "/api/processes", self.list_processes, "Processes, newest first",
                  ProcessPage, errors=(400,),
                  query=(Param("status", "only this status", enum=process_status),
                         Param("workflow", "only this workflow"),
                         Param("parent", "only the children of this process",
                               constraints=(("format", "uuid"),)),
                         Param("q", "an id's first characters, or text in the workflow's "
                               "name or in its subscription (as the subscriptions' q)"),
                         Param("top", "true: no child processes", enum=("true", "false")),
                         *page)),
            Route("GET", "/api/processes/{id}", self.get_process, "One process with its steps",
                  Process, errors=(404,), path_doc=(("id", "the process id"),)),
            Route("POST", "/api/processes/{id}/resume", self.resume_process,
                  "Answer a suspended process's form: its object, or the list of its pages' "
                  "answers", Accepted, status=202,
                  request=dict[str, Any] | list[dict[str, Any]], headers=reporter,
                  errors=(400, 413, 422, *action)),
            Route("POST", "/api/processes/{id}/retry", self.retry_process,
                  "Re-run the failed step; with {\"reissue\": true} after a callback's "
                  "validate step failed, ask the external system again", Accepted, status=202,
                  request=RetryOptions, headers=reporter, errors=(400, 413, *action)),
            Route("POST", "/api/processes/{id}/abort", self.abort_process, "Abort a process",
                  Accepted, status=202, headers=reporter, errors=(400, *action)),
            Route("POST", "/api/processes/{id}/skip", self.skip_process,
                  "Record the failing step of a failed or waiting process as skipped (State as "
                  "it was) and go on with the next step", Accepted, status=202,
                  request=SkipRequest, body_required=True, headers=reporter,
                  errors=(400, 413, 422, *action)),
            Route("POST", "/api/processes/{id}/callback", self.answer_callback,
                  "An operator answers an awaiting_callback process in the external system's "
                  "place", Accepted, status=202, request=Any, headers=reporter,
                  errors=(400, 413, 422, *action)),
            Route("POST", "/api/callbacks/{token}", self.post_callback,
                  "An external system's answer for an awaiting_callback process (the token is "
                  "the credential: no bearer token needed over TCP)", Accepted,
                  status=202, request=Any, headers=reporter, errors=(400, 413, 422, *action),
                  public=True),
            Route("GET", "/api/subscriptions", self.list_subscriptions, "Subscriptions",
                  SubscriptionPage, errors=(400,),
                  query=(Param("status", "only this status", enum=sub_status),
                         Param("customer_id", "only this customer"),
                         Param("product", "only this product"),
                         Param("q", "text found in the description or any text value"),
                         *page)),
            Route("GET", "/api/subscriptions/{id}", self.get_subscription,
                  "One subscription with its processes, relations (depends_on, in_use_by), "
                  "note and the workflows of its product (usable now, or the reason not)",
                  SubscriptionDetail, errors=(404,)),
            Route("PUT", "/api/subscriptions/{id}/note", self.set_note,
                  "Set the subscription's note (recorded in its actions with who set it)",
                  SubscriptionDetail, request=NoteRequest, body_required=True, headers=reporter,
                  errors=(400, 404, 413, 422)),
            Route("GET", "/api/products", self.list_products,
                  "Each product with its JSON Schema and its workflows", list[ProductInfo]),
            Route("GET", "/api/schedules", self.list_schedules, "The scheduler's entries",
                  list[ScheduleInfo]),
            Route("GET", "/api/resources", self.list_resources,
                  "Each limit on shared resources ([limits]), its keys in use (in the whole "
                  "cluster) with their holders, and how many steps wait for each",
                  list[ResourceLimit]),
            Route("POST", "/api/schedules/{name}/run", self.run_schedule,
                  "Run a schedule's workflow now", Created, status=201, errors=(404, 409, 503)),
            Route("GET", "/api/events", self.events,
                  "Server-sent events: process status changes and committed steps", Event,
                  media_type="text/event-stream", errors=(400, 404, 409),
                  query=(Param("after", "replay events after this id (or Last-Event-ID)",
                               "integer", constraints=(("minimum", 0), ("maximum", MAX_NUMBER))),
                         Param("process", "only this process's events: its id, or a unique "
                               f"prefix of at least {MIN_PREFIX} characters (404 when no "
                               "process has it, 409 when several do)",
                               constraints=(("anyOf", [{"format": "uuid"},
                                                       {"pattern": PREFIX_PATTERN}]),))),
                  headers=(Param("Last-Event-ID", "the id of the last event received: the "
                                 "stream resumes after it (across restarts too)",
                                 constraints=(("pattern", "^\\s*(0*[0-9]{1,18})?\\s*$"),)),)),
            Route("POST", "/api/gc", self.gc,
                  "Delete completed and aborted processes older than the retention (with "
                  "{\"dry_run\": true}: count them)", GcResult, request=GcRequest,
                  errors=(400, 413, 503)),
            Route("GET", "/metrics", self.metrics, "Prometheus text exposition", str,
                  media_type="text/plain"),
            Route("GET", "/api/openapi.json", self.openapi_document, "This document",
                  dict[str, Any]),
        ]  # fmt: skip


class RateLimiter:
    """A token bucket per client (uid on the socket, address on TCP)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(2 * rate, 1.0)
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str) -> None:
        now = time.monotonic()
        tokens, last = self.buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self.buckets[client] = (tokens, now)
            raise TooManyRequests(
                f"more than {self.rate:g} requests per second from {client}",
                retry_after=max(1, math.ceil((1.0 - tokens) / self.rate)),
            )
        self.buckets[client] = (tokens - 1.0, now)
        if len(self.buckets) > 10_000:  # forget idle clients rather than grow
            idle = [k for k, (_, seen) in self.buckets.items() if now - seen > 60]
            for key in idle:
                del self.buckets[key]


#: Routes outside the rate limit: monitoring must see the daemon even when a client floods it.
UNLIMITED = frozenset({"/api/health"})


def _method(request: web.Request) -> str:
    """HEAD is GET without the body: it is authorised as the GET of the same route."""
    return "GET" if request.method == "HEAD" else request.method


def _route(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None
