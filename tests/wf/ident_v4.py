"""Version 4: the approval renamed, its key kept."""

from __future__ import annotations

from ident_common import apply, approve_renamed, check, prepare, report

from orchd import Target, done, init, workflow


@workflow("Provision, version 4", target=Target.SYSTEM)
def provision():  # type: ignore[no-untyped-def]
    return init >> prepare >> check >> approve_renamed >> apply >> report >> done


@workflow("Two approvals, version 4", target=Target.SYSTEM)
def twice():  # type: ignore[no-untyped-def]
    return init >> approve_renamed >> check >> approve_renamed >> report >> done
