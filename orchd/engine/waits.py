"""The callback waits of the processes this engine runs, by token digest: the one place an
answer is routed by and held in (README "Guarantees").

A callback action hands its token out while it runs, so an answer can arrive before the wait it
answers has begun (the action still runs, or its commit is not done): the wait holds that
answer until its wait step takes it. A wait ends once, by ``end``, whatever ends it (an answer,
a failed action, an expiry, a skip, an abort, a shutdown, its actor retiring); a held answer is
then answered at once, so no sender waits for ever, on the process line or in a branch.

Only the digest is kept, never the token (README "Threat model"). A wait of a process whose
actor has retired is found in the database instead (``Store.process_waiting_for``).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from orchd.engine.messages import Envelope, respond
from orchd.errors import CallbackNotFound, OrchdError, ShuttingDown

if TYPE_CHECKING:
    from orchd.engine.branches import Branch


class End(enum.Enum):
    """Why a wait ends (what a held answer is told)."""

    #: Its answer is taken: the wait step commits it and answers its sender.
    ANSWERED = "answered"
    #: The action that handed the token out raised: the wait never begins.
    FAILED = "failed"
    #: Its deadline passed.
    EXPIRED = "expired"
    #: Someone skipped the step, or the action ran again with a new token.
    SKIPPED = "skipped"
    ABORTED = "aborted"
    #: The engine stops: the wait stands in the database, the sender may send again.
    SHUTDOWN = "shutdown"
    #: Its actor retired: the wait, if committed, is found in the database from now on.
    RETIRED = "retired"


class Wait:
    """One wait on a callback token: whose it is, and an answer held for it."""

    __slots__ = ("digest", "pid", "branch", "answer", "taken")

    def __init__(self, digest: str, pid: str, branch: Branch | None) -> None:
        self.digest = digest
        self.pid = pid
        #: The branch that waits, None on the process line.
        self.branch = branch
        #: An answer that came before the wait step took it.
        self.answer: Envelope | None = None
        #: An answer was accepted for it: a second one (a sender's retry) finds the token used.
        self.taken = False


class Waits:
    """Every wait this engine holds in memory, by token digest."""

    __slots__ = ("_by_digest", "_by_pid")

    def __init__(self) -> None:
        self._by_digest: dict[str, Wait] = {}
        self._by_pid: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._by_digest)

    def __contains__(self, digest: object) -> bool:
        return digest in self._by_digest

    def begin(self, digest: str, pid: str, branch: Branch | None = None) -> None:
        """A callback action handed out the token of this digest: answers route here. A wait
        begun again (its process loaded again) keeps an answer it holds."""
        wait = self._by_digest.get(digest)
        if wait is not None and wait.pid == pid:
            wait.branch = branch
            return
        self._by_digest[digest] = Wait(digest, pid, branch)
        self._by_pid.setdefault(pid, set()).add(digest)

    def of(self, digest: str | None) -> Wait | None:
        return None if digest is None else self._by_digest.get(digest)

    def pid_of(self, digest: str) -> str | None:
        wait = self._by_digest.get(digest)
        return None if wait is None else wait.pid

    def hold(self, digest: str, envelope: Envelope) -> None:
        """Keep an answer that came before its wait step: the step takes it (``take``)."""
        wait = self._by_digest[digest]
        wait.answer, wait.taken = envelope, True

    def take(self, digest: str | None) -> Envelope | None:
        """The answer held for the wait, now its wait step answers it."""
        wait = self.of(digest)
        if wait is None or wait.answer is None:
            return None
        answer, wait.answer = wait.answer, None
        return answer

    def held(self, pid: str) -> list[Wait]:
        """The process's waits that hold an answer."""
        found = (self._by_digest[d] for d in self._by_pid.get(pid, ()))
        return [w for w in found if w.answer is not None]

    def refuse_held(self, pid: str, error: BaseException) -> None:
        """Tell the sender of every answer the process's waits hold ``error``: its actor stops
        before a wait step took it. The waits stand (the sender may answer again)."""
        for wait in self.held(pid):
            answer, wait.answer, wait.taken = wait.answer, None, False
            assert answer is not None
            respond(answer, error=error)

    def end(self, digest: str | None, how: End) -> None:
        """The wait is over: its token routes here no more, and an answer it held is told."""
        wait = None if digest is None else self._by_digest.pop(digest, None)
        if wait is None:
            return
        digests = self._by_pid.get(wait.pid)
        if digests is not None:
            digests.discard(digest)
            if not digests:
                del self._by_pid[wait.pid]
        if wait.answer is not None:
            respond(wait.answer, error=refusal(how))

    def end_process(self, pid: str, how: End) -> None:
        """Every wait of the process is over (in memory: see ``End.RETIRED``)."""
        for digest in list(self._by_pid.get(pid, ())):
            self.end(digest, how)


def refusal(how: End) -> OrchdError:
    """What the sender of an answer a wait held is told when it ends without taking it."""
    if how is End.SHUTDOWN:
        return ShuttingDown("the engine is shutting down; send the callback again")
    return CallbackNotFound("no process waits for this callback token")


__all__ = ["End", "Wait", "Waits", "refusal"]
