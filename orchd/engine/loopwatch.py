"""Notices workflow code that blocks the event loop, and says where it is stuck.

An ``async def`` step that calls something blocking (``time.sleep``, a synchronous HTTP
client) stalls every process of the daemon. The loop stamps a heartbeat; a small thread
checks the stamp and, when it is late, reads the loop thread's current stack, so the warning
can name the function and line that holds the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from types import FrameType

log = logging.getLogger("orchd.engine.loopwatch")

_OWN = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep,
)


def _culprit(frame: FrameType | None) -> str:
    """The innermost frame outside orchd and asyncio: where workflow code holds the loop."""
    innermost = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_OWN) and "site-packages" not in filename:
            return f"{frame.f_code.co_name} ({filename}:{frame.f_lineno})"
        innermost = innermost or f"{frame.f_code.co_name} ({filename}:{frame.f_lineno})"
        frame = frame.f_back
    return innermost or "unknown code"


class LoopWatch:
    """Warns once per stall longer than ``threshold`` seconds."""

    def __init__(self, threshold: float = 1.0) -> None:
        self.threshold = threshold
        self.stalls = 0
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._loop_thread = threading.get_ident()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        interval = self.threshold / 4

        def beat() -> None:
            self._beat = time.monotonic()
            self._handle = loop.call_later(interval, beat)

        beat()
        self._thread = threading.Thread(target=self._watch, name="orchd-loopwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        stalled_since: float | None = None
        while not self._stop.wait(self.threshold / 4):
            late = time.monotonic() - self._beat
            if late > self.threshold and stalled_since is None:
                stalled_since = self._beat
                self.stalls += 1
                where = _culprit(sys._current_frames().get(self._loop_thread))
                log.warning(
                    "event loop blocked for %.1f s by %s; every process waits: "
                    "use an async call or a sync step (it runs in a thread)",
                    late,
                    where,
                )
            elif late <= self.threshold and stalled_since is not None:
                log.warning("event loop free again after %.1f s", self._beat - stalled_since)
                stalled_since = None
