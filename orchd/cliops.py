"""The CLI's operating commands: ``orchd events`` (follow the event stream across daemon
restarts) and ``orchd gc`` (retention on demand). Standard library only, like ``orchd.cli``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from orchd.client import BadResponse, Client, DaemonUnreachable, Event, quoted

#: Seconds between attempts to reach a daemon that went away, growing to the last.
RECONNECT = (0.2, 0.5, 1.0, 2.0)


def cmd_events(client: Client, args: argparse.Namespace) -> int:
    """Follow ``GET /api/events`` for ever; after the daemon goes away, reconnect with the
    last event's id (``Last-Event-ID``) so nothing in between is missed."""
    process = None
    if args.process is not None:
        # The stream filters by a whole id: resolve a prefix first (the daemon does).
        process = client.get(f"/api/processes/{quoted(args.process)}")["id"]
    last_id: str | None = None
    failures = 0
    while True:
        try:
            for event in client.events(last_event_id=last_id, process=process):
                if event.event == "subscribed":
                    if failures:
                        resumed = f"orchd: reconnected, resuming after event {last_id}"
                        print(resumed, file=sys.stderr, flush=True)
                    elif last_id is None:
                        print("orchd: following the event stream", file=sys.stderr, flush=True)
                    failures = 0
                    continue
                if event.id is not None:
                    last_id = event.id
                _print_event(event, args.json)
            reason = "the daemon closed the event stream"
        except DaemonUnreachable as exc:
            if failures == 0 and last_id is None:
                raise  # never connected: the usual exit 3
            reason = str(exc)
        delay = RECONNECT[min(failures, len(RECONNECT) - 1)]
        if failures == 0:
            after = f" after event {last_id}" if last_id else ""
            print(f"orchd: {reason}; reconnecting to resume{after}", file=sys.stderr, flush=True)
        failures += 1
        time.sleep(delay)


def _print_event(event: Event, as_json: bool) -> None:
    data: Any = event.json()
    if as_json:
        line = data if isinstance(data, dict) else {"event": event.event, "data": event.data}
        print(json.dumps(line, separators=(",", ":")), flush=True)
        return
    if not isinstance(data, dict):
        print(f"{event.id or '-'}\t{event.event}\t{event.data}", flush=True)
        return
    if event.event == "reset":
        print(f"{event.id}\treset\t{data.get('reason', '')}", flush=True)
        return
    fields = [
        str(event.id or "-"),
        str(data.get("at") or ""),
        str(data.get("kind") or event.event),
        str(data.get("process_id") or ""),
        str(data.get("workflow") or ""),
        str(data.get("status") or ""),
    ]
    if data.get("step") is not None:
        fields += [repr(data["step"]), str(data.get("step_status") or "")]
    print("\t".join(fields), flush=True)


def cmd_gc(client: Client, args: argparse.Namespace) -> int:
    """Retention now: delete (``--dry-run``: count) finished processes older than it."""
    answer = client.post("/api/gc", {"dry_run": args.dry_run})
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{verb} {answer['processes']} processes ({answer['steps']} step records, "
        f"{answer['actions']} actions)"
    )
    return 0


def pages(client: Client, path: str, query: dict[str, Any], every: bool) -> dict[str, Any]:
    """One page, or with ``every`` all of them as one page with ``next_cursor`` null."""
    page = _page(client, path, query)
    items = list(page.get("items") or [])
    while every and page.get("next_cursor"):
        page = _page(client, path, query | {"cursor": page["next_cursor"]})
        items.extend(page.get("items") or [])
    return page | {"items": items, "next_cursor": None} if every else page


def _page(client: Client, path: str, query: dict[str, Any]) -> dict[str, Any]:
    page = client.get(path, query)
    if not isinstance(page, dict):
        raise BadResponse(f"the daemon's answer for {path} is not a page: {page!r}")
    return page


def more_hint(page: dict[str, Any], what: str) -> None:
    if page.get("next_cursor"):
        print(f"(more {what}: add --all)", file=sys.stderr)
