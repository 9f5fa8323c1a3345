"""Builders of the store's write operations (a new process, a process moved on, a fan-out's
parent and a child's last checkpoint), for the tests that drive ``Store.write`` or the writers'
plans directly (tests/test_store_writes.py, tests/test_store_batch.py)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from orchd.model import Event, ProcessStatus
from orchd.store.base import (
    Checkpoint,
    ChildOf,
    NewProcess,
    ProcessRow,
    ProcessWrite,
    StartChildren,
    Store,
)

_encode = msgspec.json.Encoder().encode


def event(pid: str, status: ProcessStatus = ProcessStatus.CREATED) -> Event:
    return Event(id=0, kind="process", process_id=pid, workflow="wf", status=status)


def now() -> float:
    """The time, to the microsecond: PostgreSQL keeps times to the microsecond, so a row read
    back equals the one a write answered only for such a time."""
    return round(time.time(), 6)


def new(**fields: Any) -> NewProcess:
    pid = fields.pop("id", None) or str(uuid.uuid4())
    values: dict[str, Any] = {
        "id": pid,
        "workflow": "wf",
        "target": "SYSTEM",
        "reporter": None,
        "state": {"n": 1},
        "first_step": "one",
        "first_key": "one",
        "created_at": now(),
        "by": "tester",
        "events": [event(pid)],
    }
    values.update(fields)
    return NewProcess(**values)


def moved(row: ProcessRow, status: str = "running", seq: int = 1, **fields: Any) -> ProcessWrite:
    """The process of ``row`` moved on to step ``seq`` with ``status``."""
    values: dict[str, Any] = {
        "status": status,
        "pc": seq,
        "seq": seq,
        "state": _encode({"n": seq}),
        "current_step": f"step {seq}",
        "step_key": f"step {seq}",
        "updated_at": now(),
        "pk": row.pk,
    }
    values.update(fields)
    return ProcessWrite(**values)


async def waiting_parent(store: Store, held: int) -> tuple[ProcessRow, list[ProcessRow]]:
    """A parent awaiting two children of fan-out 7, the last ``held`` of them held."""
    parent = await store.write(new())
    children = [
        new(parent_id=parent.id, child_group=7, child_index=i, held=i >= 2 - held) for i in range(2)
    ]
    cp = Checkpoint(
        process_id=parent.id,
        process=moved(parent, "awaiting_children", 1, children_group=7, children_pending=2),
    )
    rows = await store.write(StartChildren(parent=cp, children=children))
    return parent, rows


def last(child: ProcessRow, parent: ProcessRow) -> Checkpoint:
    return Checkpoint(
        process_id=child.id,
        process=moved(child, "completed", 1),
        child_of=ChildOf(parent_id=parent.id, group=7),
        events=[event(child.id, ProcessStatus.COMPLETED)],
    )
