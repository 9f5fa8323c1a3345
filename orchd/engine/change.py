"""A change to a process's own fields that is not a step's transition (a retry, an abort, a
children step, a fork blocked or joined): a value its actor applies, the only code that assigns
them (a step's transition is ``orchd.engine.interpreter.Move``)."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType


class Change(msgspec.Struct, frozen=True):
    """The fields to set; a field left UNSET stays as it is."""

    error: str | None | UnsetType = UNSET
    next_retry_at: float | None | UnsetType = UNSET
    current_step: str | None | UnsetType = UNSET
    form: bytes | None | UnsetType = UNSET
    children_group: int | None | UnsetType = UNSET
    children_pending: int | None | UnsetType = UNSET
    #: A retried children step starts new children for its aborted elements only.
    replace_aborted: bool | UnsetType = UNSET
    #: Why the process cannot go on in the code loaded now (README "Changing workflows safely").
    broken: str | None | UnsetType = UNSET
    #: The fork it stands at (``orchd.engine.forks.Forks``), or None once it has left it.
    forks: Any = UNSET


#: The fields a Change names, in order.
FIELDS: tuple[str, ...] = Change.__struct_fields__

__all__ = ["FIELDS", "UNSET", "Change"]
