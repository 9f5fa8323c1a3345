"""The OpenAPI 3.1 document of the control API, built from the API's own route table.

The API declares each route once (a ``Route``); the same table registers the aiohttp handlers
and describes them here, and the JSON Schemas come from the msgspec Structs the handlers encode.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from orchd.model import ProductInfo, WorkflowInfo

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REF = "#/components/schemas/{name}"

#: The problem responses a route may declare, by status.
PROBLEMS: dict[int, tuple[str, str]] = {
    400: (
        "BadRequest",
        "Malformed JSON (whitespace alone included; a key twice in one object), header or query "
        "parameter, or no usable Host header (TCP)",
    ),
    401: ("Unauthorized", "Missing or wrong bearer token (TCP only)"),
    403: (
        "CrossSiteRequest",
        "A browser sent this for another site: its Origin is not the Host it was sent to, or "
        "Sec-Fetch-Site is cross-site or same-site; nothing was done",
    ),
    404: ("NotFound", "Unknown route, workflow, process, subscription, token or schedule"),
    405: ("MethodNotAllowed", "The route does not take this method"),
    409: ("Conflict", "Not allowed in the current status, or the subscription is locked"),
    413: ("PayloadTooLarge", "The body is larger than the configured limit"),
    415: (
        "UnsupportedMediaType",
        "A body that is not `application/json` (a `charset=utf-8` parameter is allowed)",
    ),
    421: (
        "MisdirectedRequest",
        "Over TCP: the Host header names neither this daemon's listener, localhost nor a name "
        "in `allowed_hosts`; on the Unix socket: a browser's request that does not come as "
        "localhost or an allowed name",
    ),
    422: (
        "ValidationFailed",
        "The input does not fit the form (`errors` says where), or an Idempotency-Key came "
        "again with another input",
    ),
    429: (
        "TooManyRequests",
        "The client went over the configured request rate, or its address gave too many wrong "
        "tokens over TCP; `Retry-After` says in how many seconds to try again",
    ),
    500: ("InternalError", "An unexpected error (logged by the daemon)"),
    503: ("Unavailable", "The database refused a write, or the daemon is stopping"),
}


@dataclass(frozen=True)
class Param:
    """A query parameter, or (in a route's ``headers``) a request header."""

    name: str
    description: str
    schema_type: str = "string"
    enum: tuple[str, ...] = ()
    #: Extra JSON Schema keywords (minimum, format, pattern...), as the handler checks them.
    constraints: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Route:
    """One route of the API: what aiohttp registers and what the document describes."""

    method: str
    path: str
    handler: Handler
    summary: str
    #: The type the success answer encodes (a msgspec-able type), or None for no body.
    response: Any
    status: int = 200
    #: The type of the JSON request body, or None when the route reads none; whether a body
    #: must be sent (most routes take a missing body as ``{}``).
    request: Any = None
    body_required: bool = False
    query: tuple[Param, ...] = ()
    #: The request headers the handler reads.
    headers: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    #: Other non-problem answers, e.g. health's 503 with the same shape as its 200.
    alternatives: tuple[tuple[int, Any], ...] = ()
    #: What an answer means, by status, where "Success" would not say it.
    described: tuple[tuple[int, str], ...] = ()
    media_type: str = "application/json"
    #: Public routes need no bearer token, even over TCP.
    public: bool = False
    #: The path as documented, when aiohttp's differs only in a parameter's name (OpenAPI
    #: forbids two templates of one shape); ``path_doc`` describes that parameter.
    doc_path: str | None = None
    path_doc: tuple[tuple[str, str], ...] = ()


_PATH_PARAM = re.compile(r"\{([^}/:]+)\}")


def document(
    routes: Sequence[Route], *, title: str, version: str, problem: type[msgspec.Struct]
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes``; problems are described by ``problem``."""
    types: list[Any] = [problem]
    for route in routes:
        for t in (route.request, route.response, *(t for _, t in route.alternatives)):
            if t is not None and t not in types:
                types.append(t)
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    schema_of = dict(zip(types, schemas, strict=True))

    paths: dict[str, dict[str, Any]] = {}
    used: set[int] = set()
    for route in routes:
        op: dict[str, Any] = {
            "operationId": route.handler.__name__,
            "summary": route.summary,
        }
        path = route.doc_path or route.path
        described = dict(route.path_doc)
        params = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                **({"description": described[name]} if name in described else {}),
            }
            for name in _PATH_PARAM.findall(path)
        ]
        params += [_query(p) for p in route.query]
        params += [_header(p) for p in route.headers]
        if params:
            op["parameters"] = params
        if route.request is not None:
            op["requestBody"] = {
                "required": route.body_required,
                "content": {"application/json": {"schema": schema_of[route.request]}},
            }
        meaning = dict(route.described)
        responses: dict[str, Any] = {}
        for status, t in ((route.status, route.response), *route.alternatives):
            answer = _response(t, route.media_type, schema_of)
            if status in meaning:
                answer["description"] = meaning[status]
            responses[str(status)] = answer
        # What any request may be refused with before its route reads it (api.acceptance):
        # a Host that is not this daemon's, a post from another site, a body not typed JSON.
        errors = set(route.errors) | {400, 421, 500}
        if route.method not in ("GET", "HEAD"):
            errors.add(403)
        if route.request is not None:
            errors.add(415)
        if not route.public:
            errors.update((401, 429))
        else:
            op["security"] = []
        for status in sorted(errors):
            used.add(status)
            responses[str(status)] = {"$ref": f"#/components/responses/{PROBLEMS[status][0]}"}
        op["responses"] = responses
        paths.setdefault(path, {})[route.method.lower()] = op

    problem_ref = {"$ref": REF.format(name=problem.__name__)}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": {
                PROBLEMS[status][0]: {
                    "description": PROBLEMS[status][1],
                    "content": {"application/problem+json": {"schema": problem_ref}},
                }
                for status in sorted(used)
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        # The token is needed over TCP only; over the Unix socket no scheme applies.
        "security": [{"bearer": []}, {}],
    }


def _query(param: Param) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": param.schema_type}
    if param.enum:
        schema["enum"] = list(param.enum)
    schema.update(param.constraints)
    # An empty value counts as not given (`?cursor=` on a first page), whatever the type.
    schema = {"anyOf": [schema, {"const": ""}]}
    return {
        "name": param.name,
        "in": "query",
        "required": False,
        "description": param.description,
        "schema": schema,
    }


def _header(param: Param) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": param.schema_type}
    schema.update(param.constraints)
    return {
        "name": param.name,
        "in": "header",
        "required": False,
        "description": param.description,
        "schema": schema,
    }


def _response(t: Any, media_type: str, schema_of: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    if t is None:
        return {"description": "No content"}
    if media_type == "text/event-stream":
        # One event's shape, for an extension: the JSON of ``t`` travels in ``data``.
        event = {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "event": {"type": "string"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": schema_of[t],
                },
            },
        }
        # No ``schema``: tools read it as the shape of the whole body or of each event, and
        # either reading rejects a real stream; what each event carries is said below.
        return {
            "description": "A stream of server-sent events; `x-sse-event` is one event's "
            'shape. `event: reset` (data `{"id", "kind": "reset", "reload": '
            'true, "reason"}`) replaces events that are no longer kept: reload, then '
            "follow.",
            "content": {media_type: {"x-sse-event": event}},
        }
    return {"description": "Success", "content": {media_type: {"schema": schema_of[t]}}}


def describe_starts(document: dict[str, Any], path: str, workflows: Sequence[WorkflowInfo]) -> None:
    """Describe the body of a start by each workflow: its one-page form's object schema, a
    list of page answers for a form of several pages, any object without a form. Each form's
    own definitions go to the components, named after the workflow."""
    operation = document["paths"][path]["post"]
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    bodies: list[dict[str, Any]] = []
    for wf in workflows:
        if wf.paged:
            body: dict[str, Any] = {
                "type": "array",
                "items": {"type": "object"},
                "description": f"the answers of {wf.name}'s pages, page 0 first "
                f"(POST /api/workflows/{wf.name}/form gives each page)",
            }
        elif wf.form is not None:
            body = _hoisted(wf.form, wf.name, schemas)
        else:
            body = {"type": "object", "description": f"{wf.name} has no form: any object"}
        bodies.append({**body, "title": wf.name})
    content = operation["requestBody"]["content"]["application/json"]
    content["schema"] = {"oneOf": bodies} if bodies else {"type": "object"}


def _hoisted(schema: dict[str, Any], prefix: str, schemas: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` moved into ``schemas`` as ``{prefix}.{name}``."""
    names = {name: f"{prefix}.{name}" for name in schema.get("$defs", {})}

    def moved(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return {**node, "$ref": REF.format(name=names[ref.removeprefix("#/$defs/")])}
            return {k: moved(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [moved(v) for v in node]
        return node

    for name, definition in schema.get("$defs", {}).items():
        schemas[names[name]] = moved(definition)
    result: dict[str, Any] = moved(schema)
    return result


def describe_products(document: dict[str, Any], products: Sequence[ProductInfo]) -> None:
    """Each product's schema among the components, as ``product.{name}``: what a
    subscription of it holds (``GET /api/products`` gives the same)."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for info in products:
        name = f"product.{info.name}"
        schemas[name] = _hoisted(info.schema, name, schemas)
