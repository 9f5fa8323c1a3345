"""Forms of several pages: choices read from live subscriptions, and what a page looks like and
accepts once its choices are known.

A form of several pages is a generator function that yields ``Form`` classes, one page at a
time, and returns the input (a dict) when no page is left; each ``yield`` returns the
validated answer of its page (a ``Form`` instance), so a later page can depend on an earlier
one. A field typed ``choices("port", status="active", unused=True)`` (or a list of them) takes
the id of one of the matching subscriptions: the engine reads them when it builds the page
(its JSON Schema lists them, ``oneOf`` of ``const`` id and ``title`` description) and again
when it checks an answer, so a port taken meanwhile is refused, named.

This module is the vocabulary (the marker, the schema, the check); the engine replays the
generator and reads the subscriptions (``orchd.engine.formpages``).
"""

from __future__ import annotations

import copy
import functools
import inspect
import typing
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from orchd.errors import WorkflowDefinitionError
from orchd.products import Product
from orchd.state import form_schema

#: A form of several pages: called with no arguments (an initial form) or with the step's
#: arguments (an inputstep), it yields Form classes and returns the input.
Pages = Callable[..., Generator[Any, Any, Any]]


@dataclass(frozen=True)
class Choices:
    """The marker ``choices(...)`` puts on a field: which subscriptions it offers."""

    product: str
    statuses: tuple[str, ...] | None
    unused: bool

    def describe(self) -> str:
        what = f"{' or '.join(self.statuses)} " if self.statuses else ""
        tail = " not in use" if self.unused else ""
        return f"{what}{self.product} subscriptions{tail}"


def choices(
    product: str | type[Product],
    *,
    status: str | Iterable[str] | None = None,
    unused: bool = False,
) -> Any:
    """A type for a ``Form`` field that takes the id of a subscription of ``product`` (in
    ``status``, and with ``unused`` one that no live subscription depends on)."""
    if isinstance(product, type) and issubclass(product, Product):
        product = product.product_name
    if not isinstance(product, str) or not product:
        raise WorkflowDefinitionError("choices() takes a product (its name or its class)")
    statuses = None if status is None else ((status,) if isinstance(status, str) else tuple(status))
    return Annotated[str, Choices(product, statuses, bool(unused))]


@dataclass(frozen=True)
class Choice:
    id: str
    title: str


def is_pages(value: Any) -> bool:
    """Whether an initial form or an inputstep's function is a form of several pages."""
    return inspect.isgeneratorfunction(value)


@functools.lru_cache(maxsize=1024)
def choice_fields(form: type) -> tuple[tuple[str, str, Choices, bool], ...]:
    """The fields of a page that offer choices: (name, JSON name, marker, a list of them)."""
    try:
        hints = typing.get_type_hints(form, include_extras=True)
    except (NameError, TypeError):
        return ()
    found = []
    encoded = {f.name: f.encode_name for f in msgspec.structs.fields(form)}
    for name, hint in hints.items():
        many = False
        tp = hint
        if typing.get_origin(tp) is Annotated and not any(
            isinstance(m, Choices) for m in tp.__metadata__
        ):
            tp = tp.__origin__  # constraints on the list itself (its length, ...)
        args = typing.get_args(tp)
        if typing.get_origin(tp) in (list, tuple, set, frozenset) and args:
            many, tp = True, args[0]
        if typing.get_origin(tp) is Annotated:
            marker = next((m for m in tp.__metadata__ if isinstance(m, Choices)), None)
            if marker is not None and name in encoded:
                found.append((name, encoded[name], marker, many))
    return tuple(found)


def page_schema(form: type, offered: dict[str, list[Choice]]) -> dict[str, Any]:
    """The page's JSON Schema with each choices field listing what it offers."""
    schema = form_schema(form)
    fields = choice_fields(form)
    if not fields:
        return schema
    schema = copy.deepcopy(schema)
    for _, key, marker, many in fields:
        listed = [{"const": c.id, "title": c.title} for c in offered.get(key, [])]
        one: dict[str, Any] = (
            {"type": "string", "oneOf": listed}
            if listed
            else {"type": "string", "enum": [], "description": f"no {marker.describe()}"}
        )
        one["x-orchd-choices"] = marker.product
        prop = schema.setdefault("properties", {}).setdefault(key, {})
        if many:
            prop["items"] = one
        else:
            kept = {k: v for k, v in prop.items() if k in ("title", "description", "default")}
            prop.clear()
            prop.update(kept, **one)
    return schema


def refused_choices(
    form: type, answer: Any, offered: dict[str, list[Choice]]
) -> list[dict[str, Any]]:
    """The field errors of an answer whose choices are not among those offered now."""
    errors: list[dict[str, Any]] = []
    for name, key, marker, many in choice_fields(form):
        allowed = {c.id for c in offered.get(key, [])}
        value = getattr(answer, name, None)
        values = (
            list(enumerate(value)) if many and isinstance(value, list | tuple) else [(None, value)]
        )
        for index, item in values:
            if item is None or item in allowed:
                continue
            loc: list[str | int] = [key] if index is None else [key, index]
            errors.append({"loc": loc, "msg": f"{item!r} is not one of the {marker.describe()}"})
    return errors
