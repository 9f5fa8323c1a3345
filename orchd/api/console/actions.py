"""The console's actions: every ``POST`` under ``/ui`` but the login.

Each one makes the engine call its JSON route makes, with the body the route would decode
and the actor the route would record, then redirects to the page that shows the outcome,
refused or not (post/redirect/get, see ``flash``: a reload of that page posts nothing). A
refusal's page shows the problem: a 422 puts each ``{"loc", "msg"}`` next to its field and
keeps what the operator typed; a 409 (the status changed meanwhile) shows the detail above
the actions the process allows now. Only what changes nothing is answered in place: the next
or previous page of a form of several pages, and a start page (its idempotency key makes a
second post start nothing new). The CSRF token was checked before any of this runs
(``core.Console.middleware``).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from aiohttp import web

from orchd.api.console.core import Console, posted_text, posted_values, see_other, session_of
from orchd.api.console.forms import Posted, read_answer
from orchd.api.console.pages import FREE_INPUT, Pages, start_form
from orchd.api.console.paging import Shown
from orchd.api.inputs import checked_idempotency_key, decode_body
from orchd.api.shapes import NoteRequest, SkipRequest
from orchd.errors import BadRequest, FormValidationError, OrchdError, ScheduleNotFound
from orchd.model import Process, WorkflowInfo
from orchd.state import require_object, validate_form


def _done(pid: str, what: str) -> web.Response:
    return see_other(f"/ui/processes/{pid}?done={what}")


def _merge(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our "not JSON" errors first; the engine's for the other fields after them."""
    flagged = {tuple(e["loc"][:1]) for e in ours}
    return ours + [e for e in theirs if tuple(e.get("loc", [])[:1]) not in flagged]


#: How a JSON value that is not an object is named in the JSON box's error.
_KINDS = {
    list: "a list",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true or false",
}


def free_object(text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The object a start page's JSON box holds (empty: ``{}``), or the error beside it: the
    API's rule, an input is one JSON object."""
    if not text.strip():
        return {}, []
    try:
        value = decode_body(text.strip().encode(), None)
    except BadRequest as exc:
        return {}, [{"loc": [FREE_INPUT], "msg": exc.detail}]
    if not isinstance(value, dict):
        kind = "null" if value is None else _KINDS.get(type(value), type(value).__name__)
        return {}, [{"loc": [FREE_INPUT], "msg": f"the input is a JSON object {{...}}, not {kind}"}]
    return value, []


class Actions:
    """The ``POST`` handlers."""

    def __init__(self, console: Console, pages: Pages) -> None:
        self.console = console
        self.engine = console.engine
        self.pages = pages

    def _refused(
        self, request: web.Request, pid: str, exc: OrchdError, **forms: Any
    ) -> web.Response:
        return self._shown(request, pid, problem=exc.problem(), **forms)

    def _shown(self, request: web.Request, pid: str, **shown: Any) -> web.Response:
        """To the process page, which shows ``shown`` once (see ``flash``)."""
        token = self.pages.flashes.put(session_of(request).id, **shown)
        return see_other(f"/ui/processes/{pid}?flash={token}")

    async def resume(self, request: web.Request) -> web.StreamResponse:
        """A page of the form a suspended process waits for (see ``paging``): the next page,
        the one before, the page at fault; once every page is answered, the resume."""
        pid = await self.engine.resolve_id(request.match_info["id"])
        posted = await posted_values(request)
        process = await self.engine.get(pid)
        pages = self.pages.resume_pages(process)
        try:
            outcome = await pages.post(posted)
            if isinstance(outcome, Shown):
                return self._resume_page(request, process, outcome)
            try:
                await self.engine.resume(pid, outcome.answers, reporter=self.console.actor(request))
            except FormValidationError as exc:
                shown = await pages.at_fault(outcome.answers, exc)
                return self._shown(request, pid, problem=shown.problem, resume_form=shown.form)
        except OrchdError as exc:  # not suspended any more, its form cannot be built, ...
            return self._refused(request, pid, exc)
        return _done(pid, "resumed")

    def _resume_page(self, request: web.Request, process: Process, shown: Shown) -> web.Response:
        return self.pages.process_page(
            request, process, status=shown.status, problem=shown.problem, resume_form=shown.form
        )

    async def retry(self, request: web.Request) -> web.StreamResponse:
        pid = await self.engine.resolve_id(request.match_info["id"])
        posted = await posted_text(request)
        try:
            await self.engine.retry(
                pid, reporter=self.console.actor(request), reissue=posted.get("reissue") == "true"
            )
        except OrchdError as exc:
            return self._refused(request, pid, exc)
        return _done(pid, "retried")

    async def skip(self, request: web.Request) -> web.StreamResponse:
        pid = await self.engine.resolve_id(request.match_info["id"])
        posted = await posted_text(request)
        given = posted.get("reason", "")
        try:
            # The route's own check: a reason is required and must not be blank.
            reason = validate_form(SkipRequest, {"reason": given})["reason"]
            await self.engine.skip(pid, reason, reporter=self.console.actor(request))
        except FormValidationError as exc:
            skip = {"reason": given, "errors": [e["msg"] for e in exc.errors]}
            return self._refused(request, pid, exc, skip=skip)
        except OrchdError as exc:
            return self._refused(request, pid, exc, skip={"reason": given, "errors": []})
        return _done(pid, "skipped")

    async def abort(self, request: web.Request) -> web.StreamResponse:
        pid = await self.engine.resolve_id(request.match_info["id"])
        try:
            await self.engine.abort(pid, reporter=self.console.actor(request))
        except OrchdError as exc:
            return self._refused(request, pid, exc)
        return _done(pid, "aborted")

    async def callback(self, request: web.Request) -> web.StreamResponse:
        pid = await self.engine.resolve_id(request.match_info["id"])
        posted = await posted_text(request)
        text = posted.get("payload", "")
        try:
            # The body the callback route would decode from the same text (an empty or blank
            # field: no body, as the console has always read it).
            payload = decode_body(text.strip().encode(), None)
            await self.engine.answer_callback(pid, payload, reporter=self.console.actor(request))
        except BadRequest as exc:
            callback = {"payload": text, "errors": [exc.detail]}
            return self._refused(request, pid, exc, callback=callback)
        except OrchdError as exc:
            return self._refused(request, pid, exc, callback={"payload": text, "errors": []})
        return _done(pid, "answered")

    async def start(self, request: web.Request) -> web.StreamResponse:
        info = self.pages.workflow_info(request.match_info["name"])
        posted = await posted_values(request)
        given = posted.get("idempotency_key")
        # The API's rule (400, its message); an empty field is no key.
        key = checked_idempotency_key(given) if isinstance(given, str) and given else None
        if info.paged:
            return await self._start_paged(request, info, posted, key)
        schema = await self.pages.start_schema(info)
        answer, problems = read_answer(schema, posted)
        box = posted.get(FREE_INPUT, "")
        text = box if isinstance(box, str) else box[-1]
        if info.form is None:  # no form: the JSON box is the input, the fields go with it
            free, trouble = free_object(text)
            answer = {**free, **answer}
            problems += trouble
        try:
            if problems and info.form is None:  # nothing is started on a box that is not JSON
                raise FormValidationError(
                    "the input is not one JSON object: nothing was started", []
                )
            pid, _ = await self.engine.start_once(
                info.name,
                require_object(answer),
                reporter=self.console.actor(request),
                idempotency_key=key,
            )
        except FormValidationError as exc:
            errors = _merge(problems, exc.errors)
            form = start_form(info, schema, answer=answer, errors=errors, text=text)
            return self.pages.start_page(request, info, form, status=422, problem=exc.problem())
        except OrchdError as exc:
            form = start_form(info, schema, answer=answer, text=text)
            return self.pages.start_page(
                request, info, form, status=exc.status, problem=exc.problem()
            )
        return _done(pid, "started")

    async def _start_paged(
        self, request: web.Request, info: WorkflowInfo, posted: Posted, key: str | None
    ) -> web.StreamResponse:
        """A page of a form of several pages (see ``paging``); once every page is answered,
        the start with the list of answers. Every page carries the first page's key."""
        already = self.console.started(request, key)
        if already is not None:
            return _done(already, "already")
        pages = self.pages.start_pages(info)
        outcome = await pages.post(posted)
        if isinstance(outcome, Shown):
            return self._start_page(request, info, outcome, key)
        try:
            pid, _ = await self.engine.start_once(
                info.name,
                outcome.answers,
                reporter=self.console.actor(request),
                idempotency_key=key,
            )
            self.console.remember_start(request, key, pid)
        except FormValidationError as exc:  # a choice taken since its page was answered
            shown = await pages.at_fault(outcome.answers, exc)
            return self._start_page(request, info, shown, key)
        except OrchdError as exc:  # 409: stale, locked, ...; the last page stays as answered
            shown = await pages.again(outcome.answers, exc.status, exc.problem())
            return self._start_page(request, info, shown, key)
        return _done(pid, "started")

    def _start_page(
        self, request: web.Request, info: WorkflowInfo, shown: Shown, key: str | None
    ) -> web.Response:
        return self.pages.start_page(
            request,
            info,
            shown.form,
            status=shown.status,
            problem=shown.problem,
            idempotency_key=key,
        )

    async def note(self, request: web.Request) -> web.StreamResponse:
        """Set a subscription's note as ``PUT /api/subscriptions/{id}/note`` does (the same
        checks), recorded with the console's actor; then back to the subscription's page."""
        sid = request.match_info["id"]
        page = f"/ui/subscriptions/{urllib.parse.quote(sid, safe='')}"
        posted = await posted_text(request)
        # A browser sends a textarea's line breaks as CRLF; the API's clients send LF.
        given = posted.get("note", "").replace("\r\n", "\n")
        try:
            note = validate_form(NoteRequest, {"note": given})["note"]
            await self.engine.set_note(sid, note, by=self.console.actor(request))
        except FormValidationError as exc:
            token = self.pages.flashes.put(
                session_of(request).id,
                problem=exc.problem(),
                note={"text": given, "errors": [e["msg"] for e in exc.errors]},
            )
            return see_other(f"{page}?flash={token}")
        return see_other(f"{page}?done=noted")

    async def run_schedule(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        scheduler = self.console.api.scheduler
        if scheduler is None:
            raise ScheduleNotFound(f"no schedule named {name!r} (no scheduler runs)")
        pid = await scheduler.run_now(name)
        return _done(pid, "ran")
