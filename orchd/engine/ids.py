"""Process ids: a new one for each process, and the one process an abbreviation of an id
names (README "The HTTP API": the CLI and the API take the first characters of an id)."""

from __future__ import annotations

import os
import random
import re
import uuid

from orchd.errors import AmbiguousId, ProcessNotFound
from orchd.store.base import Store
from orchd.store.views import uuid_or_none

#: The shortest abbreviation of a process id that is taken (README "The HTTP API").
MIN_PREFIX = 8
_PREFIX = re.compile(r"[0-9a-f][0-9a-f-]*")
_ids = random.Random(os.urandom(32))


def new_id() -> str:
    # A version-4 UUID from a generator seeded by the OS: ids need to be unique, not
    # secret (callback tokens are), and this avoids a system call per id.
    return str(uuid.UUID(int=_ids.getrandbits(128), version=4))


async def resolve_id(store: Store, pid: str) -> str:
    """The process id ``pid`` names: itself, or the one process whose id starts with it
    (at least MIN_PREFIX characters); ProcessNotFound, or AmbiguousId for two or more."""
    canonical = uuid_or_none(pid)
    if canonical is not None:
        return canonical
    prefix = pid.lower()
    if len(prefix) < MIN_PREFIX or len(prefix) >= 36 or not _PREFIX.fullmatch(prefix):
        raise ProcessNotFound(
            f"process {pid!r} does not exist (not a process id, nor a prefix of at least "
            f"{MIN_PREFIX} of its characters)"
        )
    found = await store.processes_with_prefix(prefix, 3)
    if not found:
        raise ProcessNotFound(f"no process id starts with {pid!r}")
    if len(found) > 1:
        listed = ", ".join(found[:2]) + (", ..." if len(found) > 2 else "")
        raise AmbiguousId(f"{pid!r} is the start of more than one process id: {listed}")
    return found[0]
