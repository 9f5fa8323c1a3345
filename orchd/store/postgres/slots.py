"""The table of resource slots on PostgreSQL (README "Limits on shared resources"; see
``orchd.store.slots``).

Every transaction takes ``SLOTS_LOCK`` first, so the engine's decision over the rows it read
holds until it commits. Times are the database's clock. A node whose request another node
granted hears it by a NOTIFY on its own channel, sent at that commit, naming the requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg

from orchd.errors import StoreError
from orchd.store.postgres.nodes import NOW
from orchd.store.postgres.schema import SLOTS_LOCK
from orchd.store.slots import Slot, SlotRow

log = logging.getLogger("orchd.store.slots")

_DB_ERRORS = (asyncpg.PostgresError, OSError, asyncpg.InterfaceError)
_ROW = "request, resource, key, held, process_id, step, node, since, incarnation"
#: Slots of requests whose node is not alive in this very life (its incarnation).
_DEAD = f"""NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = s.node
              AND n.incarnation = s.incarnation AND n.lease_until > {NOW})"""
#: Longest NOTIFY payload we send (PostgreSQL's cap is 8000 bytes).
_PAYLOAD = 7000


def channel(node: str) -> str:
    """The LISTEN channel where ``node`` hears of its granted requests."""
    return "orchd_slots_" + hashlib.sha1(node.encode()).hexdigest()[:24]


def _row(record: Any) -> SlotRow:
    request, resource, key, held, pid, step, node, since, incarnation = record
    return SlotRow(
        request=request,
        resource=resource,
        key=key,
        held=held,
        process_id=pid,
        step=step,
        node=node,
        since=since,
        incarnation=incarnation,
    )


def _keys(keys: Sequence[Slot]) -> tuple[list[str], list[str]]:
    return [r for r, _ in keys], [k for _, k in keys]


def _slots(records: Sequence[Any]) -> list[Slot]:
    return [(r, k) for r, k in records]


class PgSlotTx:
    """One transaction on the table, under ``SLOTS_LOCK``."""

    def __init__(self, conn: Any, node: str, incarnation: str, now: float) -> None:
        self.conn = conn
        self.node = node
        self.incarnation = incarnation
        self.now = now

    async def insert(self, requests: Sequence[tuple[str, str, tuple[Slot, ...]]]) -> list[int]:
        numbers = await self.conn.fetchval(
            "SELECT array_agg(nextval('resource_requests') ORDER BY i) "
            "FROM generate_series(1, $1) AS i",
            len(requests),
        )
        numbers = sorted(numbers)
        cols: tuple[list[Any], ...] = ([], [], [], [], [])
        for number, (pid, step, slots) in zip(numbers, requests, strict=True):
            for resource, key in slots:
                for col, value in zip(cols, (number, resource, key, pid, step), strict=True):
                    col.append(value)
        await self.conn.execute(
            f"""INSERT INTO resource_slots
                    (request, resource, key, process_id, step, node, incarnation, since)
                SELECT r, res, k, p, st, $6, $7, {NOW}
                FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])
                    AS u(r, res, k, p, st)""",
            *cols,
            self.node,
            self.incarnation,
        )
        return [int(n) for n in numbers]

    async def delete(self, requests: Sequence[int]) -> list[Slot]:
        return _slots(
            await self.conn.fetch(
                "DELETE FROM resource_slots WHERE request = ANY($1::bigint[]) "
                "RETURNING resource, key",
                list(requests),
            )
        )

    async def delete_own(self) -> list[Slot]:
        return _slots(
            await self.conn.fetch(
                "DELETE FROM resource_slots WHERE node = $1 AND incarnation = $2 "
                "RETURNING resource, key",
                self.node,
                self.incarnation,
            )
        )

    async def delete_dead(self) -> list[Slot]:
        found = _slots(
            await self.conn.fetch(
                f"DELETE FROM resource_slots s WHERE {_DEAD} RETURNING resource, key"
            )
        )
        if found:
            log.info("freed %d resource slots of nodes whose lease lapsed", len(found))
        # Rates long past are no longer of use to anyone.
        await self.conn.execute(
            f"DELETE FROM resource_rates WHERE next_at < {NOW} - interval '1 minute'"
        )
        return found

    async def held(self, requests: Sequence[int]) -> list[int]:
        rows = await self.conn.fetch(
            "SELECT DISTINCT request FROM resource_slots "
            "WHERE request = ANY($1::bigint[]) AND held",
            list(requests),
        )
        return [int(r[0]) for r in rows]

    async def rows(self, keys: Sequence[Slot]) -> list[SlotRow]:
        resources, names = _keys(keys)
        records = await self.conn.fetch(
            f"""SELECT {_ROW} FROM resource_slots
                JOIN unnest($1::text[], $2::text[]) AS u(res, k)
                  ON resource = u.res AND key = u.k
                ORDER BY request""",
            resources,
            names,
        )
        return [_row(r) for r in records]

    async def rows_of(self, requests: Sequence[int]) -> list[SlotRow]:
        records = await self.conn.fetch(
            f"SELECT {_ROW} FROM resource_slots WHERE request = ANY($1::bigint[]) ORDER BY request",
            list(requests),
        )
        return [_row(r) for r in records]

    async def rates(self, keys: Sequence[Slot]) -> dict[Slot, float]:
        resources, names = _keys(keys)
        records = await self.conn.fetch(
            """SELECT resource, key, next_at FROM resource_rates
               JOIN unnest($1::text[], $2::text[]) AS u(res, k)
                 ON resource = u.res AND key = u.k""",
            resources,
            names,
        )
        return {(r, k): float(at) for r, k, at in records}

    async def grant(self, requests: Sequence[int]) -> None:
        await self.conn.execute(
            f"UPDATE resource_slots SET held = true, since = {NOW} "
            "WHERE request = ANY($1::bigint[])",
            list(requests),
        )

    async def set_rates(self, rates: dict[Slot, float]) -> None:
        resources, names = _keys(list(rates))
        await self.conn.execute(
            """INSERT INTO resource_rates (resource, key, next_at)
               SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
               ON CONFLICT (resource, key) DO UPDATE SET next_at = excluded.next_at""",
            resources,
            names,
            list(rates.values()),
        )

    async def notify(self, node: str, incarnation: str, requests: Sequence[int]) -> None:
        # The payload names the node's life: a channel is the database's, and another schema
        # (or a previous life) may have a node of the same name with requests of these numbers.
        numbers = [str(n) for n in requests]
        while numbers:
            text = incarnation + ":"
            while numbers and len(text) < _PAYLOAD:
                text += numbers.pop() + ","
            await self.conn.execute("SELECT pg_notify($1, $2)", channel(node), text)


class PgSlots:
    """The table of slots as one node of the cluster uses it."""

    def __init__(self, node_id: str, incarnation: str) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        self.pool: asyncpg.Pool | None = None
        self._callback: Callable[[list[int]], None] | None = None

    @property
    def channel(self) -> str:
        return channel(self.node_id)

    def on_granted(self, callback: Callable[[list[int]], None]) -> None:
        self._callback = callback

    def notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        """A NOTIFY on this node's channel: requests of ours another node granted."""
        if self._callback is None or not isinstance(payload, str):
            return
        life, _, text = payload.partition(":")
        if life != self.incarnation:
            return
        numbers = [int(part) for part in text.split(",") if part.isdigit()]
        if numbers:
            self._callback(numbers)

    def _ready(self) -> asyncpg.Pool:
        if self.pool is None:
            raise StoreError("the store is closed")
        return self.pool

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgSlotTx]:
        try:
            async with self._ready().acquire() as conn, conn.transaction():
                now = await conn.fetchval(
                    f"SELECT {NOW} FROM (SELECT pg_advisory_xact_lock($1)) AS locked",
                    SLOTS_LOCK,
                )
                yield PgSlotTx(conn, self.node_id, self.incarnation, float(now))
        except _DB_ERRORS as exc:
            raise StoreError(f"resource slots: {exc}") from None

    async def blocked(self, pids: Sequence[str]) -> dict[str, tuple[str, str, float]]:
        try:
            records = await self._ready().fetch(
                """SELECT DISTINCT ON (process_id) process_id, resource, key, since
                   FROM resource_slots WHERE process_id = ANY($1::text[]) AND NOT held
                   ORDER BY process_id, request, resource, key""",
                list(pids),
            )
        except _DB_ERRORS as exc:
            raise StoreError(f"resource slots: {exc}") from None
        return {p: (r, k, float(since)) for p, r, k, since in records}

    async def rows(self) -> list[SlotRow]:
        try:
            records = await self._ready().fetch(
                f"SELECT {_ROW} FROM resource_slots ORDER BY resource, key, request"
            )
        except _DB_ERRORS as exc:
            raise StoreError(f"resource slots: {exc}") from None
        return [_row(r) for r in records]
