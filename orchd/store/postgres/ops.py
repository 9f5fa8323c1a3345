"""What PostgreSQL's writes do differently (the plans' dialect), and how events are stored.

The statements of each write operation are its plan (``orchd.store.plans``, shared with
SQLite). Here is only what PostgreSQL does its own way: one statement per batch for the
process rows (``unnest`` of arrays), row locks (``FOR UPDATE``, ``SKIP LOCKED``), a list as one
array parameter, and the ownership fence. Every process row a node writes is fenced by its
``owner``: a node whose lease lapsed and whose processes another node took over has its writes
refused (``LeaseLost``), so a step committed by the new owner is never overwritten by the old
one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec
from msgspec.structs import astuple

from orchd.errors import LeaseLost, StoreError
from orchd.model import Event
from orchd.store.base import ProcessTouch, ProcessWrite
from orchd.store.plans import Dialect, Fetch, Stmt
from orchd.store.postgres.nodes import fence

_encode = msgspec.json.Encoder().encode
Conn = asyncpg.Connection

#: The PostgreSQL type of each column a checkpoint writes. The statement below is built from
#: ``ProcessWrite``'s fields, so a field added there needs its column here (and in a
#: migration), nothing else.
COLUMN_TYPES = {
    "status": "text", "pc": "int", "seq": "int", "state": "jsonb", "current_step": "text",
    "error": "text", "form": "bytea", "callback_token": "text", "attempts": "int",
    "next_retry_at": "timestamptz", "subscription_id": "text", "step_key": "text",
    "step_occurrence": "int", "children_group": "int", "children_pending": "int",
    "updated_at": "timestamptz", "pk": "bigint",
}  # fmt: skip


def _update_processes() -> str:
    fields = ProcessWrite.__struct_fields__
    assert fields[-1] == "pk"
    sets = ", ".join(f"{f} = v.{f}" for f in fields[:-1])
    arrays = ", ".join(f"${i}::{COLUMN_TYPES[f]}[]" for i, f in enumerate(fields, 1))
    return (
        f"UPDATE processes AS p SET {sets} FROM unnest({arrays}) AS v({', '.join(fields)}) "
        f"WHERE p.rowid = v.pk AND {fence(f'${len(fields) + 1}')} RETURNING p.rowid"
    )


#: Fenced (``nodes.fence``): rows of processes this node no longer owns are left alone.
_UPDATE_PROCESSES = _update_processes()
#: A branch step's touch of its process row: never State, and the step count only goes up.
_TOUCH_PROCESSES = f"""UPDATE processes AS p SET status = v.status,
    seq = GREATEST(p.seq, v.seq), error = v.error, next_retry_at = v.next_retry_at,
    updated_at = v.updated_at
    FROM unnest($1::text[], $2::int[], $3::text[], $4::timestamptz[], $5::timestamptz[],
        $6::bigint[])
    AS v(status, seq, error, next_retry_at, updated_at, pk)
    WHERE p.rowid = v.pk AND {fence("$7")} RETURNING p.rowid"""


class PgDialect(Dialect):
    """The plans on PostgreSQL, for the node ``owner``: several nodes write one database."""

    lock_rows = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, owner: str) -> None:
        self.owner = owner

    def lease_lost(self, pid: str) -> StoreError:
        return LeaseLost(f"process {pid}: this node no longer holds its lease")

    def any_of(self, column: str, values: Sequence[Any], kind: str) -> tuple[str, tuple[Any, ...]]:
        return f"{column} = ANY(?::{kind}[])", (list(values),)

    def update_processes(self, writes: list[ProcessWrite]) -> Stmt:
        columns = list(zip(*(astuple(p) for p in writes), strict=True))
        return Stmt(_UPDATE_PROCESSES, (*columns, self.owner), Fetch.ROWS)

    def touch_processes(self, touches: list[ProcessTouch]) -> Stmt:
        columns = list(zip(*(astuple(t) for t in touches), strict=True))
        return Stmt(_TOUCH_PROCESSES, (*columns, self.owner), Fetch.ROWS)


async def store_events(conn: Conn, events: list[Event]) -> None:
    """Store events, giving them ids; the caller holds EVENTS_LOCK (ids in commit order)."""
    if not events:
        return
    ids = [
        r[0]
        for r in await conn.fetch(
            "SELECT nextval('events_id_seq') FROM generate_series(1, $1)", len(events)
        )
    ]
    ids.sort()
    for event, eid in zip(events, ids, strict=True):
        event.id = eid  # the writer owns these until they are announced
    await conn.execute(
        "INSERT INTO events (id, process_id, data) "
        "SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[])",
        ids,
        [e.process_id for e in events],
        [_encode(e) for e in events],
    )
