"""Products: what a subscription holds, typed.

A product is a ``msgspec.Struct`` (a subclass of :class:`Product`) whose fields are values,
blocks (subclasses of :class:`Block`), lists of blocks and :data:`Ref`\\ s to other
subscriptions. One class serves every lifecycle stage: a field that may be empty early on is
``Annotated[T | None, required("active")]``, and the check of what must be set happens when the
subscription is saved with a status (not in three classes, one per stage).

In State a subscription keeps the shape every subscription has (its own fields, ``product``,
and the product's fields under ``attributes``), so a typed and an untyped subscription travel
the same way through checkpoints, the API and the database; :func:`to_model` and
:func:`as_state` move between that shape and the model.

Everything here is the shared vocabulary: it imports nothing of the engine or the store.
"""

from __future__ import annotations

import inspect
import types
import typing
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

import msgspec

from orchd.errors import WorkflowDefinitionError

#: Lifecycle order for ``required(status)``: a field required from a status must be set at
#: that status and every later one. ``disabled`` counts as ``active``; a ``terminated``
#: subscription, like an ``initial`` one, needs nothing set.
LIFECYCLE: dict[str, int] = {
    "initial": 0,
    "terminated": 0,
    "provisioning": 1,
    "active": 2,
    "disabled": 2,
}
#: The statuses ``required`` accepts, in lifecycle order.
REQUIRABLE = ("initial", "provisioning", "active")


class Required:
    """The marker ``required(status)`` puts into a field's ``Annotated`` metadata."""

    __slots__ = ("status",)

    def __init__(self, status: str) -> None:
        self.status = status

    def __repr__(self) -> str:
        return f"required({self.status!r})"


def required(status: str) -> Required:
    """Mark a field as required from lifecycle ``status`` on: ``Annotated[int | None,
    required("active")] = None``."""
    if status not in REQUIRABLE:
        raise WorkflowDefinitionError(
            f"required({status!r}): the status must be one of {', '.join(REQUIRABLE)}"
        )
    return Required(status)


class RefTo:
    """The marker ``Ref[P]`` puts into its ``Annotated`` metadata: the product it names."""

    __slots__ = ("target",)

    def __init__(self, target: Any) -> None:
        self.target = target

    @property
    def product(self) -> str:
        return str(getattr(self.target, "product_name", "") or "")


P_co = TypeVar("P_co", covariant=True)


class Ref(Generic[P_co]):
    """``Ref[Node]``: the id of a subscription of product ``Node`` (a UUID; in JSON, that id
    as text). Saving a subscription records that it depends on every subscription its Refs
    name."""

    def __class_getitem__(cls, target: Any) -> Any:
        return Annotated[uuid.UUID, RefTo(target)]


class Block(msgspec.Struct, kw_only=True):
    """A product block: a group of typed fields inside a product (nested blocks and lists of
    blocks allowed)."""


SubscriptionStatusName = Literal["initial", "provisioning", "active", "disabled", "terminated"]


class Product(msgspec.Struct, kw_only=True):
    """A subscription of a product: the subscription's own fields; a subclass registered with
    :func:`product` adds the product's."""

    product_name: ClassVar[str] = ""
    product_description: ClassVar[str] = ""

    id: uuid.UUID | None = None
    customer_id: str = ""
    description: str = ""
    status: SubscriptionStatusName = "initial"
    insync: bool = False
    start_date: str | None = None
    end_date: str | None = None
    version: int = 0
    note: str | None = None


#: The subscription's own fields, which every product has; the rest are the product's.
OWN_FIELDS: tuple[str, ...] = Product.__struct_fields__
_OWN = frozenset(OWN_FIELDS)

#: Every class registered with ``@product``, by product name. One name may be registered by
#: several modules (engines in one process load different workflow modules): an engine takes
#: the class its loaded workflows define or name (``orchd.engine.catalog``).
REGISTERED: dict[str, list[type[Product]]] = {}
#: The class registered last under each name: what a save outside an engine checks against.
PRODUCTS: dict[str, type[Product]] = {}

ProductT = TypeVar("ProductT", bound=type[Product])


def product(name: str, description: str = "") -> Callable[[ProductT], ProductT]:
    """Register a :class:`Product` subclass as product ``name`` (what ``subscription.product``
    holds)."""
    if not isinstance(name, str) or not name:
        raise WorkflowDefinitionError("product() takes the product's name first")

    def register(cls: ProductT) -> ProductT:
        where = _where(cls)
        if not (isinstance(cls, type) and issubclass(cls, Product)) or cls is Product:
            raise WorkflowDefinitionError(f"@product({name!r}){where}: decorate a Product subclass")
        cls.product_name = name
        cls.product_description = description
        try:
            _plan(cls)
            product_schema(cls)
        except WorkflowDefinitionError as exc:
            raise WorkflowDefinitionError(f"@product({name!r}){where}: {exc}") from None
        except Exception as exc:  # msgspec cannot describe a field's type
            raise WorkflowDefinitionError(
                f"@product({name!r}){where}: its fields cannot be described as JSON Schema: {exc}"
            ) from None
        # A module imported again (a reload) replaces its own class, not another module's.
        same = [c for c in REGISTERED.get(name, []) if _identity(c) != _identity(cls)]
        REGISTERED[name] = [*same, cls]
        PRODUCTS[name] = cls
        return cls

    return register


def _identity(cls: type) -> tuple[str, str]:
    return (cls.__module__, cls.__qualname__)


def _where(cls: Any) -> str:
    """`` (file.py, line 12)``: where a class is defined, for errors at load time."""
    try:
        path = inspect.getsourcefile(cls)
        line = inspect.getsourcelines(cls)[1]
    except (OSError, TypeError):
        return ""
    return f" ({path}, line {line})"


def product_schema(cls: type[Product]) -> dict[str, Any]:
    """The product's JSON Schema (one object; its blocks under ``$defs``)."""
    schema: dict[str, Any] = msgspec.json.schema(cls)
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        defs = dict(schema.get("$defs", {}))
        top = dict(defs.pop(ref.removeprefix("#/$defs/")))
        if defs:
            top["$defs"] = defs
        schema = top
    schema["x-orchd-product"] = cls.product_name
    refs = dict(_field_paths(cls, lambda f: f.ref.product if f.ref is not None else None))
    if refs:
        schema["x-orchd-refs"] = refs
    required_from = dict(_field_paths(cls, lambda f: f.required))
    if required_from:
        schema["x-orchd-required"] = required_from
    return schema


# -- what each field of a product or block is -------------------------------------------------


@dataclass(frozen=True)
class _Field:
    name: str
    required: str | None  # the status it is required from
    ref: RefTo | None  # a Ref (or a list of Refs)
    block: type[Block] | None  # a nested block (or a list of blocks)
    many: bool  # a list of the above


_PLANS: dict[type, tuple[_Field, ...]] = {}


def _plan(cls: type) -> tuple[_Field, ...]:
    """What each field of a product or block class is, read once from its annotations."""
    plan = _PLANS.get(cls)
    if plan is not None:
        return plan
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except (NameError, TypeError) as exc:
        raise WorkflowDefinitionError(
            f"cannot read the annotations of {cls.__name__}: {exc}"
        ) from None
    fields = []
    for name in cls.__struct_fields__:  # type: ignore[attr-defined]
        if name in _OWN and issubclass(cls, Product):
            continue
        fields.append(_field(cls, name, hints[name]))
    plan = tuple(fields)
    _PLANS[cls] = plan
    for f in plan:
        if f.block is not None:
            _plan(f.block)
        if f.ref is not None and not (
            isinstance(f.ref.target, type)
            and issubclass(f.ref.target, Product)
            and f.ref.target.product_name
        ):
            raise WorkflowDefinitionError(
                f"{cls.__name__}.{f.name}: Ref[{getattr(f.ref.target, '__name__', f.ref.target)}]"
                " names a class that is not a registered product (decorate it with @product "
                "before it is referred to)"
            )
    return plan


def _field(cls: type, name: str, hint: Any) -> _Field:
    req: str | None = None
    ref: RefTo | None = None
    many = False
    tp = hint
    while True:
        if typing.get_origin(tp) is Annotated:
            for meta in tp.__metadata__:
                if isinstance(meta, Required):
                    req = meta.status
                elif isinstance(meta, RefTo):
                    ref = meta
            tp = tp.__origin__
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType) and len(args) == 1:
            tp = args[0]
            continue
        if origin in (list, tuple, frozenset, set) and args and not many:
            many = True
            tp = args[0]
            continue
        break
    block = tp if isinstance(tp, type) and issubclass(tp, Block) else None
    if block is None and not many and isinstance(tp, type) and issubclass(tp, Product):
        raise WorkflowDefinitionError(
            f"{cls.__name__}.{name}: a product cannot hold another product; "
            f"use Ref[{tp.__name__}] to relate them"
        )
    return _Field(name, req, ref, block, many)


def _field_paths(
    cls: type, pick: Callable[[_Field], str | None], prefix: str = ""
) -> Iterator[tuple[str, str]]:
    """(path, what ``pick`` says of the field) for each field it says something of, nested
    blocks too; a list is written ``saps[]``."""
    for f in _plan(cls):
        path = f"{prefix}{f.name}{'[]' if f.many else ''}"
        said = pick(f)
        if said is not None:
            yield path, said
        if f.block is not None:
            yield from _field_paths(f.block, pick, f"{path}.")


def ref_targets(cls: type) -> list[type[Product]]:
    """The product classes a product's (or block's) Refs name, nested blocks included."""
    found: list[type[Product]] = []
    for f in _plan(cls):
        if f.ref is not None and isinstance(f.ref.target, type):
            found.append(f.ref.target)
        if f.block is not None:
            found.extend(ref_targets(f.block))
    return found


_REQUIRING: dict[type, tuple[_Field, ...]] = {}
_REFERRING: dict[type, tuple[_Field, ...]] = {}


def _holding(
    cls: type, own: Callable[[_Field], bool], cache: dict[type, tuple[_Field, ...]]
) -> tuple[_Field, ...]:
    """The fields of ``cls`` that are ``own`` or are blocks holding such fields, read once."""
    found = cache.get(cls)
    if found is None:
        found = tuple(
            f for f in _plan(cls)
            if own(f) or (f.block is not None and _holding(f.block, own, cache))
        )  # fmt: skip
        cache[cls] = found
    return found


def _requiring(cls: type) -> tuple[_Field, ...]:
    """The fields a status may require: required ones, and blocks holding some."""
    return _holding(cls, lambda f: f.required is not None, _REQUIRING)


def _referring(cls: type) -> tuple[_Field, ...]:
    """The fields that hold Refs: Refs, and blocks holding some."""
    return _holding(cls, lambda f: f.ref is not None, _REFERRING)


def _missing(obj: Any, prefix: str, rank: int, missing: list[str]) -> None:
    """Collect the unset fields ``rank`` requires, nested blocks included, each by its path
    (``saps[1].vlan``)."""
    for f in _requiring(type(obj)):
        value = getattr(obj, f.name)
        if value is None:
            if f.required is not None and LIFECYCLE[f.required] <= rank:
                missing.append(prefix + f.name)
        elif f.block is not None:
            if f.many:
                for i, item in enumerate(value):
                    if item is not None:
                        _missing(item, f"{prefix}{f.name}[{i}].", rank, missing)
            else:
                _missing(value, f"{prefix}{f.name}.", rank, missing)


# -- checks and conversions -------------------------------------------------------------------


class ProductError(Exception):
    """Raised when a subscription does not fit its product (a field's type, a field required
    at its status, a subscription of another product)."""


def missing_at(model: Product) -> list[str]:
    """The paths of the fields ``model``'s status requires that are not set."""
    missing: list[str] = []
    rank = LIFECYCLE.get(model.status, 0)
    if rank:
        _missing(model, "", rank, missing)
    return missing


def refs_in(cls: type, values: Any, prefix: str = "") -> dict[str, tuple[str, str]]:
    """The Refs a product's (or block's) fields hold, read from their JSON values (as State
    holds a subscription's, under ``attributes``) without building the model: path ->
    (the subscription id, the product it must be)."""
    found: dict[str, tuple[str, str]] = {}
    if isinstance(values, dict):
        _refs_in(cls, values, prefix, found)
    return found


def _refs_in(cls: type, values: dict[str, Any], prefix: str, found: dict[str, Any]) -> None:
    for f in _referring(cls):
        value = values.get(f.name)
        if value is None:
            continue
        if f.many:
            if isinstance(value, list):
                _refs_in_list(f, value, f"{prefix}{f.name}", found)
        elif f.ref is not None:
            if isinstance(value, str):
                found[prefix + f.name] = (value, f.ref.product)
        elif isinstance(value, dict):
            _refs_in(f.block, value, f"{prefix}{f.name}.", found)  # type: ignore[arg-type]


def _refs_in_list(f: _Field, items: list[Any], path: str, found: dict[str, Any]) -> None:
    if f.ref is not None:
        product = f.ref.product
        for i, item in enumerate(items):
            if isinstance(item, str):
                found[f"{path}[{i}]"] = (item, product)
        return
    assert f.block is not None
    inner = _referring(f.block)
    if len(inner) == 1 and inner[0].ref is not None and not inner[0].many:
        # The usual shape (a list of blocks, each with one Ref, e.g. SAPs on ports), read in
        # one loop: this runs at every save of such a subscription.
        name, product = inner[0].name, inner[0].ref.product
        for i, item in enumerate(items):
            if isinstance(item, dict) and isinstance(ref := item.get(name), str):
                found[f"{path}[{i}].{name}"] = (ref, product)
        return
    for i, item in enumerate(items):
        if isinstance(item, dict):
            _refs_in(f.block, item, f"{path}[{i}].", found)


def to_model(cls: type[Product], sub: Any, *, where: str = "subscription") -> Product:
    """The model of a subscription as State holds it (its own fields, ``product`` and the
    product's fields under ``attributes``; the product's fields at the top level are taken too).
    """
    if isinstance(sub, cls):
        return sub
    if isinstance(sub, Product):
        raise ProductError(
            f"{where} is a {sub.product_name or type(sub).__name__!r} subscription, "
            f"not {cls.product_name!r}"
        )
    if not isinstance(sub, dict):
        raise ProductError(f"{where} must be an object, not {type(sub).__name__}")
    given = sub.get("product")
    if given is not None and given != cls.product_name:
        raise ProductError(f"{where} is a {given!r} subscription, not {cls.product_name!r}")
    attributes = sub.get("attributes")
    flat = {k: v for k, v in sub.items() if k not in ("product", "attributes")}
    if isinstance(attributes, dict):
        flat = {**attributes, **{k: v for k, v in flat.items() if k in _OWN or k not in attributes}}
    try:
        return msgspec.convert(flat, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise ProductError(f"{where} does not fit product {cls.product_name!r}: {exc}") from None


def as_state(model: Product) -> dict[str, Any]:
    """A model as State (and the API) holds a subscription: its own fields, ``product``, and
    the product's fields under ``attributes`` (a product declared ``omit_defaults=True`` leaves
    out the fields at their defaults)."""
    values = msgspec.to_builtins(model)
    # The own fields are text, numbers, booleans or None but the id (a UUID), and are read
    # from the model: omit_defaults may have left them out of ``values``.
    own = {k: getattr(model, k) for k in OWN_FIELDS}
    sid = own.pop("id")
    if sid is not None:
        own["id"] = str(sid)
    attributes = {k: v for k, v in values.items() if k not in _OWN}
    return {**own, "product": model.product_name, "attributes": attributes}


def search_text(sub: dict[str, Any]) -> str:
    """What ``q`` searches in a subscription: its description and every text value it holds
    (its attributes' included), lower-cased, one per line."""
    texts: list[str] = []
    for key in ("description", "customer_id", "product", "id"):
        value = sub.get(key)
        if isinstance(value, str) and value:
            texts.append(value)
    stack: list[Any] = [sub.get("attributes")]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return "\n".join(texts).lower()
