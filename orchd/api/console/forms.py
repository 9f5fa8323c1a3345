"""HTML forms from the JSON Schemas the API publishes, and their answers back to JSON.

The schema is the one ``GET /api/workflows`` and ``GET /api/processes/{id}`` show (msgspec's,
from the workflow's ``Form``), or a page of a form of several pages (``POST .../form``). Each
top-level property becomes one field whose kind follows its type: text, integer, number, a
checkbox for booleans, a choice for enums and for ``choices(...)`` fields (``oneOf`` of
``const`` id and ``title``: a select showing the titles), a set of check boxes for a list of
them, and a JSON text area for anything nested (objects, lists, unions the browser cannot
express).

Validation is not repeated here: the answer goes to the engine exactly as the JSON API hands
it on, and the engine's 422 (``errors: [{"loc", "msg"}]``) is shown next to the fields.
Turning the browser's strings into JSON values is all this module does, and where a string
does not parse it is passed on as it is, so that the engine names the problem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchd.api.inputs import decode_body
from orchd.errors import BadRequest
from orchd.state import encode

_INTEGER = re.compile(r"[+-]?\d+")

#: The field kinds a template knows how to draw (``choices``: several of a list, check boxes).
KINDS = ("text", "integer", "number", "boolean", "choice", "choices", "json")

#: What a browser posts: a field's text, or every value of a field posted more than once.
Posted = Mapping[str, str | list[str]]


@dataclass
class Field:
    """One input of a rendered form."""

    name: str
    kind: str
    label: str
    required: bool
    description: str = ""
    #: What the input shows: the answer being corrected, else the schema's default.
    value: str = ""
    checked: bool = False
    #: For ``choice``: (value as sent, label); for the others, hints for the input.
    choices: list[tuple[str, str]] = field(default_factory=list)
    #: Numeric bounds and string lengths, for the browser's input and the reader.
    attrs: dict[str, str] = field(default_factory=dict)
    #: The schema's ``format`` (``uuid``, ``date-time``, ...), shown as a hint.
    format: str = ""
    #: Messages of the last answer's errors at this field.
    errors: list[str] = field(default_factory=list)
    #: For ``choice`` and ``choices``: the values offered, to send the right JSON type back.
    raw_choices: list[Any] = field(default_factory=list)
    #: For ``choices``: the values checked (as sent), and how many to pick, said in words.
    selected: list[str] = field(default_factory=list)
    count: str = ""


@dataclass
class RenderedForm:
    """A whole form: its fields, and errors that belong to no field."""

    title: str
    fields: list[Field]
    errors: list[str] = field(default_factory=list)
    #: A form of several pages: the page shown (from 0), the JSON of the answers before it
    #: and of the pages after it that the operator went back from (see ``paging``).
    page: int | None = None
    answers: str = "[]"
    ahead: str = "[]"

    def field_named(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any]:
    """The schema with a top-level ``$ref`` (into ``$defs``) replaced by its target."""
    resolved = dict(schema)
    seen = 0
    while isinstance(resolved.get("$ref"), str) and seen < 16:
        name = resolved.pop("$ref").rpartition("/")[2]
        target = root.get("$defs", {}).get(name, {})
        resolved = {**target, **resolved}
        seen += 1
    return resolved


def _non_null(schema: dict[str, Any], root: Mapping[str, Any]) -> dict[str, Any]:
    """``T | None`` is drawn as T: an empty input means "not given", so the default applies."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        kept = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
        if len(kept) == 1:
            inner = _resolve(kept[0], root)
            return {**{k: v for k, v in schema.items() if k != "anyOf"}, **inner}
    return schema


def _offered(schema: Mapping[str, Any]) -> list[tuple[Any, str]] | None:
    """The values a schema allows and how each is shown: an enum's values, or the ``const``
    and ``title`` of each ``oneOf`` option (a ``choices(...)`` field). None: not a choice."""
    if isinstance(schema.get("enum"), list) and (schema["enum"] or "x-orchd-choices" in schema):
        return [(v, _shown(v, "text")) for v in schema["enum"]]
    options = schema.get("oneOf")
    if (
        isinstance(options, list)
        and options
        and all(isinstance(o, dict) and "const" in o for o in options)
    ):
        return [(o["const"], str(o.get("title") or _shown(o["const"], "text"))) for o in options]
    return None


def _items(schema: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schema of a list's items when they are choices (the list is drawn as check boxes)."""
    items = schema.get("items")
    if schema.get("type") != "array" or not isinstance(items, dict):
        return None
    resolved = _resolve(items, root)
    return resolved if _offered(resolved) is not None else None


def _count(schema: Mapping[str, Any]) -> str:
    low, high = schema.get("minItems"), schema.get("maxItems")
    if low is not None and low == high:
        return f"Pick {low}."
    if low and high is not None:
        return f"Pick {low} to {high}."
    if low:
        return f"Pick at least {low}."
    if high is not None:
        return f"Pick at most {high}."
    return ""


def _kind(schema: Mapping[str, Any]) -> str:
    if _offered(schema) is not None:
        return "choice"
    kind = schema.get("type")
    if kind == "string":
        return "text"
    if kind in ("integer", "number", "boolean"):
        return str(kind)
    return "json"


def _shown(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind == "json":
        return encode(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_BOUNDS = {
    "minimum": "min",
    "maximum": "max",
    "minLength": "minlength",
    "maxLength": "maxlength",
}


def build_form(
    schema: Mapping[str, Any] | None,
    answer: Mapping[str, Any] | None = None,
    errors: list[dict[str, Any]] | None = None,
    prefill: Mapping[str, str] | None = None,
) -> RenderedForm:
    """The fields of ``schema``, filled with ``answer`` (a refused answer being corrected) or
    ``prefill`` (query parameters of a link) or the defaults, with ``errors`` placed."""
    schema = schema or {}
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    fields: list[Field] = []
    for name, raw in properties.items():
        prop = _non_null(_resolve(raw, schema), schema)
        items = _items(prop, schema)
        kind = "choices" if items is not None else _kind(prop)
        offered = _offered(items if items is not None else prop) or []
        # A choices field with nothing to offer says why in its description.
        empty = "" if offered or items is None else str(items.get("description") or "")
        item = Field(
            name=name,
            kind=kind,
            label=str(prop.get("title") or name.replace("_", " ")),
            required=name in required,
            description=str(prop.get("description") or empty),
        )
        for key, attr in _BOUNDS.items():
            if key in prop and kind in ("text", "integer", "number"):
                item.attrs[attr] = str(prop[key])
        item.format = str(prop.get("format") or "")
        if kind in ("choice", "choices"):
            item.raw_choices = [value for value, _ in offered]
            item.choices = [(_shown(value, "text"), label) for value, label in offered]
        if answer is not None and name in answer:
            current: Any = answer[name]
        elif prefill is not None and name in prefill:
            current = prefill[name]
        else:
            current = prop.get("default")
        if kind == "choices":
            item.count = _count(prop)
            picked = current if isinstance(current, list) else [current]
            item.selected = [_shown(v, "text") for v in picked if v is not None]
        elif kind == "boolean":
            item.checked = current is True or current in ("true", "on", "1")
        elif isinstance(current, str) and kind in ("json",) and answer is not None:
            item.value = current  # the text that did not parse, as typed
        else:
            item.value = _shown(current, kind if not isinstance(current, str) else "text")
        fields.append(item)
    form = RenderedForm(title=str(schema.get("title") or ""), fields=fields)
    place_errors(form, errors or [])
    return form


def place_errors(form: RenderedForm, errors: list[dict[str, Any]]) -> None:
    """Put each ``{"loc", "msg"}`` next to the field its location starts with; the rest (a
    whole-form problem) at the top."""
    for error in errors:
        loc = list(error.get("loc") or [])
        message = str(error.get("msg") or "invalid")
        target = form.field_named(str(loc[0])) if loc else None
        if target is None:
            form.errors.append(message if not loc else f"{'.'.join(map(str, loc))}: {message}")
            continue
        inner = ".".join(str(part) for part in loc[1:])
        if target.kind == "choices" and loc[1:2] and isinstance(loc[1], int):
            inner = f"choice {loc[1] + 1}"  # the n-th one picked
        target.errors.append(f"{inner}: {message}" if inner else message)


def read_answer(
    schema: Mapping[str, Any] | None, posted: Posted
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The JSON answer a form post stands for, and the fields whose text is not JSON.

    Empty inputs are left out, so the form's default applies (or the engine says the field
    is required). Numbers that do not parse go on as text: the engine's message says what
    was expected. Unchecked boxes are ``false``; a set of choices with none checked is ``[]``.
    """
    form = build_form(schema)
    answer: dict[str, Any] = {}
    problems: list[dict[str, Any]] = []
    for item in form.fields:
        given = posted.get(item.name)
        if item.kind == "choices":
            values = given if isinstance(given, list) else [] if given is None else [given]
            answer[item.name] = [_picked(item, v) for v in values if v != ""]
            continue
        text = given[-1] if isinstance(given, list) and given else given
        if isinstance(text, list):  # posted with no value at all
            text = None
        if item.kind == "boolean":
            answer[item.name] = text is not None and text not in ("", "false", "off")
            continue
        if text is None or text == "":
            continue
        if item.kind == "integer" and _INTEGER.fullmatch(text.strip()):
            answer[item.name] = _integer(text)
        elif item.kind == "number":
            answer[item.name] = _number(text)
        elif item.kind == "choice":
            answer[item.name] = _picked(item, text)
        elif item.kind == "json":
            try:
                answer[item.name] = decode_body(text.strip().encode(), None)
            except BadRequest as exc:
                answer[item.name] = text
                problems.append({"loc": [item.name], "msg": exc.detail})
        else:
            answer[item.name] = text
    return answer, problems


def _picked(item: Field, text: str) -> Any:
    """The offered value a choice's text stands for (the text itself when none: the engine
    then says it is not one of them)."""
    return next((v for v in item.raw_choices if _shown(v, "text") == text), text)


def _integer(text: str) -> Any:
    """The integer typed, or the text when Python will not convert it (more than 4,300
    digits): the engine's message then says what was expected."""
    try:
        return int(text.strip())
    except ValueError:
        return text


def _number(text: str) -> Any:
    stripped = text.strip()
    if _INTEGER.fullmatch(stripped):
        return _integer(stripped)
    try:
        value = float(stripped)
    except ValueError:
        return text
    return value if value == value and abs(value) != float("inf") else text
