"""Replaying a form of several pages: the answers given so far go through the form's
generator again, page by page, so the server keeps no page state (a restart between pages
changes nothing, and any node of a cluster answers any page).

Each answer is validated against the page the generator yields at that point, with the
choices read now; a field error is located by page and field (``["pages", 1, "vlan"]``). A
one-page ``Form`` is the same thing with one page, so a start and a resume take either its
object (as before) or a list of one answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
from typing import Any

import msgspec

from orchd.dsl import Form, Step, StepKind, Stranded, Workflow
from orchd.errors import FormValidationError, InvalidTransition
from orchd.model import HOLDS_SUBSCRIPTION
from orchd.pages import (
    Choice,
    Choices,
    Pages,
    choice_fields,
    is_pages,
    page_schema,
    refused_choices,
)
from orchd.state import every_error, inject, refuse_nul, to_json_values
from orchd.store.base import ProcessRow

#: Reads the subscriptions a choices field offers now.
ChoiceSource = Callable[[Choices], Awaitable[list[Choice]]]


class FormPage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The next page of a form (``page`` counts from 0, as the answers' list does) and its
    JSON Schema, or ``done`` when every page is answered."""

    page: int | None = None
    form: dict[str, Any] | None = None
    done: bool = False


def one_page(form: type[msgspec.Struct]) -> Pages:
    """A one-page form as a form of pages."""

    def pages() -> Generator[Any, Any, Any]:
        answer = yield form
        return to_json_values(form.__name__, answer)

    return pages


async def replay(
    pages: Callable[[], Generator[Any, Any, Any]],
    answers: list[Any],
    source: ChoiceSource,
    apart: frozenset[str] = frozenset(),
) -> tuple[FormPage, dict[str, Any] | None]:
    """Run ``answers`` through the form: the next page (and None), or done and the input.

    ``apart``: keys the engine takes itself (a MODIFY's ``subscription_id``, ``version``): in
    the first answer, those its page has no field for are taken out and added to the input."""
    generator = pages()
    page = _step(generator, None, 0, first=True)
    kept: dict[str, Any] = {}
    if apart and answers and isinstance(answers[0], dict) and page.form_class is not None:
        own = {f.encode_name for f in msgspec.structs.fields(page.form_class)}
        first = dict(answers[0])
        kept = {k: first.pop(k) for k in apart & first.keys() if k not in own}
        answers = [first, *answers[1:]]
    for index, answer in enumerate(answers):
        if page.done:
            raise FormValidationError(
                f"the form has {index} page(s); answer {index} has no page",
                [{"loc": ["pages", index], "msg": "no such page"}],
            )
        assert page.form_class is not None
        offered = await _offered(page.form_class, source)
        value = _validated(page.form_class, answer, index, offered)
        page = _step(generator, value, index + 1)
    if not page.done:
        assert page.form_class is not None
        offered = await _offered(page.form_class, source)
        return FormPage(page=len(answers), form=page_schema(page.form_class, offered)), None
    return FormPage(done=True), {**(page.result or {}), **kept}


def incomplete(next_page: FormPage) -> FormValidationError:
    """The refusal of a start or resume whose answers stop before the last page."""
    return FormValidationError(
        f"page {next_page.page} of the form is not answered",
        [{"loc": ["pages", next_page.page], "msg": "page not answered"}],
    )


class _Page:
    __slots__ = ("done", "form_class", "result")

    def __init__(self, form_class: type[Any] | None, result: dict[str, Any] | None = None) -> None:
        self.form_class = form_class
        self.result = result
        self.done = form_class is None


def _step(
    generator: Generator[Any, Any, Any], value: Any, index: int, first: bool = False
) -> _Page:
    """Move the generator on to the page at ``index`` (or its end)."""
    try:
        yielded = next(generator) if first else generator.send(value)
    except StopIteration as stop:
        result = stop.value if stop.value is not None else {}
        if not isinstance(result, dict):
            raise _broken(index, f"the form returned {type(result).__name__}, not a dict") from None
        return _Page(None, to_json_values("form", result))
    except FormValidationError as exc:  # the form code refused an answer itself
        raise FormValidationError(
            exc.detail, [{"loc": ["pages", index - 1], "msg": exc.detail}]
        ) from None
    except Exception as exc:  # the form's own code failed: say so, with the page
        raise _broken(index, f"{type(exc).__name__}: {exc}") from None
    if not (isinstance(yielded, type) and issubclass(yielded, msgspec.Struct)):
        raise _broken(index, f"the form yielded {yielded!r}, not a Form class")
    return _Page(yielded)


def _broken(index: int, why: str) -> FormValidationError:
    return FormValidationError(
        f"the form cannot build page {index}: {why}",
        [{"loc": ["pages", index], "msg": why}],
    )


async def _offered(form: type, source: ChoiceSource) -> dict[str, list[Choice]]:
    return {key: await source(marker) for _, key, marker, _ in choice_fields(form)}


def _validated(form: type[Any], answer: Any, index: int, offered: dict[str, list[Choice]]) -> Any:
    where = ["pages", index]
    if not isinstance(answer, dict):
        kind = "null" if answer is None else type(answer).__name__
        raise FormValidationError(
            f"page {index}: an answer is a JSON object",
            [{"loc": where, "msg": f"expected an object, got {kind}"}],
        )
    try:
        value = msgspec.convert(answer, form, strict=False)
    except msgspec.ValidationError as exc:
        errors = every_error(form, answer, exc)
        raise FormValidationError(
            f"page {index} does not fit {form.__name__}: {exc}",
            [{**e, "loc": [*where, *e["loc"]]} for e in errors],
        ) from None
    try:
        refuse_nul(f"page {index}", answer)
    except FormValidationError as exc:
        raise FormValidationError(
            str(exc), [{**e, "loc": [*where, *e["loc"]]} for e in exc.errors]
        ) from None
    refused = refused_choices(form, value, offered)
    if refused:
        raise FormValidationError(
            f"page {index}: {refused[0]['msg']}",
            [{**e, "loc": [*where, *e["loc"]]} for e in refused],
        )
    return value


#: Keys of a start's input the engine takes itself, for workflows that hold a subscription.
APART = frozenset({"subscription_id", "version"})


def pages_of(wf: Workflow) -> Pages | None:
    """The workflow's form as pages: its generator, or its one-page form (None: no form)."""
    if wf.pages is not None:
        return wf.pages
    return one_page(wf.form) if wf.form is not None else None


def answers_of(given: Any) -> list[Any]:
    """A start's or a resume's body as the list of page answers: an object is one answer."""
    if isinstance(given, list):
        return given
    if given is None or isinstance(given, dict):
        return [given or {}]
    raise FormValidationError(
        "the input is an object (a one-page form) or a list of page answers",
        [{"loc": [], "msg": f"expected an object or a list, got {type(given).__name__}"}],
    )


@contextlib.contextmanager
def located(given: Any) -> Iterator[None]:
    """Errors of an answer given as one object (not a list) are located as before pages
    existed: ``["vlan"]``, not ``["pages", 0, "vlan"]``."""
    try:
        yield
    except FormValidationError as exc:
        if isinstance(given, list):
            raise
        for error in exc.errors:
            if error.get("loc", [])[:2] == ["pages", 0]:
                error["loc"] = error["loc"][2:]
        raise


async def start_input(wf: Workflow, given: Any, source: ChoiceSource) -> tuple[Any, bool]:
    """The input a start of ``wf`` goes on with, and whether it went through the form's pages
    (a form of several pages always does; a one-page form when given a list, or when it has
    choices to check)."""
    if wf.pages is None and not isinstance(given, list):
        if wf.form is None or not choice_fields(wf.form):
            return given, False
        with located(given):
            page, result = await replay(one_page(wf.form), [given], source, _apart(wf))
        return result, False
    pages = pages_of(wf)
    if pages is None:  # no form: a list holds at most the one object
        if given == []:
            return {}, False
        if len(given) == 1 and isinstance(given[0], dict):
            return given[0], False
        raise FormValidationError(
            f"workflow {wf.name!r} has no form: its input is one object",
            [{"loc": ["pages", 1 if given else 0], "msg": "no such page"}],
        )
    with located(given):
        page, result = await replay(pages, answers_of(given), source, _apart(wf))
    if not page.done:
        raise incomplete(page)
    return result, True


def _apart(wf: Workflow) -> frozenset[str]:
    return APART if wf.target in HOLDS_SUBSCRIPTION else frozenset()


async def form_page(wf: Workflow, answers: Any, source: ChoiceSource) -> FormPage:
    """The next page of a workflow's initial form after ``answers``, or done."""
    pages = pages_of(wf)
    answers = _answer_list(answers)
    if pages is None:
        if answers:
            raise FormValidationError(
                f"workflow {wf.name!r} has no form",
                [{"loc": ["pages", 0], "msg": "no such page"}],
            )
        return FormPage(done=True)
    page, _ = await replay(pages, answers, source, _apart(wf))
    return page


async def inputstep_pages(
    step: Step, state: Mapping[str, Any], resources: Mapping[Any, Any]
) -> Callable[[], Generator[Any, Any, Any]]:
    """The form an inputstep asks, as pages: its generator (called with the step's arguments
    from State), or the one Form class its function returns."""
    func = step.func
    assert func is not None
    try:
        kwargs = inject(step.name, step.params, state, resources)
        if is_pages(func):
            return lambda: func(**kwargs)
        # An inputstep only picks a Form class: a plain function runs inline, not in a thread.
        form = await func(**kwargs) if step.is_async else func(**kwargs)
    except Exception as exc:  # its arguments are missing, or its own code failed
        raise _broken(0, f"inputstep {step.name!r}: {type(exc).__name__}: {exc}") from None
    if not (isinstance(form, type) and issubclass(form, Form)):
        raise _broken(0, f"inputstep {step.name!r} must return a Form class, not {form!r}")
    return one_page(form)


async def process_form_page(
    row: ProcessRow,
    wf: Workflow | None,
    answers: Any,
    source: ChoiceSource,
    resources: Mapping[Any, Any],
) -> FormPage:
    """The next page of the form a suspended process waits for, after ``answers``."""
    answers = _answer_list(answers)
    if row.status != "suspended":
        raise InvalidTransition(f"process {row.id} is {row.status}, not suspended: no form")
    if wf is None:
        raise InvalidTransition(f"process {row.id}: its workflow {row.workflow!r} is not loaded")
    try:
        index = wf.locate(row.step_key, row.step_occurrence, row.pc, row.current_step)
    except Stranded as exc:
        raise InvalidTransition(f"process {row.id}: {exc}") from None
    step = wf.steps[index]
    if step.kind is not StepKind.INPUT:
        raise InvalidTransition(f"process {row.id} does not stand at an inputstep")
    pages = await inputstep_pages(step, row.state, resources)
    page, _ = await replay(pages, answers, source)
    return page


def _answer_list(answers: Any) -> list[Any]:
    if not isinstance(answers, list):
        raise FormValidationError(
            "the body is the JSON list of the answers given so far ([] for the first page)",
            [{"loc": [], "msg": f"expected a list, got {type(answers).__name__}"}],
        )
    return answers
