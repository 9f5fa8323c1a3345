"""Moving values between State (JSON) and step functions (typed Python).

Arguments are looked up by parameter name and converted to the annotation with
``msgspec.convert``; results go back through ``msgspec.to_builtins`` so a checkpoint only ever
holds JSON values. Converters are prepared once per step, when the step is defined.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from orchd.errors import FormValidationError, WorkflowDefinitionError
from orchd.products import Product, ProductError, as_state, missing_at, to_model

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode
_MISSING: Any = object()


class StepInputError(Exception):
    """Raised when State cannot supply a step's arguments (missing key, wrong type)."""


class StepOutputError(Exception):
    """Raised when a step returns something that cannot go into State."""


@dataclass(frozen=True)
class Param:
    name: str
    annotation: Any  # _MISSING when there is none, or when no conversion is needed
    default: Any  # _MISSING when the parameter is required


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def signature_params(func: Callable[..., Any], step_name: str) -> tuple[Param, ...]:
    """Read a step function's parameters once, when the step is defined."""
    try:
        sig = inspect.signature(func)
        hints = typing.get_type_hints(func)
    except (NameError, TypeError) as exc:
        raise WorkflowDefinitionError(
            f"step {step_name!r}: cannot read its signature: {exc}"
        ) from None
    params = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise WorkflowDefinitionError(
                f"step {step_name!r}: *args/**kwargs cannot be filled from State; name each key"
            )
        annotation = hints.get(p.name, _MISSING)
        if annotation is Any or p.name == "state":
            annotation = _MISSING
        default = _MISSING if p.default is p.empty else p.default
        params.append(Param(p.name, annotation, default))
    return tuple(params)


def clone(value: Any) -> Any:
    """A deep copy of a JSON value, so a step can never change State behind the engine's back."""
    if isinstance(value, dict | list):
        return _json_decode(_json_encode(value))
    return value


def inject(
    step_name: str,
    params: tuple[Param, ...],
    state: Mapping[str, Any],
    resources: Mapping[Any, Any] | None = None,
) -> dict[str, Any]:
    """Build a step's keyword arguments from State (and the engine's shared resources).

    A parameter annotated with a resource type (such as ``HttpClient``) receives the engine's
    instance of it instead of a State value.
    """
    kwargs: dict[str, Any] = {}
    for p in params:
        if p.name == "state":
            kwargs["state"] = clone(dict(state))
            continue
        if resources and p.annotation is not _MISSING and _is_resource(p.annotation, resources):
            kwargs[p.name] = resources[p.annotation]
            continue
        value = state.get(p.name, _MISSING)
        if value is _MISSING:
            if p.default is _MISSING:
                raise StepInputError(
                    f"step {step_name!r} needs state key {p.name!r}"
                    + (f" ({_type_name(p.annotation)})" if p.annotation is not _MISSING else "")
                    + ", which is missing"
                )
            continue
        if p.annotation is _MISSING:
            kwargs[p.name] = clone(value)
            continue
        if isinstance(p.annotation, type) and issubclass(p.annotation, Product):
            kwargs[p.name] = _model(step_name, p.name, p.annotation, value)
            continue
        try:
            kwargs[p.name] = msgspec.convert(value, p.annotation, strict=False)
        except (msgspec.ValidationError, TypeError) as exc:
            raise StepInputError(
                f"step {step_name!r}: state key {p.name!r} is not a valid "
                f"{_type_name(p.annotation)}: {exc}"
            ) from None
        if kwargs[p.name] is value:
            kwargs[p.name] = clone(value)
    return kwargs


def _model(step_name: str, key: str, cls: type[Product], value: Any) -> Product:
    """A subscription in State as its product's model, checked against its product and the
    fields its status requires."""
    where = f"state key {key!r}"
    try:
        model = to_model(cls, value, where=where)
    except ProductError as exc:
        raise StepInputError(f"step {step_name!r}: {exc}") from None
    missing = missing_at(model)
    if missing:
        raise StepInputError(
            f"step {step_name!r}: {where} {', '.join(missing)}: required when the "
            f"subscription is {model.status!r}"
        )
    return model


def _is_resource(annotation: Any, resources: Mapping[Any, Any]) -> bool:
    try:
        return annotation in resources
    except TypeError:  # an unhashable annotation is never a resource
        return False


def to_json_values(step_name: str, result: Any) -> dict[str, Any]:
    """Turn a step's return value into a JSON-compatible dict to merge into State."""
    if result is None:
        return {}
    if isinstance(result, msgspec.Struct):
        result = msgspec.structs.asdict(result)
    if not isinstance(result, dict):
        raise StepOutputError(
            f"step {step_name!r} returned {type(result).__name__}; a step returns a dict or None"
        )
    if any(isinstance(v, Product) for v in result.values()):
        # A typed subscription goes into State in the shape every subscription has.
        result = {k: as_state(v) if isinstance(v, Product) else v for k, v in result.items()}
    try:
        # What to_builtins gives always encodes.
        converted = msgspec.to_builtins(result, str_keys=True)
    except (TypeError, msgspec.EncodeError, ValueError, RecursionError) as exc:
        raise StepOutputError(
            f"step {step_name!r} returned a value State cannot hold: {exc}"
        ) from None
    if not isinstance(converted, dict):  # pragma: no cover - to_builtins keeps dicts as dicts
        raise StepOutputError(f"step {step_name!r} returned a non-dict")
    if (loc := _found_nul(converted)) is not None:
        raise StepOutputError(
            f"step {step_name!r} returned {_shown(loc)}, which holds the character U+0000: "
            "State cannot hold it (PostgreSQL's jsonb refuses it, so no backend takes it)"
        )
    return converted


#: How JSON writes the character U+0000.
NUL_ESCAPE = b"\\u0000"


def nul_loc(value: Any) -> list[str | int] | None:
    """Where ``value`` (JSON values) holds the character U+0000, in a string or a key: the keys
    and indexes down to it, as a problem's ``loc`` (None: nowhere)."""
    stack: list[tuple[list[str | int], Any]] = [([], value)]
    while stack:
        loc, item = stack.pop()
        if isinstance(item, str) and "\x00" in item:
            return loc
        if isinstance(item, dict):
            for k, v in item.items():
                if "\x00" in k:
                    return [*loc, k]
                stack.append(([*loc, k], v))
        elif isinstance(item, list):
            stack.extend(([*loc, i], v) for i, v in enumerate(item))
    return None


def _shown(loc: list[str | int]) -> str:
    """A ``loc`` as a path, e.g. ``'x.y[2]'``; a key holding U+0000 is shown as its repr."""
    parts = (f"[{p}]" if isinstance(p, int) else f".{p!r}" if "\x00" in p else f".{p}" for p in loc)
    return "".join(parts).lstrip(".") or "a value"


def nul_at(value: Any) -> str | None:
    """Where ``value`` (JSON values) holds the character U+0000, e.g. ``'x.y[2]'`` (None:
    nowhere)."""
    loc = nul_loc(value)
    return None if loc is None else _shown(loc)


def _found_nul(value: Any) -> list[str | int] | None:
    """``nul_loc``, walking the values only when their encoding holds the escape (searched in
    C; the escape may also be a backslash's, in text, which the walk tells apart)."""
    try:
        if NUL_ESCAPE not in _json_encode(value):
            return None
    except (TypeError, msgspec.EncodeError, ValueError, RecursionError):
        pass  # not JSON values: walked as they are (to_json_values says what else is wrong)
    return nul_loc(value)


def refuse_nul(what: str, given: Any) -> None:
    """Refuse an input, a form's answer, a reason or a note holding the character U+0000: a
    422 naming the field (FormValidationError). orchd stores none: PostgreSQL refuses it in
    jsonb and in text, and a SQLite database stays movable to PostgreSQL."""
    if (loc := _found_nul(given)) is not None:
        raise FormValidationError(
            f"{what}: {_shown(loc)} holds the character U+0000, which orchd does not store",
            [{"loc": loc, "msg": "holds the character U+0000"}],
        )


def non_finite(value: Any, path: str = "") -> str | None:
    """Where ``value`` (JSON values) holds a NaN or an infinity, e.g. ``'x.y[2] = nan'``."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"{where.lstrip('.') or 'a value'} = {item!r}"
        if isinstance(item, dict):
            stack.extend((f"{where}.{k}", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))
    return None


_PATH = re.compile(r" - at `\$(.*)`$")
_FIELD = re.compile(r"`([^`]+)`")


def validation_errors(exc: msgspec.ValidationError) -> list[dict[str, Any]]:
    """Turn msgspec's message into the problem's ``errors`` entries (loc, msg)."""
    text = str(exc)
    loc: list[str | int] = []
    match = _PATH.search(text)
    if match:
        text = text[: match.start()]
        for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", match.group(1)):
            loc.append(part[0] if part[0] else int(part[1]))
    if text.startswith(("Object missing required field", "Object contains unknown field")):
        field_name = _FIELD.search(text)
        if field_name:
            loc.append(field_name.group(1))
    return [{"loc": loc, "msg": text}]


def require_object(value: Any) -> dict[str, Any]:
    """``value`` as the JSON object every input and form answer must be; 422 otherwise."""
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        raise FormValidationError(
            "the input must be a JSON object",
            [{"loc": [], "msg": f"expected an object, got {kind}"}],
        )
    return value


def validate_form(form: type[msgspec.Struct], answer: Any) -> dict[str, Any]:
    """Check ``answer`` against ``form``; the JSON values of the valid answer, with defaults."""
    require_object(answer)
    try:
        value = msgspec.convert(answer, form, strict=False)
    except msgspec.ValidationError as exc:
        errors = every_error(form, answer, exc)
        raise FormValidationError(f"input does not fit {form.__name__}: {exc}", errors) from None
    refuse_nul("the input", answer)
    return to_json_values(form.__name__, value)


def every_error(
    form: type[msgspec.Struct], answer: dict[str, Any], first: msgspec.ValidationError
) -> list[dict[str, Any]]:
    """Every field at fault, not only the first msgspec met: a person fixing a form wants
    them all at once. ``first`` stays first; then each other field is checked on its own."""
    errors = validation_errors(first)
    seen = {tuple(e["loc"][:1]) for e in errors}
    fields = msgspec.structs.fields(form)
    for f in fields:
        if (f.encode_name,) in seen:
            continue
        if f.encode_name not in answer:
            if f.required:
                errors.append(
                    {"loc": [f.encode_name], "msg": f"Object missing required field `{f.name}`"}
                )
            continue
        try:
            msgspec.convert(answer[f.encode_name], f.type, strict=False)
        except msgspec.ValidationError as exc:
            for entry in validation_errors(exc):
                errors.append({"loc": [f.encode_name, *entry["loc"]], "msg": entry["msg"]})
    if form.__struct_config__.forbid_unknown_fields:
        known = {f.encode_name for f in fields}
        for key in answer:
            if key not in known and (key,) not in seen:
                errors.append({"loc": [key], "msg": f"Object contains unknown field `{key}`"})
    return errors


@functools.lru_cache(maxsize=1024)
def form_schema(form: type[msgspec.Struct]) -> dict[str, Any]:
    """The form's JSON Schema as one self-contained object (definitions under ``$defs``).

    Cached: a form class does not change, and every suspend publishes its schema. Callers
    must not modify the returned dict."""
    schema: dict[str, Any] = msgspec.json.schema(form)
    ref = schema.get("$ref")
    defs = schema.get("$defs", {})
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        top = dict(defs[ref.removeprefix("#/$defs/")])
        others = {k: v for k, v in defs.items() if k != ref.removeprefix("#/$defs/")}
        if others or _refers_to(top, ref):
            top["$defs"] = defs
        return top
    return schema


def _refers_to(schema: Any, ref: str) -> bool:
    if isinstance(schema, dict):
        return schema.get("$ref") == ref or any(_refers_to(v, ref) for v in schema.values())
    if isinstance(schema, list):
        return any(_refers_to(v, ref) for v in schema)
    return False


encode = _json_encode
decode = _json_decode
