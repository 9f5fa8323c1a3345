"""This engine as one node of several on a shared database (PostgreSQL, README "Scaling out").

A node keeps its lease (renewed by the store's keeper thread, beside the event loop), and sweeps
now and then for work nobody does: created or running processes of a node whose lease lapsed (it
continues them from their last committed step, as a restart would) and timers of such a node that
came due (a retry, a callback's deadline). A message for a process another live node owns is
mailed to that node, which hands it to its actor and mails the answer back; a message for a
process nobody owns makes it ours.

A node starts steps only while its lease holds by a margin (``orchd.engine.lease``). When the
lease is lost (the loop was blocked for a whole ``lease_timeout``, or the database was out of
reach until it lapsed) the node knows it: it says so in the log and in ``/api/health``, drops
its actors (what they commit is refused anyway: the fence is on its incarnation), rejoins as a
new incarnation and continues the processes that are still its own from their last commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec

from orchd import errors
from orchd.engine import messages
from orchd.engine.lease import Gate
from orchd.errors import LeaseLost, OrchdError, StoreError
from orchd.model import ACTIVE, Event, ProcessStatus
from orchd.store.cluster import ClusterStore, Mail, NodeInfo

if TYPE_CHECKING:
    from orchd.engine.routing import Local

log = logging.getLogger("orchd.engine.cluster")

#: Processes claimed per sweep query.
TAKE_BATCH = 1000
#: Seconds a due timer is left to its owner before another node fires it.
TIMER_GRACE = 2.0


class Answer(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a node answers to a mailed request."""

    value: Any = None
    #: The error's class in ``orchd.errors`` and its detail (and a form's errors).
    error: str | None = None
    detail: str = ""
    errors: list[dict[str, Any]] = []
    #: The process has another owner now: ask that node instead.
    moved: str | None = None


_encode = msgspec.json.Encoder().encode
_decode_message = msgspec.json.Decoder(messages.Message).decode
_decode_answer = msgspec.json.Decoder(Answer).decode


def _raise(answer: Answer) -> None:
    kind = getattr(errors, answer.error or "", None)
    if isinstance(kind, type) and issubclass(kind, errors.FormValidationError):
        raise kind(answer.detail, answer.errors)
    if isinstance(kind, type) and issubclass(kind, OrchdError):
        raise kind(answer.detail)
    raise OrchdError(answer.detail or "the owning node failed")


class Node:
    """The engine's part in a cluster: lease, sweeps, mail."""

    def __init__(self, engine: Local, store: ClusterStore, lease_timeout: float) -> None:
        self.engine = engine
        self.store = store
        self.lease_timeout = lease_timeout
        self.node_id = store.node_id
        self.forwarded = 0
        self.served = 0
        #: Set by ``start``: the gate steps pass, over the lease as the keeper renews it.
        self.gate: Gate | None = None
        #: Times the lease was lost and the node rejoined.
        self.rejoined = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._rejoining: asyncio.Task[None] | None = None

    async def start(self) -> None:
        lease = self.store.keep_lease(self._told)
        # Within this margin of lapsing no step starts: it waits for the next renewal.
        self.gate = Gate(self.engine, lease, self.lease_timeout / 4)
        self.store.on_mail(self._serve)

    def run(self) -> None:
        """Start the sweeps (once the engine recovered its own work)."""
        self._tasks = [asyncio.create_task(self._sweep(), name="orchd takeover")]

    async def stop(self) -> None:
        """Take nothing more over (the engine is stopping); the lease is still renewed while
        running steps finish."""
        await self._cancel(self._tasks)
        self._tasks = []

    async def leave(self) -> None:
        """Hand our processes back (their actors are stopped): others continue them at once."""
        await self._cancel(self._tasks)
        self._tasks = []
        if self._rejoining is not None:
            await self._cancel([self._rejoining])
            self._rejoining = None
        if self.gate is not None:
            self.gate.close(self.engine)
        await self.store.leave()

    # -- the lease ------------------------------------------------------------------------

    def _told(self) -> None:
        """The keeper renewed the lease, or found it lost (called on the loop)."""
        gate = self.gate
        if gate is None:
            return
        lost = gate.lease.lost
        if lost is not None and gate.lost is None:
            gate.lost = lost
            log.error(
                "node=%s lost its lease (%s): it starts nothing more, drops what it runs and "
                "rejoins as a new incarnation",
                self.node_id,
                lost,
            )
            self._rejoining = asyncio.create_task(self._rejoin(gate), name="orchd rejoin")
        gate.changed()

    async def _rejoin(self, gate: Gate) -> None:
        # What the actors would still commit is refused (the fence is on the incarnation);
        # dropped, they start nothing more, and their processes go on from their last commit.
        await gate.drop()
        while True:
            try:
                await self.store.rejoin()
                gate.lease = self.store.keep_lease(self._told)
                rows = await self.store.active_processes()
                break
            except StoreError as exc:
                log.warning("node=%s rejoining failed, trying again: %s", self.node_id, exc)
                await asyncio.sleep(self.lease_timeout / 3)
        self.rejoined += 1
        gate.lost = None
        gate.changed()
        log.warning(
            "node=%s rejoined as a new incarnation; it continues %d processes",
            self.node_id,
            len(rows),
        )
        for row in rows:
            if not self.engine.runs(row.id):
                self.engine.post_local(row.id, messages.Run(), row)

    def _refuse_if_lost(self) -> None:
        if self.gate is not None and self.gate.lost is not None:
            raise LeaseLost(
                f"node {self.node_id} lost its lease ({self.gate.lost}) and is rejoining"
            )

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sweep(self) -> None:
        every = max(0.2, min(1.0, self.lease_timeout / 5))
        while True:
            await asyncio.sleep(every)
            try:
                await self.sweep()
            except (StoreError, OSError) as exc:
                log.warning("node=%s takeover sweep failed: %s", self.node_id, exc)
            except Exception:
                log.exception("node=%s takeover sweep failed", self.node_id)

    async def sweep(self) -> None:
        engine = self.engine
        if not engine.accepting or self.gate is None or not self.gate.open:
            return  # a node whose lease is in doubt takes nothing over
        while True:
            claim = await self.store.take_over(TAKE_BATCH)
            for row in claim.rows:
                if not engine.runs(row.id):
                    engine.post_local(row.id, messages.Run(), row)
            if claim.taken_over:
                log.warning(
                    "node=%s took over %d processes of nodes whose lease lapsed",
                    self.node_id,
                    claim.taken_over,
                )
            if len(claim.rows) < TAKE_BATCH:
                break
        for pid, status, digest in await self.store.overdue(TIMER_GRACE):
            if status == ProcessStatus.WAITING:
                engine.send(pid, messages.Retry(automatic=True))
            elif digest:
                engine.send(pid, messages.Expire(digest=digest))
            else:
                # A fork's branch waits for a callback with a deadline (README "Parallel branches").
                engine.send(pid, messages.Retry(automatic=True))

    async def live_nodes(self) -> list[NodeInfo]:
        """The nodes whose lease holds; raises ``LeaseLost`` while this node's is lost (health
        says so)."""
        self._refuse_if_lost()
        return await self.store.live_nodes()

    # -- routing --------------------------------------------------------------------------

    async def owner(self, pid: str) -> str | None:
        """None when the process is ours now (or does not exist); else its live owner.
        Raises ``LeaseLost`` while this node's lease is lost: it claims nothing then."""
        self._refuse_if_lost()
        return await self.store.claim_process(pid)

    async def forward(self, owner: str, pid: str, message: messages.Message) -> Any:
        """Mail ``message`` to the node that owns ``pid`` and answer (or raise) what it did."""
        deadline = time.monotonic() + 2 * self.lease_timeout + 5
        body = _encode(message)
        while True:
            self.forwarded += 1
            raw = await self.store.mail(owner, pid, body, self.lease_timeout)
            if raw is not None:
                answer = _decode_answer(raw)
                if answer.moved is None:
                    if answer.error is not None:
                        _raise(answer)
                    return answer.value
            if time.monotonic() > deadline:
                raise StoreError(f"process {pid}: its node {owner} does not answer")
            # Moved, or no answer (its node died): whoever owns it now, maybe us.
            found = await self.owner(pid)
            if found is None:
                return await self.engine.ask_local(pid, message)
            owner = found

    async def _serve(self, mail: Mail) -> bytes:
        self.served += 1
        try:
            message = _decode_message(mail.body)
            owner = await self.owner(mail.process_id)
            if owner is not None:
                return _encode(Answer(moved=owner))
            value = await self.engine.ask_local(mail.process_id, message)
            return _encode(Answer(value=value))
        except errors.FormValidationError as exc:
            return _encode(
                Answer(error=type(exc).__name__, detail=exc.detail, errors=list(exc.errors))
            )
        except OrchdError as exc:
            return _encode(Answer(error=type(exc).__name__, detail=exc.detail))
        except Exception as exc:
            log.exception("node=%s request for process %s failed", self.node_id, mail.process_id)
            return _encode(Answer(error="OrchdError", detail=f"internal error: {exc!r}"))

    # -- waiting for processes that run elsewhere -----------------------------------------

    def observe(self, events: list[Event]) -> None:
        """Events of every node: a process another node runs ends here too for ``wait``."""
        for event in events:
            # A process running here wakes its waiters itself, once its actor has taken
            # the commit in (metrics, callbacks): only other nodes' processes end here.
            if (
                event.kind == "process"
                and event.status not in ACTIVE
                and not self.engine.runs(event.process_id)
            ):
                self.engine.wake_waiters(event.process_id)

    def counters(self) -> dict[str, float]:
        counts: dict[str, float] = {k: float(v) for k, v in self.store.counters().items()}
        counts["forwarded"] = float(self.forwarded)
        counts["served"] = float(self.served)
        counts["lease_until"] = self.gate.lease.until if self.gate is not None else 0.0
        return counts
