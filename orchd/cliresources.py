"""``orchd resources``: each limit on shared resources, its keys in use and their holders
(README "Limits on shared resources"), from ``GET /api/resources``. Standard library only, like
``orchd.cli``."""

from __future__ import annotations

import argparse
from typing import Any

from orchd.client import BadResponse, Client
from orchd.cliprint import print_json, print_table, when


def cmd_resources(client: Client, args: argparse.Namespace) -> int:
    limits = client.get("/api/resources")
    if not isinstance(limits, list):
        raise BadResponse(f"the daemon's answer for /api/resources is not a list: {limits!r}")
    if args.json:
        print_json(limits)
        return 0
    if not limits:
        print("no limits configured ([limits] in the config)")
        return 0
    print_table(
        ("LIMIT", "CONCURRENCY", "RATE", "IN USE", "WAITING"),
        [
            (
                lim.get("resource"),
                lim.get("concurrency") or "-",
                lim.get("rate") or "-",
                lim.get("in_use", 0),
                lim.get("waiting", 0),
            )
            for lim in limits
        ],
    )
    rows: list[tuple[Any, ...]] = []
    for lim in limits:
        for key in lim.get("keys") or []:
            holders = key.get("holders") or [{}]
            for i, holder in enumerate(holders):
                pid = holder.get("process_id")
                rows.append(
                    (
                        lim.get("resource"),
                        key.get("key") or "-",
                        pid or "(none)",
                        holder.get("step") or "",
                        holder.get("node") or "",
                        when(holder.get("since")),
                        key.get("waiting", 0) if i == 0 else "",
                    )
                )
    if rows:
        print()
        print_table(("LIMIT", "KEY", "HELD BY", "STEP", "NODE", "SINCE", "WAITING"), rows)
    return 0
