"""``orchd start NAME --interactive``: ask a workflow's form page by page on a terminal.

The daemon keeps no page state: each page is asked with the answers so far
(``POST /api/workflows/{name}/form``), so a page that depends on an earlier answer (a
choice among live subscriptions) is what the daemon builds for exactly these answers. A
refused answer is asked again, its fields' errors shown first; an error on an earlier page
goes back to that page. Standard library only, like ``orchd.cli``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from orchd.client import Client, DaemonRefused, quoted

Ask = Callable[[str], str]


class NoTerminal(Exception):
    """Raised when ``--interactive`` is used without a terminal to ask on."""


def ask_pages(client: Client, workflow: str, ask: Ask | None = None) -> list[dict[str, Any]]:
    """Every page's answer, asked one page at a time; the list a start takes."""
    if ask is None:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise NoTerminal("--interactive asks on a terminal; without one, give --input")
        ask = input
    answers: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    path = f"/api/workflows/{quoted(workflow)}/form"
    while True:
        try:
            page = client.post(path, answers)
        except DaemonRefused as refused:
            if refused.status != 422 or not answers:
                raise
            back, errors = _located(refused.problem, len(answers) - 1)
            answers = answers[:back]
            continue
        if page.get("done"):
            return answers
        answers.append(_ask_page(int(page.get("page", len(answers))), page["form"], errors, ask))
        errors = {}


def _located(problem: dict[str, Any], last: int) -> tuple[int, dict[str, str]]:
    """Which page to ask again (the first one at fault) and its fields' errors."""
    at = last
    found: dict[str, str] = {}
    for entry in problem.get("errors") or []:
        loc = entry.get("loc") or []
        if len(loc) >= 2 and loc[0] == "pages" and isinstance(loc[1], int):
            at = min(at, loc[1])
    for entry in problem.get("errors") or []:
        loc = entry.get("loc") or []
        if len(loc) >= 2 and loc[0] == "pages" and loc[1] == at:
            field = ".".join(str(p) for p in loc[2:]) or "(page)"
            found[field] = str(entry.get("msg", ""))
    if not found:
        found["(page)"] = str(problem.get("detail", ""))
    return at, found


def _ask_page(index: int, form: dict[str, Any], errors: dict[str, str], ask: Ask) -> dict[str, Any]:
    title = form.get("title") or f"page {index}"
    print(f"\n-- page {index}: {title}")
    if form.get("description"):
        print(form["description"])
    for field, message in errors.items():
        print(f"   ! {field}: {message}")
    required = set(form.get("required") or [])
    answer: dict[str, Any] = {}
    for name, schema in (form.get("properties") or {}).items():
        value = _ask_field(name, _resolved(schema, form), name in required, ask)
        if value is not _SKIP:
            answer[name] = value
    return answer


_SKIP: Any = object()


def _resolved(schema: dict[str, Any], form: dict[str, Any]) -> dict[str, Any]:
    """A property's schema with a ``$ref`` to the form's ``$defs`` followed."""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return dict(form.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {}))
    return schema


def _ask_field(name: str, schema: dict[str, Any], required: bool, ask: Ask) -> Any:
    options = _options(schema)
    many = schema.get("type") == "array"
    if many and isinstance(schema.get("items"), dict):
        options = _options(schema["items"])
    if options:
        for n, (value, title) in enumerate(options, start=1):
            print(f"   {n}) {title}  [{value}]")
    default = schema.get("default", _SKIP)
    hint = _hint(schema, many, options, default)
    while True:
        text = ask(f"{name}{hint}: ").strip()
        if not text:
            if default is not _SKIP or not required:
                return _SKIP
            print("   ! an answer is needed")
            continue
        try:
            return _parse(text, schema, many, options)
        except ValueError as exc:
            print(f"   ! {exc}")


def _options(schema: dict[str, Any]) -> list[tuple[Any, str]]:
    if isinstance(schema.get("oneOf"), list):
        return [
            (o.get("const"), str(o.get("title") or o.get("const")))
            for o in schema["oneOf"]
            if isinstance(o, dict) and "const" in o
        ]
    if isinstance(schema.get("enum"), list):
        return [(v, str(v)) for v in schema["enum"]]
    return []


def _hint(schema: dict[str, Any], many: bool, options: list[Any], default: Any) -> str:
    kind = "numbers or values, comma-separated" if many and options else None
    if kind is None and options:
        kind = "a number or a value"
    if kind is None:
        kind = str(schema.get("type") or "JSON")
        if many:
            kind = "values, comma-separated"
    shown = "" if default is _SKIP else f", default {json.dumps(default)}"
    return f" ({kind}{shown})"


def _parse(text: str, schema: dict[str, Any], many: bool, options: list[Any]) -> Any:
    if many:
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [_one(part.strip(), items or {}, options) for part in text.split(",") if part]
    return _one(text, schema, options)


def _one(text: str, schema: dict[str, Any], options: list[tuple[Any, str]]) -> Any:
    if options:
        if text.isdigit() and 1 <= int(text) <= len(options):
            return options[int(text) - 1][0]
        for value, _ in options:
            if str(value) == text:
                return value
        raise ValueError(f"{text!r} is not one of the {len(options)} listed")
    kind = schema.get("type")
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    if kind == "boolean":
        if text.lower() in ("y", "yes", "true", "1"):
            return True
        if text.lower() in ("n", "no", "false", "0"):
            return False
        raise ValueError("answer yes or no")
    if kind == "string":
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
