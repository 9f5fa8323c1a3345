"""The worker threads that run sync steps: a pool of the engine's own.

A sync step cannot be interrupted. When one passes its timeout, the engine stops waiting for it
(the step is recorded ``failed``) but its thread runs on: the call is *abandoned*. An abandoned
call gives its place in the pool back, so a few hung steps never stall every other process's
sync steps; the pool then runs up to ``size`` live calls beside at most ``size`` abandoned ones,
which ``/metrics`` counts. Threads are daemon threads: a hung step never keeps the interpreter
from exiting (the daemon's shutdown commits first).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any

_Item = tuple["concurrent.futures.Future[Any]", Callable[[], Any]]


class StepThreads:
    """Runs sync calls on at most ``size`` threads (plus those of abandoned calls)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("step_threads must be at least 1")
        self.size = size
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        #: Calls running on a thread, and calls queued that no thread has taken yet.
        self._busy = 0
        self._pending = 0
        #: Abandoned calls still running, and all calls ever abandoned.
        self.abandoned_running = 0
        self.abandoned_total = 0

    async def run(
        self,
        call: Callable[[], Any],
        on_abandon: Callable[[concurrent.futures.Future[Any]], None],
    ) -> Any:
        """Run ``call`` in a thread and return its result. If the caller stops waiting
        (cancelled: a timeout, a shutdown) while the call runs, the call is abandoned:
        ``on_abandon(future)`` is called now (the future completes when the call returns),
        and its thread is counted until then."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._submit(future, call)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.cancel():  # not started yet: nothing runs on
                raise
            self._abandon(future)
            on_abandon(future)
            raise

    def _submit(self, future: concurrent.futures.Future[Any], call: Callable[[], Any]) -> None:
        with self._lock:
            self._pending += 1
            idle = self._threads - self._busy
            live = self._threads - self.abandoned_running
            # Beside ``size`` live calls, at most ``size`` abandoned ones hold a thread.
            start = idle < self._pending and live < self.size and self._threads < 2 * self.size
            if start:
                self._threads += 1
        self._queue.put((future, call))
        if start:
            threading.Thread(target=self._work, name="orchd-step", daemon=True).start()

    def _abandon(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            if future.done():
                return
            self.abandoned_running += 1
            self.abandoned_total += 1

        def returned(_: concurrent.futures.Future[Any]) -> None:
            with self._lock:
                self.abandoned_running -= 1

        future.add_done_callback(returned)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                with self._lock:
                    self._threads -= 1
                return
            future, call = item
            with self._lock:
                self._pending -= 1
                self._busy += 1
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as exc:  # handed to the awaiting step, whatever it is
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            with self._lock:
                self._busy -= 1
                if self._threads - self.abandoned_running > self.size:
                    self._threads -= 1  # one too many since an abandoned call returned
                    return

    def close(self) -> None:
        """Let the threads end once they are idle; running calls finish on their own (their
        threads are daemons). Calls submitted later start threads anew."""
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._queue.put(None)
