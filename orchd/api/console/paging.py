"""Forms of several pages in the console: one page at a time, with a way back.

The server keeps no page state, as the API does not (README "Forms of several pages"). Each
page carries in hidden fields, posted with the session's CSRF token like every form, the JSON
of the answers given so far (``orchd-answers``) and of the pages after it that the operator
went back from (``orchd-ahead``: "Next" shows them filled in again). Nothing in them is
trusted: every post sends them through the engine's replay of the form
(``Engine.form_page`` / ``Engine.process_form_page``), which checks each page again with the
choices read now.

- "Next" (``orchd-go=next``, also what a form posted without the button means) sends the
  answers and this page's fields; the engine answers the next page, or done, and then the
  caller starts or resumes with the whole list.
- "Back" (``orchd-go=back``) drops the last answer and shows the page before with that
  answer filled in; what this page held goes ahead.
- A 422 is located by page and field (``["pages", n, field, ...]``): the page shown is the
  one at fault, with its answer and the errors next to their fields; for an earlier page (a
  port taken since it was picked) the answers after it go ahead, so nothing typed is lost.

A one-page form goes through the same steps (a suspended process's inputstep, which may have
one page or several); it is shown without page controls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orchd.api.console.forms import Posted, RenderedForm, build_form, read_answer
from orchd.api.inputs import decode_body
from orchd.engine.formpages import FormPage
from orchd.errors import BadRequest, FormValidationError
from orchd.state import encode

#: The hidden fields and the button a page of a form of several pages posts (names no form
#: field can have: a Form's fields are Python names).
ANSWERS = "orchd-answers"
AHEAD = "orchd-ahead"
GO = "orchd-go"

#: The next page of a form after a list of answers (the engine's replay).
Ask = Callable[[list[Any]], Awaitable[FormPage]]
#: What a page's schema becomes on the page (a start's page 0 also asks the subscription).
Adjust = Callable[[int, dict[str, Any] | None], dict[str, Any] | None]


def _as_is(index: int, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    return schema


@dataclass
class Shown:
    """A page to show: its form (fields, errors, where it is in the form), the status of the
    answer, and the problem for the page's banner."""

    form: RenderedForm
    status: int = 200
    problem: dict[str, Any] | None = None


@dataclass
class Done:
    """Every page is answered: start (or resume) with ``answers``."""

    answers: list[Any]


def carried(posted: Posted, name: str) -> list[Any]:
    """The list of answers a page carries in its hidden field ``name`` (none: ``[]``)."""
    given = posted.get(name)
    text = given[-1] if isinstance(given, list) and given else given
    if not isinstance(text, str) or not text.strip():
        return []
    try:
        value = decode_body(text.strip().encode(), None)
    except BadRequest:
        value = None
    if not isinstance(value, list) or not all(isinstance(a, dict) for a in value):
        raise BadRequest(
            f"{name}: the answers this page carried are not a JSON list of objects; "
            "reload the form and start it again"
        )
    return value


def page_of(error: Mapping[str, Any]) -> int | None:
    """The page an error of the engine's is located on (``["pages", n, ...]``)."""
    loc = list(error.get("loc") or [])
    if len(loc) >= 2 and loc[0] == "pages" and isinstance(loc[1], int):
        return int(loc[1])
    return None


def _typed(posted: Posted) -> dict[str, Any]:
    """A page's fields as posted (text, or a list of the values of check boxes)."""
    return {
        k: v for k, v in posted.items() if not k.startswith("orchd-") and k != "idempotency_key"
    }


class PagedForm:
    """One form walked page by page: ``ask`` replays answers through it, ``adjust`` adds
    fields the caller asks on a page (a start's subscription on page 0), ``paged`` says
    whether the pages are shown as such (a one-page form is not)."""

    def __init__(self, ask: Ask, *, paged: bool = True, adjust: Adjust = _as_is) -> None:
        self.ask = ask
        self.paged = paged
        self.adjust = adjust

    async def first(self, prefill: Mapping[str, str] | None = None) -> RenderedForm:
        """Page 0, empty but for the schema's defaults and ``prefill``."""
        page = await self.ask([])
        form = build_form(self.adjust(0, page.form), prefill=prefill)
        return self._placed(form, 0, [], [])

    async def post(self, posted: Posted) -> Shown | Done:
        """What a post of a page leads to: the next page, the one before, a page at fault,
        or done."""
        answers = carried(posted, ANSWERS)
        ahead = carried(posted, AHEAD)
        index = len(answers)
        try:
            page = await self.ask(answers)
        except FormValidationError as exc:  # an earlier page is refused now
            # This page cannot be read without its schema: what was typed goes ahead as is.
            return await self.at_fault(answers, exc, [_typed(posted), *ahead], current=index)
        if page.done:  # nothing left to ask (the form changed under the page)
            return Done(answers)
        answer, problems = read_answer(self.adjust(index, page.form), posted)
        go = posted.get(GO)
        if go == "back" and index > 0:
            return await self._back(answers, answer, ahead, index)
        given = [*answers, answer]
        ours = [{**p, "loc": ["pages", index, *p["loc"]]} for p in problems]
        try:
            following = await self.ask(given)
        except FormValidationError as exc:
            flagged = {tuple(p["loc"][:3]) for p in ours}
            theirs = [e for e in exc.errors if tuple(e.get("loc", [])[:3]) not in flagged]
            return await self.at_fault(given, FormValidationError(exc.detail, ours + theirs), ahead)
        if ours:  # a JSON field that does not parse: the engine saw it as text
            return await self.at_fault(given, FormValidationError("not JSON", ours), ahead)
        if following.done:
            return Done(given)
        prefilled = ahead[0] if ahead else None
        form = build_form(self.adjust(index + 1, following.form), answer=prefilled)
        return Shown(self._placed(form, index + 1, given, ahead[1:]))

    async def _back(self, answers: list[Any], answer: Any, ahead: list[Any], index: int) -> Shown:
        before = answers[:-1]
        try:
            page = await self.ask(before)
        except FormValidationError as exc:
            return await self.at_fault(before, exc, [answers[-1], answer, *ahead], current=index)
        form = build_form(self.adjust(len(before), page.form), answer=answers[-1])
        return Shown(self._placed(form, len(before), before, [answer, *ahead]))

    async def at_fault(
        self,
        given: list[Any],
        exc: FormValidationError,
        ahead: list[Any] | None = None,
        *,
        current: int | None = None,
    ) -> Shown:
        """The page a 422 of ``given`` (answers, page 0 first) belongs to, with its answer and
        the errors next to their fields. An error on the page after the last answer (it could
        not be built) is shown on the last one. ``current``: the page that was posted (the
        last of ``given``)."""
        if not given:
            raise exc  # page 0 itself cannot be built: nothing to show but the problem
        current = len(given) - 1 if current is None else current
        pages = [p for p in map(page_of, exc.errors) if p is not None]
        index = min([*pages, len(given) - 1]) if pages else len(given) - 1
        before, answer = given[:index], given[index]
        later = [*given[index + 1 :], *(ahead or [])]
        try:
            page = await self.ask(before)
        except FormValidationError as earlier:  # an earlier page failed meanwhile
            return await self.at_fault(before, earlier, [answer, *later], current=current)
        if page.done:
            raise exc
        errors = []
        for error in exc.errors:
            at = page_of(error)
            loc = list(error.get("loc") or [])
            if at == index:
                errors.append({**error, "loc": loc[2:]})
            elif at is None or at > index:  # of the whole form, or a page that follows
                where = "" if at is None else f"page {at + 1}: "
                errors.append({"loc": [], "msg": where + str(error.get("msg") or "invalid")})
        form = build_form(self.adjust(index, page.form), answer=answer, errors=errors)
        return Shown(
            self._placed(form, index, before, later),
            status=exc.status,
            problem=FormValidationError(self._detail(form, index, current), []).problem(),
        )

    async def again(self, given: list[Any], status: int, problem: dict[str, Any]) -> Shown:
        """The last page of ``given`` again, with a refusal that concerns no field (a start
        refused with 409: the subscription changed, or is locked)."""
        before, answer = given[:-1], given[-1]
        page = await self.ask(before)
        form = build_form(self.adjust(len(before), page.form), answer=answer)
        return Shown(self._placed(form, len(before), before, []), status=status, problem=problem)

    def _placed(
        self, form: RenderedForm, index: int, answers: list[Any], ahead: list[Any]
    ) -> RenderedForm:
        if self.paged:
            form.page = index
            form.answers = encode(answers).decode()
            form.ahead = encode(ahead).decode()
        return form

    def _detail(self, form: RenderedForm, index: int, current: int) -> str:
        marked = sum(1 for f in form.fields if f.errors) + len(form.errors)
        what = f"{marked} field{'s' if marked != 1 else ''} to correct, marked below"
        if not self.paged:
            return f"{what}."
        if index < current:
            return (
                f"An answer on page {index + 1} is not accepted any more: {what}. "
                "The pages after it keep their answers."
            )
        return f"Page {index + 1}: {what}."
