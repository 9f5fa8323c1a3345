"""The SQLite store itself: the writer thread and the readers of one file, opened together."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from typing import Any

from orchd.errors import StoreError
from orchd.model import Event
from orchd.store.base import Op, StoreStats
from orchd.store.sqlite.reads import Reads
from orchd.store.sqlite.schema import connect, migrate
from orchd.store.sqlite.writer import Writer

SYNCHRONOUS = ("FULL", "NORMAL", "OFF")


class SqliteStore(Reads):
    """The database, opened once per engine (implements ``orchd.store.base.Store``)."""

    def __init__(self, path: str, *, synchronous: str = "FULL", keep_events: int = 100_000) -> None:
        super().__init__()
        self.keep_events = keep_events
        self._event_sink: Callable[[list[Event]], None] | None = None
        if synchronous not in SYNCHRONOUS:
            raise ValueError("synchronous must be FULL or NORMAL")
        self._tmpdir: str | None = None
        if path == ":memory:":
            # The reader and the writer need one database between them, and the engine should
            # behave as it does on a file (WAL, group commit): use a private temporary file.
            self._tmpdir = tempfile.mkdtemp(prefix="orchd-")
            path = os.path.join(self._tmpdir, "orchd.db")
            synchronous = "OFF" if synchronous == "FULL" else synchronous
        self.path = path
        self.synchronous = synchronous
        self._writer: Writer | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn = await asyncio.to_thread(self._open_writer)
            self._writer = Writer(
                conn, loop, self.path, keep_events=self.keep_events, event_sink=self._event_sink
            )
            self._writer.start()
            await self.open_reader(self.path)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None

    def _open_writer(self) -> sqlite3.Connection:
        conn = connect(self.path, self.synchronous)
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.queue.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        await self.close_reader()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def on_events(self, sink: Callable[[list[Event]], None]) -> None:
        self._event_sink = sink
        if self._writer is not None:
            self._writer.event_sink = sink

    def submit(self, op: Op) -> asyncio.Future[Any]:
        """Queue a write; the future resolves once its transaction has committed.

        The commit happens in the writer thread whatever becomes of the future, so cancelling
        the caller never cancels a commit that has begun.
        """
        if self._writer is None:
            raise StoreError("the store is closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._writer.queue.put((op, fut))
        return fut

    def commit_now(self, op: Op) -> tuple[bool, Any]:
        """Commit ``op`` right here if the writer is idle (see ``Writer.commit_now``)."""
        if self._writer is None:
            raise StoreError("the store is closed")
        return self._writer.commit_now(op)

    async def write(self, op: Op) -> Any:
        """Submit and wait for the commit. No shield is needed: the commit happens in the
        writer thread whether or not anyone still waits for it."""
        return await self.submit(op)

    def stats(self) -> StoreStats:
        w = self._writer
        if w is None:
            return StoreStats()
        # An idle writer notices nothing: look at the file whenever asked (health, metrics).
        return w.counted(w.queue.qsize(), w.moved)
