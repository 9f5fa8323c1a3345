"""The worker threads that run sync steps: a pool of the engine's own.

A sync step cannot be interrupted. When one passes its timeout, the engine stops waiting for it
(the step is recorded ``failed``) but its thread runs on: the call is *abandoned*. An abandoned
call gives its place in the pool back, so a few hung steps never stall every other process's
sync steps; the pool then runs up to ``size`` live calls beside at most ``size`` abandoned ones,
which ``/metrics`` counts. Threads are daemon threads: a hung step never keeps the interpreter
from exiting (the daemon's shutdown commits first).

Results go back to the event loop in batches: a worker that finishes a call adds it to a list
and wakes the loop only when the list was empty, so thousands of short steps cost a handful of
wake-ups instead of one each (a thread hop is the whole cost of a trivial sync step).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

_PENDING, _RUNNING, _DONE, _CANCELLED = range(4)

log = logging.getLogger("orchd.engine")
#: The least time between two warnings that the pool is full.
WARN_EVERY = 60.0


class _Job:
    __slots__ = ("call", "future", "state", "result", "failed", "abandoned", "on_return")

    def __init__(self, call: Callable[[], Any], future: asyncio.Future[Any]) -> None:
        self.call = call
        self.future = future
        self.state = _PENDING
        self.result: Any = None
        self.failed = False
        self.abandoned = False
        #: Called on the loop when an abandoned call has returned at last.
        self.on_return: Callable[[], None] | None = None


class StepThreads:
    """Runs sync calls on at most ``size`` threads (plus those of abandoned calls)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("step_threads must be at least 1")
        self.size = size
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        #: Calls running on a thread, and calls queued that no thread has taken yet.
        self._busy = 0
        self._pending = 0
        #: Abandoned calls still running, and all calls ever abandoned.
        self.abandoned_running = 0
        self.abandoned_total = 0
        #: Calls that found every live thread busy and waited for one (a counter), and when
        #: that was last said in the log.
        self.queued_total = 0
        self._warned_at = -WARN_EVERY
        #: Finished calls waiting to be handed to the loop, and the loop to hand them to.
        self._finished: list[_Job] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(
        self, call: Callable[[], Any], on_abandon: Callable[[], Callable[[], None]]
    ) -> Any:
        """Run ``call`` in a thread and return its result. If the caller stops waiting
        (cancelled: a timeout, a shutdown) while the call runs, the call is abandoned:
        ``on_abandon()`` is called now and returns the callback to run (on the loop) when the
        call has returned; its thread is counted until then. The call runs in a copy of the
        caller's context (as ``asyncio.to_thread`` does): a step's trace reaches its thread."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        job = _Job(functools.partial(contextvars.copy_context().run, call), loop.create_future())
        self._submit(job)
        try:
            return await job.future
        except asyncio.CancelledError:
            with self._lock:
                if job.state == _PENDING:
                    job.state = _CANCELLED  # never started: nothing runs on
                elif job.state == _RUNNING:
                    job.abandoned = True
                    self.abandoned_running += 1
                    self.abandoned_total += 1
            if job.abandoned:
                job.on_return = on_abandon()
            raise

    def _submit(self, job: _Job) -> None:
        with self._lock:
            self._pending += 1
            idle = self._threads - self._busy
            live = self._threads - self.abandoned_running
            # Beside ``size`` live calls, at most ``size`` abandoned ones hold a thread.
            start = idle < self._pending and live < self.size and self._threads < 2 * self.size
            if start:
                self._threads += 1
            full = idle < self._pending and not start
            if full:
                self.queued_total += 1
        self._queue.put(job)
        if start:
            threading.Thread(target=self._work, name="orchd-step", daemon=True).start()
        if full:
            self._warn_full()

    @property
    def busy(self) -> int:
        """Calls running on a thread now (abandoned ones included)."""
        return self._busy

    def _warn_full(self) -> None:
        # Every sync step now waits for a thread: with no step_timeout, a sync call that hangs
        # holds its thread until it returns, and enough of them stop every sync step.
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY:
            return
        self._warned_at = now
        log.warning(
            "step threads full: %d sync calls run (step_threads = %d, %d of them abandoned), "
            "%d wait for a thread; a sync step that hangs holds its thread until it returns "
            "(step_timeout bounds it)",
            self._busy,
            self.size,
            self.abandoned_running,
            self._pending,
        )

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                with self._lock:
                    self._threads -= 1
                return
            with self._lock:
                self._pending -= 1
                if job.state == _CANCELLED:
                    continue
                job.state = _RUNNING
                self._busy += 1
            try:
                job.result = job.call()
            except BaseException as exc:  # handed to the awaiting step, whatever it is
                job.result, job.failed = exc, True
            with self._lock:
                job.state = _DONE
                self._busy -= 1
                if job.abandoned:
                    self.abandoned_running -= 1
                wake = not self._finished
                self._finished.append(job)
                shrink = self._threads - self.abandoned_running > self.size
                if shrink:
                    self._threads -= 1  # one too many since an abandoned call returned
            if wake and self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:
                    pass  # the loop is closed: nobody waits for these any more
            if shrink:
                return

    def _deliver(self) -> None:
        """On the loop: hand every finished call's result to its step."""
        with self._lock:
            finished, self._finished = self._finished, []
        for job in finished:
            if job.abandoned:
                if job.on_return is not None:
                    job.on_return()
                continue
            if job.future.done():
                continue
            if job.failed:
                job.future.set_exception(job.result)
            else:
                job.future.set_result(job.result)

    def close(self) -> None:
        """Let the threads end once they are idle; running calls finish on their own (their
        threads are daemons). Calls submitted later start threads anew."""
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._queue.put(None)
