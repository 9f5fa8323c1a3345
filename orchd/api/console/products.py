"""What the products page and a subscription's page draw, from the engine's answers.

- A product's fields, from the JSON Schema ``Engine.products()`` gives (as ``GET
  /api/products`` does): each field by its path (``saps[].port``), its type in words, whether
  the schema requires it, its default, and where a Ref points (``x-orchd-refs``). The
  subscription's own fields (``id``, ``status``, ...) are the same for every product and are
  left out.
- A subscription's ``attributes`` as nested tables: an object is a table of its keys, a list of
  blocks is a table with a row per block, a value that is a Ref the subscription depends on is
  a link to that subscription.
- The graph of the subscriptions around one: what it depends on in a column on the left, what
  uses it on the right, the subscription in the middle. Only the coordinates are computed here;
  ``templates/subscription.html`` draws them as SVG, styled by ``console.css`` (the CSP allows
  no inline style).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from orchd.model import ProductInfo, Related
from orchd.products import OWN_FIELDS

# -- a product's fields -----------------------------------------------------------------------


@dataclass(frozen=True)
class FieldRow:
    """One field of a product or of one of its blocks."""

    path: str
    depth: int
    #: The type of one value in words (of one item, for a list): ``integer``, ``block
    #: SapBlock``, ``Ref to port``, ``one of "a", "b"``.
    type: str
    required: bool
    #: A list of such values.
    many: bool = False
    #: ``T | None``: it may be left empty (null).
    nullable: bool = False
    default: str = ""
    description: str = ""
    #: The product a Ref points to.
    ref: str = ""
    #: The status from which it must be set, when the schema says (``x-orchd-required``).
    required_from: str = ""


def product_fields(schema: Mapping[str, Any]) -> list[FieldRow]:
    """The fields of a product's JSON Schema, blocks flattened under their field (``node``,
    ``node.name``; ``saps``, ``saps[].vlan``), in the schema's order."""
    refs = schema.get("x-orchd-refs") or {}
    required_from = schema.get("x-orchd-required") or {}
    rows: list[FieldRow] = []
    _walk(schema, schema, "", 0, refs, required_from, rows, own=True)
    return rows


def _walk(
    node: Mapping[str, Any],
    root: Mapping[str, Any],
    prefix: str,
    depth: int,
    refs: Mapping[str, str],
    required_from: Mapping[str, str],
    rows: list[FieldRow],
    *,
    own: bool = False,
) -> None:
    required = set(node.get("required") or ())
    for name, raw in (node.get("properties") or {}).items():
        if own and name in OWN_FIELDS:
            continue
        path = prefix + name
        prop = _resolved(raw, root)
        many = False
        inner = _non_null(prop, root)
        if inner.get("type") == "array" and isinstance(inner.get("items"), Mapping):
            many = True
            item = _non_null(_resolved(inner["items"], root), root)
        else:
            item = inner
        # Where x-orchd-refs names it: ``saps[].port``, ``ports[]`` for a list of Refs.
        key = path + ("[]" if many else "")
        ref = str(refs.get(key, ""))
        block = item.get("type") == "object" and isinstance(item.get("properties"), Mapping)
        rows.append(
            FieldRow(
                path=path,
                depth=depth,
                type=_type_words(item, block=block, ref=ref, root=root),
                required=name in required,
                many=many,
                nullable=_nullable(prop),
                default=_default(prop),
                description=str(prop.get("description") or ""),
                ref=ref,
                required_from=str(required_from.get(key, "")),
            )
        )
        if block and depth < 8:
            _walk(item, root, key + ".", depth + 1, refs, required_from, rows)


def _resolved(schema: Any, root: Mapping[str, Any]) -> dict[str, Any]:
    """The schema with a ``$ref`` into ``$defs`` replaced by its target (its title kept)."""
    if not isinstance(schema, Mapping):
        return {}
    resolved = dict(schema)
    for _ in range(16):
        target = resolved.get("$ref")
        if not isinstance(target, str):
            break
        del resolved["$ref"]
        found = (root.get("$defs") or {}).get(target.rpartition("/")[2]) or {}
        resolved = {**found, **resolved}
    return resolved


def _non_null(schema: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any]:
    """``T | None`` as ``T``."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        kept = [o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")]
        if len(kept) == 1:
            return _resolved(kept[0], root)
    return dict(schema)


def _nullable(schema: Mapping[str, Any]) -> bool:
    options = schema.get("anyOf")
    return isinstance(options, list) and any(
        isinstance(o, Mapping) and o.get("type") == "null" for o in options
    )


def _one_type(schema: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return "one of " + ", ".join(_json(v) for v in enum)
    options = schema.get("anyOf")
    if isinstance(options, list):
        kinds = [_one_type(_resolved(o, root), root) for o in options if isinstance(o, Mapping)]
        return " or ".join(k for k in kinds if k != "null") or "null"
    kind = schema.get("type")
    if kind == "object" and schema.get("title"):
        return f"block {schema['title']}"
    text = str(kind) if isinstance(kind, str) else "any value"
    if schema.get("format"):
        text += f" ({schema['format']})"
    return text


def _type_words(item: Mapping[str, Any], *, block: bool, ref: str, root: Mapping[str, Any]) -> str:
    if ref:
        return f"Ref to {ref}"
    if block:
        return f"block {item.get('title') or 'object'}"
    return _one_type(item, root)


def _default(prop: Mapping[str, Any]) -> str:
    if "default" not in prop or prop["default"] is None:
        return ""
    return _json(prop["default"])


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def referred_by(products: Sequence[ProductInfo]) -> dict[str, list[tuple[str, str]]]:
    """For each product, the (product, field path) of the Refs that point at it."""
    found: dict[str, list[tuple[str, str]]] = {}
    for info in products:
        for path, target in (info.schema.get("x-orchd-refs") or {}).items():
            found.setdefault(str(target), []).append((info.name, str(path)))
    return found


# -- a subscription's attributes --------------------------------------------------------------

#: Below this depth, a value is shown as JSON text rather than tables in tables.
MAX_DEPTH = 6


@dataclass
class Value:
    """One value of a subscription's attributes, as the template draws it.

    ``kind``: ``text`` (a string, number or boolean), ``empty`` (null), ``ref`` (a link to
    ``related``), ``object`` (``items``: key and value), ``rows`` (a list of blocks:
    ``columns`` and ``rows``, each a list of values), ``list`` (``values``), ``json`` (too deep
    to draw as tables: ``text`` holds it).
    """

    kind: str
    text: str = ""
    path: str = ""
    related: Related | None = None
    items: list[tuple[str, Value]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[list[Value]] = field(default_factory=list)
    values: list[Value] = field(default_factory=list)


def attribute_view(attributes: Any, depends_on: Sequence[Related]) -> Value:
    """The attributes as nested values; a value at a path where the subscription holds a Ref
    (its ``depends_on`` entries say where) becomes a link to that subscription."""
    refs = {r.path: r for r in depends_on if r.path}
    return _value(attributes, "", refs, 0)


def _value(value: Any, path: str, refs: Mapping[str, Related], depth: int) -> Value:
    related = refs.get(path)
    if related is not None and isinstance(value, str):
        return Value("ref", text=value, path=path, related=related)
    if value is None:
        return Value("empty", path=path)
    if isinstance(value, bool):
        return Value("text", text="true" if value else "false", path=path)
    if isinstance(value, str | int | float):
        return Value("text", text=str(value), path=path)
    if depth >= MAX_DEPTH:
        text = msgspec.json.format(msgspec.json.encode(value), indent=2).decode()
        return Value("json", text=text, path=path)
    if isinstance(value, Mapping):
        dot = f"{path}." if path else ""
        items = [(str(k), _value(v, f"{dot}{k}", refs, depth + 1)) for k, v in value.items()]
        return Value("object", path=path, items=items)
    if isinstance(value, list):
        if value and all(isinstance(v, Mapping) for v in value):
            columns: list[str] = []
            for item in value:
                columns.extend(str(k) for k in item if str(k) not in columns)
            rows = [
                [
                    _value(item.get(c), f"{path}[{i}].{c}", refs, depth + 1)
                    if c in item
                    else Value("absent")
                    for c in columns
                ]
                for i, item in enumerate(value)
            ]
            return Value("rows", path=path, columns=columns, rows=rows)
        values = [_value(v, f"{path}[{i}]", refs, depth + 1) for i, v in enumerate(value)]
        return Value("list", path=path, values=values)
    return Value("text", text=str(value), path=path)


# -- the graph around a subscription ----------------------------------------------------------

#: The drawing's size in its own units (the page scales it to its width).
WIDTH = 760
NODE_W = 200
NODE_H = 62
GAP = 14
TOP = 34  # room for the columns' headings
#: Where the columns are: what it depends on, the subscription, what uses it.
LEFT_X = 10
CENTER_X = (WIDTH - NODE_W) // 2
RIGHT_X = WIDTH - NODE_W - 10
#: At most this many subscriptions are drawn on a side; the tables list every one.
MAX_SIDE = 8
#: A description longer than this is cut in a node (the node's title holds all of it).
LABEL_CHARS = 25


@dataclass(frozen=True)
class GraphNode:
    id: str
    product: str
    status: str
    description: str
    label: str  # the description as it fits
    x: int
    y: int
    #: Where the relation is written (the Ref's paths), for the node's title.
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class GraphEdge:
    """A curve from the subscription that depends to the one it depends on."""

    d: str


@dataclass(frozen=True)
class Graph:
    width: int
    height: int
    center: GraphNode
    depends_on: list[GraphNode]
    in_use_by: list[GraphNode]
    edges: list[GraphEdge]
    #: How many related subscriptions were left out of each side.
    more_depends_on: int
    more_in_use_by: int
    #: The columns' x positions (their headings are drawn over them).
    left_x: int = LEFT_X
    right_x: int = RIGHT_X
    node_w: int = NODE_W
    node_h: int = NODE_H


def _label(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1].rstrip() + "…"


def _unique(related: Sequence[Related]) -> list[tuple[Related, tuple[str, ...]]]:
    """Each subscription once (an L2VPN with two SAPs on one port names the port twice), with
    every path it is named at."""
    order: dict[str, tuple[Related, list[str]]] = {}
    for r in related:
        entry = order.setdefault(r.id, (r, []))
        if r.path and r.path not in entry[1]:
            entry[1].append(r.path)
    return [(r, tuple(paths)) for r, paths in order.values()]


def relation_graph(
    sid: str,
    product: str,
    status: str,
    description: str,
    depends_on: Sequence[Related],
    in_use_by: Sequence[Related],
) -> Graph | None:
    """The subscription in the middle, what it depends on to its left, what uses it to its
    right; ``None`` when it has no relations."""
    left_all, right_all = _unique(depends_on), _unique(in_use_by)
    if not left_all and not right_all:
        return None
    left, right = left_all[:MAX_SIDE], right_all[:MAX_SIDE]
    step = NODE_H + GAP
    rows = max(len(left), len(right), 1)
    cut = len(left_all) > MAX_SIDE or len(right_all) > MAX_SIDE
    height = TOP + rows * step + (24 if cut else 0)  # room for "and N more"

    def column(items: list[tuple[Related, tuple[str, ...]]], x: int) -> list[GraphNode]:
        offset = TOP + (rows - len(items)) * step // 2
        return [
            GraphNode(
                id=r.id,
                product=r.product,
                status=str(r.status),
                description=r.description,
                label=_label(r.description),
                x=x,
                y=offset + i * step,
                paths=paths,
            )
            for i, (r, paths) in enumerate(items)
        ]

    center = GraphNode(
        id=sid,
        product=product,
        status=status,
        description=description,
        label=_label(description),
        x=CENTER_X,
        y=TOP + (rows - 1) * step // 2,
    )
    lefts, rights = column(left, LEFT_X), column(right, RIGHT_X)
    mid = NODE_H // 2
    # Every arrow points at what is depended on: from the subscription to its left column,
    # from the right column to the subscription.
    edges = [_curve(center.x, center.y + mid, n.x + NODE_W, n.y + mid) for n in lefts]
    edges += [_curve(n.x, n.y + mid, center.x + NODE_W, center.y + mid) for n in rights]
    return Graph(
        width=WIDTH,
        height=height,
        center=center,
        depends_on=lefts,
        in_use_by=rights,
        edges=edges,
        more_depends_on=len(left_all) - len(left),
        more_in_use_by=len(right_all) - len(right),
    )


def _curve(x1: int, y1: int, x2: int, y2: int) -> GraphEdge:
    """A curve leaving ``(x1, y1)`` leftwards and arriving at ``(x2, y2)`` from the right."""
    bend = (x1 - x2) // 2
    return GraphEdge(d=f"M{x1},{y1} C{x1 - bend},{y1} {x2 + bend},{y2} {x2},{y2}")
