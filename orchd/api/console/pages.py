"""The console's pages: what an operator reads (every ``GET`` under ``/ui``).

Each page asks the engine what the JSON API would ask it (``Engine.list_processes``,
``Engine.get``, the scheduler's entries, the API's own health report) and renders that, so
the console never shows something the API would not. The live parts of a page (the process
list's rows, a process's sections) are re-fetched by ``static/console.js`` from the same
handlers when the event stream (``/ui/events``, the API's stream behind the console's
session) says something changed.
"""

from __future__ import annotations

import importlib.resources
import logging
import secrets
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from orchd.api import identity, inputs
from orchd.api.console.core import (
    Console,
    posted_text,
    safe_next,
    see_other,
    session_of,
)
from orchd.api.console.definition import child_elements, reissuable
from orchd.api.console.flash import Flashes
from orchd.api.console.forms import Field, RenderedForm, build_form, place_errors
from orchd.api.console.paging import PagedForm
from orchd.api.console.products import (
    attribute_view,
    product_fields,
    referred_by,
    relation_graph,
)
from orchd.api.console.session import clear_cookie, set_cookie
from orchd.api.console.timeline import build as build_timeline
from orchd.branchpaths import within
from orchd.dsl import StepKind
from orchd.engine import Engine
from orchd.errors import BadRequest, OrchdError, WorkflowNotFound
from orchd.model import (
    ALLOWED,
    HOLDS_SUBSCRIPTION,
    Process,
    ProcessStatus,
    ProcessSummary,
    StepRecord,
    SubscriptionStatus,
    Target,
    WorkflowInfo,
)
from orchd.pages import is_pages

log = logging.getLogger("orchd.api.console")

#: Static files by name, read once from the package.
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}

#: What a row of the list shows of a process that ``Engine.get`` gives as well.
SUMMARY_FIELDS = [f for f in ProcessSummary.__struct_fields__ if f in Process.__struct_fields__]

#: What a successful action's redirect says on the process page (``?done=``).
NOTICES = {
    "started": "Started.",
    "already": "This form had started this process already: nothing else was started.",
    "resumed": "The answer was accepted; the process goes on.",
    "retried": "Retrying the failed step.",
    "skipped": "The step was skipped; the process goes on.",
    "aborted": "Aborted.",
    "answered": "The callback answer was accepted.",
    "ran": "The schedule's workflow was started now.",
    "noted": "The note was saved.",
}

#: What a start page asks beside the form of a workflow that changes a subscription: which
#: one (the engine wants ``subscription_id``), and the version it was read at (a start is
#: refused as ``stale`` when the subscription has changed since).
SUBSCRIPTION_INPUTS: dict[str, dict[str, Any]] = {
    "subscription_id": {
        "type": "string",
        "format": "uuid",
        "title": "Subscription",
        "description": "The id of the subscription this workflow works on.",
    },
    "version": {
        "anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}],
        "title": "Version",
        "description": "The subscription's version when you read it: the start is refused if "
        "it has changed since. Leave it empty to start on whatever it is now.",
    },
}


#: The free JSON box of a workflow without a form: its input, as the API would take it.
FREE_INPUT = "orchd-input"


def start_schema(info: WorkflowInfo) -> dict[str, Any] | None:
    """The schema a start page draws and reads: the workflow's form, and for a workflow that
    works on a subscription (MODIFY, TERMINATE, VALIDATE, RECONCILE) the subscription's id and
    version first, unless its form has them (the engine takes both beside the form)."""
    return with_subscription(info, info.form)


def with_subscription(info: WorkflowInfo, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """``schema`` (a one-page form, or page 0 of a form of pages) with the subscription's id
    and version first, for a workflow that holds a subscription."""
    if info.target not in HOLDS_SUBSCRIPTION:
        return schema
    form = schema or {"type": "object", "properties": {}}
    properties = dict(form.get("properties") or {})
    extra = {k: v for k, v in SUBSCRIPTION_INPUTS.items() if k not in properties}
    required = list(form.get("required") or ())
    if "subscription_id" in extra:
        required.insert(0, "subscription_id")
    return {**form, "properties": {**extra, **properties}, "required": required}


def free_input(text: str = "", errors: list[str] | None = None) -> Field:
    """The JSON box a start page shows for a workflow without a form."""
    return Field(
        name=FREE_INPUT,
        kind="json",
        label="Input",
        required=False,
        description="This workflow declares no form: its steps read what they need from this "
        'JSON object, as the API takes it (e.g. {"items": [1, 2]}). Empty: {}.',
        value=text,
        errors=list(errors or []),
    )


def start_form(
    info: WorkflowInfo,
    schema: dict[str, Any] | None,
    *,
    answer: dict[str, Any] | None = None,
    prefill: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
    text: str = "",
) -> RenderedForm:
    """The start page's form of a workflow with one page or none: the fields of ``schema``
    (``Pages.start_schema``), and for a workflow without a form the JSON box with ``text``,
    where errors that name no field of the page go."""
    form = build_form(schema, answer=answer, prefill=prefill)
    if info.form is None:
        form.fields.append(free_input(text))
    place_errors(form, errors or [])
    if info.form is None:
        box = form.fields[-1]
        box.errors.extend(form.errors)  # a problem of the input as a whole: the box's
        form.errors = []
    return form


def inputstep_paged(engine: Engine, process: Process) -> bool:
    """Whether the inputstep a suspended process stands at asks a form of several pages."""
    wf = engine.workflows.get(process.workflow)
    if wf is None or process.current_step is None:
        return False
    return any(
        s.kind is StepKind.INPUT and s.name == process.current_step and is_pages(s.func)
        for s in wf.steps
    )


def load_static() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    folder = importlib.resources.files("orchd.api.console") / "static"
    for item in folder.iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in STATIC_TYPES:
            files[item.name] = (item.read_bytes(), STATIC_TYPES[suffix])
    return files


#: Beyond this many branch step records, the timeline shows the main line only (and the
#: branches section counts them); a branch's own steps are one click away.
TIMELINE_BRANCH_STEPS = 200


def timeline(
    process: Process, branch: str | None = None
) -> tuple[list[tuple[int, StepRecord, str | None]], int]:
    """The step records, numbered, each with its branch (README "Parallel branches"; ``None``: the
    main
    line): those of ``branch`` and the branches under it when one is asked for, else all of
    them while they are few, else the main line's. Also how many branch records were left out."""
    numbered = [(i + 1, s, s.branch) for i, s in enumerate(process.steps)]
    if branch:
        return [n for n in numbered if within(n[2], branch)], 0
    in_branches = sum(1 for n in numbered if n[2] is not None)
    if in_branches <= TIMELINE_BRANCH_STEPS:
        return numbered, 0
    return [n for n in numbered if n[2] is None], in_branches


class Pages:
    """The ``GET`` handlers (and the login, which comes before any session)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.engine = console.engine
        self.static = load_static()
        self.flashes = Flashes()

    # -- processes ------------------------------------------------------------------------

    async def processes(self, request: web.Request) -> web.Response:
        """The process list: top-level processes (a parent's children are on its page, or
        listed with ``children=true`` or ``parent=ID``), filtered as ``GET /api/processes``
        filters them (``q`` searches ids, workflows and subscriptions alike)."""
        query = request.query
        status, workflow = inputs.text(query, "status"), inputs.text(query, "workflow")
        parent, q = inputs.text(query, "parent"), inputs.text(query, "q")
        children = inputs.flag(query, "children")
        cursor = inputs.cursor(query)
        page = await self.engine.list_processes(
            status=status,
            workflow=workflow,
            parent=parent,
            q=q,
            top_level=parent is None and not children,
            limit=inputs.page_limit(query),
            cursor=cursor,
        )
        filters = {
            "status": status or "",
            "workflow": workflow or "",
            "q": q or "",
            "children": "true" if children else "",
            "parent": parent or "",
        }
        return self.console.render(
            request,
            "processes.html",
            title="Processes",
            nav="processes",
            items=page.items,
            next_cursor=page.next_cursor,
            first_page=cursor is None,
            filters=filters,
            filtered=any(v for k, v in filters.items() if k != "parent"),
            statuses=[s.value for s in ProcessStatus],
            workflows=[w.name for w in self.engine.workflow_info()],
        )

    async def process_row(self, request: web.Request) -> web.Response:
        """One row of the list, as the list has it (the live list's refresh)."""
        process = await self.engine.get(request.match_info["id"])
        fields = {f: getattr(process, f) for f in SUMMARY_FIELDS}
        if process.subscription_id is not None:
            sub = await self.engine.get_subscription(process.subscription_id)
            fields.update(customer_id=sub.customer_id, subscription_description=sub.description)
        return self.console.render(request, "process_row.html", p=ProcessSummary(**fields))

    async def process(self, request: web.Request) -> web.Response:
        process = await self.engine.get(request.match_info["id"])
        done = request.query.get("done", "")
        shown = self.flashes.take(session_of(request).id, request.query.get("flash"))
        if shown:  # a refused action's redirect: its problem and what was typed
            return self.process_page(request, process, **shown)
        resume_form = None
        if process.status == ProcessStatus.SUSPENDED:
            # Page 0 of its form with the choices read now (the stored one has those of
            # when it suspended); the stored one if the form cannot be built now.
            try:
                resume_form = await self.resume_pages(process).first()
            except Exception as exc:  # its form's code fails now: the page still shows
                log.warning("console: process=%s form not built now: %s", process.id, exc)
                resume_form = None
        return self.process_page(
            request, process, notice=NOTICES.get(done), resume_form=resume_form
        )

    def resume_pages(self, process: Process) -> PagedForm:
        """The form a suspended process waits for, page by page (one page: no page controls)."""
        pid = process.id

        async def ask(answers: list[Any]) -> Any:
            return await self.engine.process_form_page(pid, answers)

        return PagedForm(ask, paged=inputstep_paged(self.engine, process))

    def process_page(
        self,
        request: web.Request,
        process: Process,
        *,
        status: int = 200,
        notice: str | None = None,
        problem: dict[str, Any] | None = None,
        resume_form: RenderedForm | None = None,
        skip: dict[str, Any] | None = None,
        callback: dict[str, Any] | None = None,
    ) -> web.Response:
        """One process; the ``resume_form``, ``skip`` and ``callback`` of a refused action
        keep what the operator typed, with the errors next to it."""
        allowed = {action.value for action, when in ALLOWED.items() if process.status in when}
        if resume_form is None and process.form is not None and "resume" in allowed:
            resume_form = build_form(process.form)
            if inputstep_paged(self.engine, process):
                resume_form.page = 0
        branch = request.query.get("branch") or None
        steps, hidden = timeline(process, branch)
        drawn = build_timeline(process, steps, datetime.now(UTC))
        return self.console.render(
            request,
            "process.html",
            status=status,
            title=f"{process.workflow} {process.id[:8]}",
            nav="processes",
            p=process,
            allowed=allowed,
            steps=steps,
            tl=drawn,
            branches=any(b for _, _, b in steps) or bool(branch),
            branch=branch,
            hidden_branch_steps=hidden,
            resume_form=resume_form,
            reissue="retry" in allowed and reissuable(self.engine, process),
            elements=child_elements(self.engine, process),
            skip=skip or {"reason": "", "errors": []},
            callback=callback or {"payload": "", "errors": []},
            notice=notice,
            problem=problem,
        )

    # -- workflows ------------------------------------------------------------------------

    async def workflows(self, request: web.Request) -> web.Response:
        return self.console.render(
            request,
            "workflows.html",
            title="Start a workflow",
            nav="workflows",
            workflows=self.engine.workflow_info(),
        )

    async def workflow(self, request: web.Request) -> web.Response:
        info = self.workflow_info(request.match_info["name"])
        prefill = {k: v for k, v in request.query.items() if isinstance(v, str)}
        if info.paged:
            form = await self.start_pages(info).first(prefill)
        else:
            form = start_form(info, await self.start_schema(info), prefill=prefill)
        return self.start_page(request, info, form)

    async def start_schema(self, info: WorkflowInfo) -> dict[str, Any] | None:
        """The schema a one-page start draws and reads: ``start_schema``, with the choices of
        its ``choices(...)`` fields read now (the engine's page 0 of the form)."""
        if info.form is None:
            return start_schema(info)
        try:
            page = await self.engine.form_page(info.name, [])
        except OrchdError:  # its form cannot list its choices now: the fields without them
            return start_schema(info)
        return with_subscription(info, page.form)

    def start_pages(self, info: WorkflowInfo) -> PagedForm:
        """A workflow's form of several pages; page 0 also asks the subscription of a workflow
        that holds one (the engine takes ``subscription_id`` and ``version`` from page 0)."""
        name = info.name

        async def ask(answers: list[Any]) -> Any:
            return await self.engine.form_page(name, answers)

        def adjust(index: int, schema: dict[str, Any] | None) -> dict[str, Any] | None:
            return with_subscription(info, schema) if index == 0 else schema

        return PagedForm(ask, adjust=adjust)

    def workflow_info(self, name: str) -> WorkflowInfo:
        for info in self.engine.workflow_info():
            if info.name == name:
                return info
        raise WorkflowNotFound(f"no workflow named {name!r}")

    def start_page(
        self,
        request: web.Request,
        info: WorkflowInfo,
        form: RenderedForm,
        status: int = 200,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> web.Response:
        return self.console.render(
            request,
            "workflow.html",
            status=status,
            title=f"Start {info.name}",
            nav="workflows",
            wf=info,
            form=form,
            # A double submit (or a reload of the post) answers the same process; the pages
            # of a form of several pages carry the key of their first page.
            idempotency_key=idempotency_key or f"console-{secrets.token_hex(16)}",
            **extra,
        )

    # -- subscriptions, schedules, health -------------------------------------------------

    async def subscriptions(self, request: web.Request) -> web.Response:
        query = request.query
        filters = {k: inputs.text(query, k) for k in ("q", "status", "customer_id", "product")}
        page = await self.engine.list_subscriptions(
            **filters, limit=inputs.page_limit(query), cursor=inputs.cursor(query)
        )
        return self.console.render(
            request,
            "subscriptions.html",
            title="Subscriptions",
            nav="subscriptions",
            items=page.items,
            next_cursor=page.next_cursor,
            filters={k: v or "" for k, v in filters.items()},
            statuses=[s.value for s in SubscriptionStatus],
            products=[p.name for p in self.engine.products()],
        )

    async def subscription(self, request: web.Request) -> web.Response:
        done = request.query.get("done", "")
        shown = self.flashes.take(session_of(request).id, request.query.get("flash"))
        return await self.subscription_page(
            request, request.match_info["id"], **{"notice": NOTICES.get(done), **shown}
        )

    async def subscription_page(
        self,
        request: web.Request,
        sid: str,
        *,
        status: int = 200,
        notice: str | None = None,
        problem: dict[str, Any] | None = None,
        note: dict[str, Any] | None = None,
    ) -> web.Response:
        """One subscription: its fields and blocks, relations (as links and as a graph),
        note, processes, actions and its product's workflows (each usable now or not, and
        why). ``note``: a refused note's text and errors, kept in its form."""
        sub = await self.engine.get_subscription(sid)
        typed = any(p.name == sub.product for p in self.engine.products())
        infos = self.engine.workflow_info()
        # A subscription of a product without a class has no workflows of its own: every
        # MODIFY and TERMINATE workflow is offered, as before products existed.
        untyped_workflows = (
            [] if typed else [w for w in infos if w.target in (Target.MODIFY, Target.TERMINATE)]
        )
        # The start links carry the version read here, unless the workflow's own form has a
        # field of that name (which means something else to it).
        versioned = {
            w.name for w in infos if "version" not in ((w.form or {}).get("properties") or {})
        }
        return self.console.render(
            request,
            "subscription.html",
            status=status,
            title=f"{sub.product} {sub.id[:8]}",
            nav="subscriptions",
            sub=sub,
            typed=typed,
            untyped_workflows=untyped_workflows,
            versioned=versioned,
            attributes=attribute_view(sub.attributes, sub.depends_on),
            graph=relation_graph(
                sub.id, sub.product, sub.status, sub.description, sub.depends_on, sub.in_use_by
            ),
            note=note or {"text": sub.note or "", "errors": []},
            notice=notice,
            problem=problem,
        )

    async def products(self, request: web.Request) -> web.Response:
        products = self.engine.products()
        workflows = {w.name: w for w in self.engine.workflow_info()}
        return self.console.render(
            request,
            "products.html",
            title="Products",
            nav="products",
            products=[
                {
                    "info": p,
                    "fields": product_fields(p.schema),
                    "workflows": [workflows[w] for w in p.workflows if w in workflows],
                }
                for p in products
            ],
            referred_by=referred_by(products),
        )

    async def schedules(self, request: web.Request) -> web.Response:
        scheduler = self.console.api.scheduler
        entries = await scheduler.entries() if scheduler is not None else []
        done = request.query.get("done", "")
        return self.console.render(
            request,
            "schedules.html",
            title="Schedules",
            nav="schedules",
            entries=entries,
            notice=NOTICES.get(done),
        )

    async def health(self, request: web.Request) -> web.Response:
        report, code = await self.console.api.health_report(full=True)
        return self.console.render(
            request, "health.html", status=code, title="Health", nav="health", health=report
        )

    # -- the event stream -----------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``/api/events`` as the console's session may read it (a browser's EventSource
        cannot send the bearer token): the same streams, limits and ids."""
        api = self.console.api
        return await api.streams.serve(
            request,
            identity.client_key(request),
            self.engine.stream,
            inputs.event_id(request),
            await inputs.process_filter(request, self.engine.resolve_id),
        )

    # -- logging in and out ---------------------------------------------------------------

    async def login(self, request: web.Request) -> web.StreamResponse:
        target = safe_next(request.query.get("next"))
        if not self.console.login_required(request):
            return see_other(target)
        return self.console.render(
            request, "login.html", title="Log in", next=target, label="", error=None
        )

    async def login_post(self, request: web.Request) -> web.StreamResponse:
        posted = await posted_text(request)
        target = safe_next(posted.get("next"))
        if not self.console.login_required(request):
            return see_other(target)
        error = None
        try:
            label = identity.label(posted.get("label", ""), "name")
        except BadRequest as exc:
            label, error = "", exc.detail
        # A wrong token counts against the address (429 once it has sent too many).
        typed = posted.get("token", "")
        if error is None and not self.console.api.identity.login(request, typed, request.path):
            error = "This is not the daemon's token."
        if error is not None:
            return self.console.render(
                request,
                "login.html",
                status=401,
                title="Log in",
                next=target,
                label=posted.get("label", ""),
                error=error,
            )
        session = self.console.sessions.open(tcp=True, label=label)
        response = see_other(target)
        set_cookie(request, response, session)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.console.sessions.close(session_of(request).id)
        response = see_other("/ui/login" if self.console.login_required(request) else "/ui/")
        clear_cookie(response)
        return response

    async def static_file(self, request: web.Request) -> web.Response:
        found = self.static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        return web.Response(
            body=body, content_type=content_type, headers={"Cache-Control": "no-cache"}
        )
