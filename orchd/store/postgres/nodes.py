"""Nodes on PostgreSQL: leases, claims and the mail between nodes.

Every time here is the database's clock, so nodes whose clocks disagree still agree on whose
lease has lapsed. A lease is a node's (one row renewed per heartbeat, not one per process): a
node owns the processes whose ``owner`` names it for as long as its own lease lasts. Claims are
``UPDATE ... WHERE`` the owner is absent, dead or us, over rows picked ``FOR UPDATE SKIP
LOCKED``: two nodes claiming at once each get different rows, and a row being checkpointed by
its live owner is never taken from under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Coroutine
from typing import Any

import asyncpg

from orchd.store.cluster import Claim, Mail, NodeInfo, Postman
from orchd.store.sqlreads import SELECT_PROCESS, process_row

log = logging.getLogger("orchd.store.nodes")

#: The database's clock (a ``timestamptz``, as every time column is since schema version 7).
NOW = "clock_timestamp()"


def seconds(param: str) -> str:
    """An interval of ``param`` seconds (a float placeholder), to add to or take from a time."""
    return f"make_interval(secs => {param})"


def seconds_until(at: str) -> str:
    """How many seconds from now until ``at`` (negative once it passed), as a float."""
    return f"extract(epoch FROM {at} - {NOW})::float8"


#: Nodes whose lease has not lapsed.
LIVE = f"SELECT node_id FROM nodes WHERE lease_until > {NOW}"


#: The writer's connection names the incarnation of its node that writes (a setting of the
#: session, set once per connection and incarnation, so the statements keep their parameters).
SET_INCARNATION = "SELECT set_config('orchd.incarnation', $1, false)"


def fence(owner: str) -> str:
    """The ownership fence of a process row ``p`` (``owner``: the placeholder of the node id),
    checked in the statement that commits: the row is this node's, and the lease of this very
    incarnation of it holds now. A node whose lease lapsed, and a stale daemon with the same
    node id, commit nothing; a connection that never named its incarnation neither. The
    lease is read once per statement (not per row: the subquery names the parameter, not the
    row's owner), which keeps a batch's update within about a tenth of an unfenced one."""
    return (
        f"p.owner = {owner} AND EXISTS (SELECT 1 FROM nodes AS n WHERE n.node_id = {owner} "
        "AND n.incarnation = current_setting('orchd.incarnation', true) "
        f"AND n.lease_until > {NOW})"
    )


def _takeover_actions(claimed: str) -> str:
    """A CTE's INSERT of a ``takeover`` action (actor ``node:<us>``, ``$1``) for each row of
    ``claimed`` (``rowid, was, status, current_step``) that another node owned and that has
    not finished: that node's lease lapsed, and the step the process stood at runs again (a
    waiting one goes on there)."""
    return f"""INSERT INTO actions (process, at, action, actor, detail)
        SELECT rowid, {NOW}, 'takeover', 'node:' || $1,
            format('node %s''s lease lapsed; ', was) || CASE
                WHEN current_step IS NULL THEN 'it starts from its first step'
                WHEN status IN ('created', 'running')
                    THEN format('step %L runs again', current_step)
                ELSE format('it goes on at step %L', current_step) END
        FROM {claimed} WHERE was IS NOT NULL AND was <> $1
            AND status NOT IN ('completed', 'aborted')"""


def channel(node: str) -> str:
    """The LISTEN channel of a node (an identifier, whatever the node id holds)."""
    return "orchd_node_" + hashlib.sha1(node.encode()).hexdigest()[:24]


Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


async def register(conn: Conn, node: str, incarnation: str, lease: float) -> float:
    """Enter this node; answers how long a live previous incarnation of the same node id still
    holds its lease (0: none, we are in). Its processes become ours once it lapses."""
    row = await conn.fetchrow(
        f"""INSERT INTO nodes AS n (node_id, incarnation, started_at, heartbeat_at, lease_until)
            VALUES ($1, $2, {NOW}, {NOW}, {NOW} + {seconds("$3")})
            ON CONFLICT (node_id) DO UPDATE SET incarnation = excluded.incarnation,
                started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
                lease_until = excluded.lease_until
                WHERE n.lease_until <= {NOW} OR n.incarnation = excluded.incarnation
            RETURNING 0::float8""",
        node,
        incarnation,
        lease,
    )
    if row is not None:
        return 0.0
    left = await conn.fetchval(
        f"SELECT {seconds_until('lease_until')} FROM nodes WHERE node_id = $1", node
    )
    return max(0.0, float(left or 0.0)) + 0.05


async def live_nodes(pool: asyncpg.Pool) -> list[NodeInfo]:
    rows = await pool.fetch(
        f"SELECT node_id, started_at, heartbeat_at, lease_until FROM nodes "
        f"WHERE lease_until > {NOW} ORDER BY node_id"
    )
    return [NodeInfo(node_id=n, started_at=s, heartbeat_at=h, lease_until=u) for n, s, h, u in rows]


async def claim_process(pool: asyncpg.Pool, node: str, pid: str) -> str | None:
    row = await pool.fetchrow(
        f"""WITH o AS (SELECT rowid, owner AS was FROM processes WHERE id = $2),
            c AS (UPDATE processes AS p SET owner = $1 FROM o WHERE p.rowid = o.rowid
                AND (p.owner IS NULL OR p.owner = $1 OR p.owner NOT IN ({LIVE}))
                RETURNING p.rowid, o.was, p.status, p.current_step),
            a AS ({_takeover_actions("c")})
            SELECT (SELECT count(*) FROM c), (SELECT owner FROM processes WHERE id = $2)""",
        node,
        pid,
    )
    assert row is not None
    claimed, owner = row
    if claimed or owner is None or owner == node:
        return None
    return str(owner)


async def take_over(pool: asyncpg.Pool, node: str, limit: int, mine: bool) -> Claim:
    """Claim active processes of dead nodes (and ownerless ones; with ``mine``, also those a
    previous incarnation of this node id left)."""
    rows = await pool.fetch(
        f"""WITH c AS (
                SELECT rowid, owner FROM processes
                WHERE status IN ('created', 'running') AND NOT held
                  AND (owner IS NULL OR ($3 AND owner = $1)
                       OR (owner <> $1 AND owner NOT IN ({LIVE})))
                ORDER BY rowid LIMIT $2 FOR UPDATE SKIP LOCKED)
            , u AS (UPDATE processes AS p SET owner = $1 FROM c WHERE p.rowid = c.rowid
                RETURNING p.rowid, c.owner AS was, p.status, p.current_step)
            , a AS ({_takeover_actions("u")})
            SELECT rowid, was FROM u""",
        node,
        limit,
        mine,
    )
    if not rows:
        return Claim(rows=[])
    taken = sum(1 for _, previous in rows if previous is not None and previous != node)
    if taken:
        await pool.execute(
            "UPDATE nodes SET takeovers = takeovers + $2 WHERE node_id = $1", node, taken
        )
    full = await pool.fetch(
        f"{SELECT_PROCESS} WHERE rowid = ANY($1::bigint[]) ORDER BY rowid", [r[0] for r in rows]
    )
    return Claim(rows=[process_row(r) for r in full], taken_over=taken)


async def overdue(pool: asyncpg.Pool, node: str, grace: float) -> list[tuple[str, str, str | None]]:
    rows = await pool.fetch(
        f"""SELECT id, status, callback_token FROM processes
            WHERE status IN ('waiting', 'awaiting_callback') AND next_retry_at IS NOT NULL
              AND next_retry_at < {NOW} - {seconds("$2")}
              AND (owner IS NULL OR (owner <> $1 AND owner NOT IN ({LIVE})))
            ORDER BY next_retry_at LIMIT 500""",
        node,
        grace,
    )
    return [(i, s, t) for i, s, t in rows]


async def leave(pool: asyncpg.Pool, node: str, incarnation: str) -> None:
    """Release this node's processes and lease (a clean stop)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE processes SET owner = NULL WHERE owner = $1", node)
        await conn.execute(
            "DELETE FROM nodes WHERE node_id = $1 AND incarnation = $2", node, incarnation
        )


class Mailbox:
    """Requests between nodes: a row in ``node_messages`` and a NOTIFY to the addressee.

    The row carries the body (a NOTIFY payload is capped at 8000 bytes; a form answer may be
    larger), the addressee writes its answer into the row and notifies the sender back.
    """

    #: How often the box is looked at without a notification (a lost LISTEN connection).
    POLL = 1.0

    def __init__(self, pool: asyncpg.Pool, node: str) -> None:
        self.pool = pool
        self.node = node
        self.postman: Postman | None = None
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._serving: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(self, to_node: str, pid: str, body: bytes, patience: float) -> bytes | None:
        async with self.pool.acquire() as conn, conn.transaction():
            mid = await conn.fetchval(
                f"""INSERT INTO node_messages (to_node, from_node, process_id, body, created_at)
                    VALUES ($1, $2, $3, $4, {NOW}) RETURNING id""",
                to_node,
                self.node,
                pid,
                body,
            )
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            self._waiting[mid] = fut
            await conn.execute("SELECT pg_notify($1, $2)", channel(to_node), f"req:{mid}")
        try:
            async with asyncio.timeout(patience):
                return await fut
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(mid, None)
            with contextlib.suppress(asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                await self.pool.execute("DELETE FROM node_messages WHERE id = $1", mid)

    def notified(self, payload: str) -> None:
        kind, _, text = payload.partition(":")
        if not text.isdigit():
            return
        mid = int(text)
        if kind == "req":
            self._spawn(self._serve(mid))
        elif kind == "ans" and mid in self._waiting:
            self._spawn(self._collect(mid))

    async def poll(self) -> None:
        """Look for requests and answers a lost notification left behind."""
        rows = await self.pool.fetch(
            "SELECT id, to_node, answer IS NOT NULL FROM node_messages "
            "WHERE (to_node = $1 AND answer IS NULL) OR (from_node = $1 AND answer IS NOT NULL)",
            self.node,
        )
        for mid, to_node, answered in rows:
            if to_node == self.node and not answered:
                self._spawn(self._serve(mid))
            elif answered and mid in self._waiting:
                self._spawn(self._collect(mid))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, mid: int) -> None:
        if mid in self._serving or self.postman is None:
            return
        self._serving.add(mid)
        try:
            row = await self.pool.fetchrow(
                "SELECT process_id, body, from_node FROM node_messages "
                "WHERE id = $1 AND to_node = $2 AND answer IS NULL",
                mid,
                self.node,
            )
            if row is None:
                return
            answer = await self.postman(Mail(id=mid, process_id=row[0], body=row[1]))
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE node_messages SET answer = $2 WHERE id = $1", mid, answer
                )
                await conn.execute("SELECT pg_notify($1, $2)", channel(row[2]), f"ans:{mid}")
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            log.warning("request %d from another node not answered: %s", mid, exc)
        finally:
            self._serving.discard(mid)

    async def _collect(self, mid: int) -> None:
        fut = self._waiting.get(mid)
        if fut is None or fut.done():
            return
        answer = await self.pool.fetchval("SELECT answer FROM node_messages WHERE id = $1", mid)
        if answer is not None and not fut.done():
            fut.set_result(bytes(answer))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for fut in self._waiting.values():
            if not fut.done():
                fut.cancel()
