"""The CLI's subscription and product commands: ``orchd subscriptions`` (filters and search),
``orchd subscription ID`` (fields, relations, usable workflows, note) and ``orchd products``.
Standard library only, like ``orchd.cli``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchd.client import BadResponse, Client, quoted
from orchd.cliops import more_hint, pages
from orchd.cliprint import one_line, print_fields, print_json, print_table, when

EXIT_OK = 0


def cmd_subscriptions(client: Client, args: argparse.Namespace) -> int:
    query = {
        "status": args.status,
        "customer_id": args.customer_id,
        "product": args.product,
        "q": args.query,
        "limit": args.limit,
    }
    page = pages(client, "/api/subscriptions", query, args.all)
    if args.json:
        print_json(page)
        return EXIT_OK
    rows = [
        (
            s.get("id"),
            s.get("product"),
            s.get("customer_id"),
            s.get("status"),
            "yes" if s.get("insync") else "no",
            s.get("version", ""),
            one_line(s.get("description"), 50),
        )
        for s in page["items"]
    ]
    print_table(("ID", "PRODUCT", "CUSTOMER", "STATUS", "INSYNC", "VERSION", "DESCRIPTION"), rows)
    more_hint(page, "subscriptions")
    return EXIT_OK


def cmd_subscription(client: Client, args: argparse.Namespace) -> int:
    sub = client.get(f"/api/subscriptions/{quoted(args.id)}")
    if not isinstance(sub, dict):
        raise BadResponse(f"the daemon's answer for subscription {args.id} is not an object")
    if args.json:
        print_json(sub)
        return EXIT_OK
    print_fields(
        [
            ("id", sub.get("id")),
            ("product", sub.get("product")),
            ("customer", sub.get("customer_id")),
            ("description", sub.get("description")),
            ("status", sub.get("status")),
            ("insync", "yes" if sub.get("insync") else "no"),
            ("version", sub.get("version")),
            ("start", when(sub.get("start_date"))),
            ("end", when(sub.get("end_date"))),
            ("note", sub.get("note") or "-"),
        ]
    )
    if sub.get("attributes"):
        print("attributes:")
        for line in json.dumps(sub["attributes"], indent=2, ensure_ascii=False).splitlines():
            print(f"  {line}")
    _related("depends on", sub.get("depends_on"))
    _related("in use by", sub.get("in_use_by"))
    workflows = sub.get("workflows") or []
    if workflows:
        print()
        print_table(
            ("WORKFLOW", "TARGET", "USABLE", "WHY NOT"),
            [
                (
                    w.get("name"),
                    w.get("target"),
                    "yes" if w.get("usable") else "no",
                    "" if w.get("usable") else f"{w.get('reason')}: {w.get('detail') or ''}",
                )
                for w in workflows
            ],
        )
    processes = sub.get("processes") or []
    if processes:
        print()
        print_table(
            ("PROCESS", "WORKFLOW", "STATUS"),
            [(p.get("id"), p.get("workflow"), p.get("status")) for p in processes],
        )
    actions = sub.get("actions") or []
    if actions:
        print()
        print_table(
            ("AT", "ACTION", "BY", "DETAIL"),
            [
                (when(a.get("at")), a.get("action"), a.get("actor"), one_line(a.get("detail"), 60))
                for a in actions
            ],
        )
    return EXIT_OK


def _related(title: str, entries: Any) -> None:
    if not entries:
        return
    print()
    print(f"{title}:")
    print_table(
        ("ID", "PRODUCT", "STATUS", "WHERE", "DESCRIPTION"),
        [
            (e.get("id"), e.get("product"), e.get("status"), e.get("path"),
             one_line(e.get("description"), 40))
            for e in entries
        ],
    )  # fmt: skip


def cmd_products(client: Client, args: argparse.Namespace) -> int:
    products = client.get("/api/products")
    if args.json:
        print_json(products)
        return EXIT_OK
    print_table(
        ("PRODUCT", "DESCRIPTION", "WORKFLOWS"),
        [
            (p.get("name"), one_line(p.get("description"), 40), ", ".join(p.get("workflows") or []))
            for p in products or []
        ],
    )
    return EXIT_OK
