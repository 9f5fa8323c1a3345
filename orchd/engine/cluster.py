"""This engine as one node of several on a shared database (PostgreSQL, README "Scaling out").

A node renews its lease with a heartbeat, and sweeps now and then for work nobody does: created
or running processes of a node whose lease lapsed (it continues them from their last committed
step, as a restart would) and timers of such a node that came due (a retry, a callback's
deadline). A message for a process another live node owns is mailed to that node, which hands
it to its actor and mails the answer back; a message for a process nobody owns makes it ours.
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
from orchd.errors import OrchdError, StoreError
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
        self.lease_until = 0.0
        self.forwarded = 0
        self.served = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._nodes: list[NodeInfo] = []

    async def start(self) -> None:
        self.lease_until = await self.store.heartbeat(self.lease_timeout)
        self.store.on_mail(self._serve)

    def run(self) -> None:
        """Start the heartbeat and the sweeps (once the engine recovered its own work)."""
        self._tasks = [
            asyncio.create_task(self._beat(), name="orchd lease"),
            asyncio.create_task(self._sweep(), name="orchd takeover"),
        ]

    async def stop(self) -> None:
        """Take nothing more over (the engine is stopping); the lease is still renewed while
        running steps finish."""
        await self._cancel(self._tasks[1:])
        self._tasks = self._tasks[:1]

    async def leave(self) -> None:
        """Hand our processes back (their actors are stopped): others continue them at once."""
        await self._cancel(self._tasks)
        self._tasks = []
        await self.store.leave()

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_timeout / 3)
            try:
                self.lease_until = await self.store.heartbeat(self.lease_timeout)
            except StoreError as exc:
                log.warning("node=%s lease not renewed: %s", self.node_id, exc)

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
        if not engine.accepting:
            return
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
        return await self.store.live_nodes()

    # -- routing --------------------------------------------------------------------------

    async def owner(self, pid: str) -> str | None:
        """None when the process is ours now (or does not exist); else its live owner."""
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
        counts["lease_until"] = self.lease_until
        return counts
